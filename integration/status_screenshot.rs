//! The status page, looked at (issue 15, point 4): 20 lab VMs, none with a guest agent, one
//! SIGSTOPped. The HTML must name the stopped VM among those needing attention, with its failed
//! source and the reason, show the agentless VMs as "no agent" (not needing attention), show data
//! ages and link every VM's JSON. Headless Chromium then takes a 1280×800 screenshot; the test
//! decodes it and checks that the attention box and the failing cell are inside that first screen.
//! `VMBRIDGE_UPDATE_SCREENSHOT=1` copies it to `docs/status-page.png`.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (vmbridge, chromium, lab.sh)

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const VMS: usize = 20;
const STOPPED: &str = "its-13";
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 800;

fn chromium() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("chromium is not installed: run integration/test.sh (it installs Debian's chromium)")
}

fn screenshot(url: &str, png: &std::path::Path) {
    let profile = std::env::temp_dir().join(format!("vmbridge-chromium-shot-{}", std::process::id()));
    let _ = std::fs::remove_file(png);
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--force-device-scale-factor=1",
        ])
        .arg(format!("--window-size={WIDTH},{HEIGHT}"))
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .output()
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A decoded PNG (image-rs' `png`, any colour type and depth, as 8-bit): width, height,
/// pixels as RGB.
fn decode_png(png: &[u8]) -> (u32, u32, Vec<[u8; 3]>) {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("PNG size")];
    let info = reader.next_frame(&mut buf).expect("PNG image");
    let bpp = info.color_type.samples();
    let pixels = buf[..info.buffer_size()]
        .chunks(bpp)
        .map(|p| match p {
            [v] | [v, _] => [*v, *v, *v],
            [r, g, b, ..] => [*r, *g, *b],
            _ => unreachable!("{bpp} samples per pixel"),
        })
        .collect();
    (info.width, info.height, pixels)
}

/// The `<li>` of the attention box for `vm`, if any.
fn attention_item<'a>(page: &'a str, vm: &str) -> Option<&'a str> {
    let attention = page.split("<div id=\"attention\"").nth(1)?.split("</div>").next()?;
    attention.split("<li").find(|li| li.contains(&format!("data-vm=\"default/{vm}\"")))
}

/// The VM table's row of `vm`.
fn row<'a>(page: &'a str, vm: &str) -> &'a str {
    let table = page.split("<table id=\"vms\"").nth(1).expect("VM table");
    table
        .split("<tr")
        .find(|r| r.contains(&format!("data-vm=\"default/{vm}\"")))
        .unwrap_or_else(|| panic!("no row for {vm}:\n{page}"))
}

/// The `<td>` of `source` in a row: (data-health, text).
fn cell(row: &str, source: &str) -> (String, String) {
    let td = row.split("<td").find(|t| t.contains(&format!("data-source=\"{source}\""))).expect("source cell");
    let health = td.split("data-health=\"").nth(1).and_then(|s| s.split('"').next()).expect("health").to_owned();
    let text = td.split_once('>').map(|(_, t)| t.split("</td>").next().unwrap_or("")).expect("text").to_owned();
    (health, text)
}

/// "12 s ago" somewhere in `text`.
fn has_age(text: &str) -> bool {
    text.split(" s ago").next().is_some_and(|before| {
        text.contains(" s ago") && before.rsplit(' ').next().is_some_and(|n| !n.is_empty() && n.parse::<u64>().is_ok())
    })
}

#[test]
fn status_page_at_a_glance_with_20_vms_one_stopped() {
    let _serial = serial();
    let started = Instant::now();
    let names: Vec<String> = (1..=VMS).map(|i| format!("its-{i:02}")).collect();
    // Created five at a time (the lab serialises what must be; QEMU start-up overlaps).
    let domains = domains(&names, 5);
    let created = started.elapsed();
    let stopped = domains.iter().find(|d| d.name == STOPPED).expect("stopped domain");
    let cfg = std::env::temp_dir().join(format!("vmbridge-it-shot-{}.toml", std::process::id()));
    std::fs::write(&cfg, "[poll]\ninterval = \"1s\"\ntimeout = \"2s\"\nretry_delay = \"100ms\"\n").expect("cfg");
    let bridge = Bridge::start(&["--config", cfg.to_str().unwrap(), "--log", "info,vmbridge::supervisor=debug"]);
    bridge.wait_for(Duration::from_secs(60), "every VM's libvirt up and its agent unavailable", |e| {
        names.iter().all(|n| {
            e.value("vmbridge_source_up", &[("name", n), ("source", "libvirt")]) == Some(1.0)
                && e.value(
                    "vmbridge_source_errors_total",
                    &[("name", n), ("source", "qga"), ("kind", "agent_unavailable")],
                )
                .is_some_and(|v| v >= 1.0)
        })
    });
    stopped.stop();
    bridge.wait_for(Duration::from_secs(45), "the stopped VM's libvirt breaker open", |e| {
        e.value("vmbridge_breaker_state", &[("name", STOPPED), ("source", "libvirt"), ("state", "open")]) == Some(1.0)
    });
    let page = http_get(bridge.debug_addr, "/", None);
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"), "{}", page.content_type);
    let page = page.body;

    // (1) Which VMs need attention: the stopped one, first in the table, marked.
    let item = attention_item(&page, STOPPED).unwrap_or_else(|| panic!("{STOPPED} not in the attention box:\n{page}"));
    let index: serde_json::Value = serde_json::from_str(&bridge.get("/debug/vms", None).body).expect("index JSON");
    let libvirt = index["vms"]
        .as_array()
        .expect("vms")
        .iter()
        .find(|v| v["name"] == STOPPED)
        .map(|v| v["sources"]["libvirt"].clone())
        .expect("stopped VM in the index");
    let kind = libvirt["last_error_kind"].as_str().expect("a failed poll has a kind");
    // (2) Which source failed and why: the source, its breaker, the error kind and message.
    assert!(item.contains("<b>libvirt</b> open"), "failed source and breaker: {item}");
    assert!(item.contains(&format!("{kind}: ")), "error kind {kind}: {item}");
    let message = libvirt["last_error"].as_str().expect("message");
    let plain: String = message.chars().take_while(|c| c.is_alphanumeric() || *c == ' ').collect();
    assert!(!plain.trim().is_empty() && item.contains(plain.trim()), "error message {message:?}: {item}");
    // (3) Data age.
    assert!(has_age(item), "the attention item says how old the data is: {item}");
    // (4) Links to the JSON.
    assert!(item.contains(&format!("href=\"/debug/vms/default/{STOPPED}\"")), "{item}");
    assert!(page.contains("href=\"/debug/vms\""), "link to the index");
    let table = page.split("<table id=\"vms\"").nth(1).expect("VM table");
    // Before every healthy one (other lab domains on this host may be listed too).
    let at = |vm: &str| table.find(&format!("data-vm=\"default/{vm}\"")).expect("row");
    assert!(names.iter().filter(|n| *n != STOPPED).all(|n| at(STOPPED) < at(n)), "the VM needing attention is first");
    assert!(row(&page, STOPPED).contains("class=\"attn\""), "its row is marked");
    assert_eq!(cell(row(&page, STOPPED), "libvirt").0, "failing");

    // Agentless VMs: a state, not a failure.
    for n in names.iter().filter(|n| *n != STOPPED) {
        if let Some(li) = attention_item(&page, n) {
            let debug = bridge.get(&format!("/debug/vms/default/{n}"), None).body;
            panic!("{n} is listed as needing attention ({li}); its debug view:\n{debug}");
        }
        let r = row(&page, n);
        assert_eq!(cell(r, "qga"), ("noagent".to_owned(), "no agent".to_owned()), "{n}: {r}");
        let (health, text) = cell(r, "libvirt");
        assert_eq!(health, "ok", "{n}: {r}");
        assert!(has_age(&text), "{n}'s libvirt cell shows its data age: {text}");
        assert!(r.contains(&format!("href=\"/debug/vms/default/{n}\"")), "{n}'s JSON link: {r}");
    }
    // The page's own links work.
    for path in [format!("/debug/vms/default/{STOPPED}"), "/debug/vms".to_owned()] {
        let r = bridge.get(&path, None);
        assert_eq!(r.status, 200, "{path}");
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"));
    }

    // The screenshot: 1280×800, not blank, the attention box and the failing cell on screen.
    let shot = root().join("target/status-screenshot.png");
    let t = Instant::now();
    screenshot(&format!("http://{}/", bridge.debug_addr), &shot);
    let shot_took = t.elapsed();
    let png = std::fs::read(&shot).expect("screenshot written");
    let (w, h, pixels) = decode_png(&png);
    assert_eq!((w, h), (WIDTH, HEIGHT), "screenshot size");
    let distinct: std::collections::BTreeSet<[u8; 3]> = pixels.iter().copied().collect();
    let non_white = pixels.iter().filter(|p| **p != [255, 255, 255]).count();
    assert!(distinct.len() > 20 && non_white * 50 > pixels.len(), "blank screenshot: {} colours", distinct.len());
    let count = |rgb: [u8; 3]| pixels.iter().filter(|p| **p == rgb).count();
    assert!(count([0xfd, 0xec, 0xec]) > 5_000, "the attention box (#fdecec) is not on the first screen");
    assert!(count([0xf7, 0xc6, 0xc6]) > 500, "the failing cell (#f7c6c6) is not on the first screen");
    assert!(count([0xe6, 0xe6, 0xe6]) > 5_000, "the \"no agent\" cells (#e6e6e6) are not on the first screen");
    if std::env::var("VMBRIDGE_UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        std::fs::copy(&shot, root().join("docs/status-page.png")).expect("copy to docs/");
    }
    eprintln!(
        "screenshot: {} ({} bytes, {} colours); {VMS} domains created in {created:?}, chromium took {shot_took:?}, \
         whole test {:?}",
        shot.display(),
        png.len(),
        distinct.len(),
        started.elapsed()
    );
    let _ = std::fs::remove_file(&cfg);
}
