//! The binary's command line, without a lab: catalogue listing, version, config errors.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (vmbridge, virsh, lab.sh)

use std::process::Command;

fn vmbridge(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmbridge")).args(args).output().expect("run vmbridge");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn list_metrics_prints_the_catalogue_without_connecting() {
    // An unreachable URI: listing must not try it.
    let (code, out, _) = vmbridge(&["--list-metrics", "--libvirt-uri", "qemu+tcp://192.0.2.1/system"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("kubevirt_vmi_cpu_usage_seconds_total ")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("vmbridge_breaker_transitions_total ")), "{out}");
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/METRICS.md")).expect("docs");
    for line in out.lines() {
        let name = line.split_whitespace().next().expect("name");
        assert!(docs.contains(&format!("`{name}`")), "{name} missing from docs/METRICS.md");
    }
}

#[test]
fn version_is_printed() {
    let (code, out, _) = vmbridge(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with(concat!("vmbridge ", env!("CARGO_PKG_VERSION"))), "{out}");
}

#[test]
fn a_bad_config_names_every_field_and_exits_2() {
    let dir = std::env::temp_dir().join(format!("vmbridge-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[poll]\ninterval = \"soon\"\n[breaker]\nfailure_threshold = 0\n").expect("write");
    let (code, _, err) = vmbridge(&["--config", bad.to_str().expect("utf-8")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("poll.interval: \"soon\" is not a duration"), "{err}");
    assert!(err.contains("breaker.failure_threshold: must be at least 1"), "{err}");

    let typo = dir.join("typo.toml");
    std::fs::write(&typo, "[libvirt]\nuri = \"qemu:///system\"\n").expect("write");
    let (code, _, err) = vmbridge(&["--config", typo.to_str().expect("utf-8")]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown field `uri`"), "{err}");

    let (code, _, err) = vmbridge(&["--config", "/nonexistent/vmbridge.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read config file /nonexistent/vmbridge.toml"), "{err}");
}

#[test]
fn flags_override_the_file_and_are_validated_too() {
    let (code, _, err) = vmbridge(&["--poll-interval", "0s", "--listen", "not-an-address"]);
    assert_eq!(code, 2);
    assert!(err.contains("poll.interval: must be greater than zero"), "{err}");
    assert!(err.contains("listen: \"not-an-address\""), "{err}");
}

/// The flags an option line of clap's `--help` names: `-h`, `--help`, `--config <FILE>` → the
/// `-h`/`--…` words at the start of lines indented like option lines.
fn help_flags(help: &str) -> Vec<String> {
    let mut flags = vec![];
    for line in help.lines() {
        let t = line.trim_start();
        if !t.starts_with('-') || line.len() == t.len() {
            continue;
        }
        // "-h, --help  Print help" / "--listen <ADDR>  Listen address …": the flags come before
        // the first run of two spaces.
        let head = t.split("  ").next().unwrap_or_default();
        for word in head.split([',', ' ']) {
            if word.starts_with('-') && word.len() > 1 && !word.contains('<') {
                flags.push(word.to_owned());
            }
        }
    }
    flags
}

/// A roff page as text: font escapes dropped, `\-` as `-`.
fn roff_text(roff: &str) -> String {
    let mut out = String::new();
    let mut chars = roff.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('f') => _ = chars.next(), // \fB, \fI, \fR, \fP
            Some('-') => out.push('-'),
            Some('&') => {} // zero-width
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// `flag` as a whole word of `text` (not the prefix of a longer flag).
fn mentions(text: &str, flag: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices(flag).any(|(i, _)| {
        !text[..i].chars().next_back().is_some_and(word) && !text[i + flag.len()..].chars().next().is_some_and(word)
    })
}

/// Every flag the binary's `--help` shows, and every subcommand's, is in the man page the .deb
/// ships (`debian/vmbridge.1`, `debian/vmbridge-<subcommand>.1`), and every subcommand is
/// listed in `vmbridge.1`. The pages are rendered from the same clap definition
/// (`src/manpage.rs`, kept current by `cargo test --lib generated`); this holds the checked-in
/// pages against what users actually get.
#[test]
fn every_flag_in_help_is_in_the_man_page() {
    let page = |name: &str| {
        let path = format!("{}/debian/{name}.1", env!("CARGO_MANIFEST_DIR"));
        roff_text(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
    };
    let (code, help, err) = vmbridge(&["--help"]);
    assert_eq!(code, 0, "{err}");
    let main = page("vmbridge");
    // The subcommands: the lines under "Commands:", without clap's `help`.
    let subcommands: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|s| s != "help")
        .collect();
    assert_eq!(subcommands, ["check"], "{help}");
    let mut checked = vec![("vmbridge".to_owned(), help_flags(&help), main.clone())];
    for sub in &subcommands {
        assert!(mentions(&main, &format!("vmbridge-{sub}(1)")), "vmbridge.1 does not list {sub}");
        let (code, help, err) = vmbridge(&[sub.as_str(), "--help"]);
        assert_eq!(code, 0, "{err}");
        checked.push((format!("vmbridge-{sub}"), help_flags(&help), page(&format!("vmbridge-{sub}"))));
    }
    let mut missing = vec![];
    for (name, flags, text) in &checked {
        assert!(flags.len() > 2 && flags.iter().any(|f| f == "--help"), "parsed {flags:?} from {name} --help");
        missing.extend(flags.iter().filter(|f| !mentions(text, f)).map(|f| format!("{name}.1: {f}")));
    }
    assert!(
        missing.is_empty(),
        "flags in --help but not in the man page (run `VMBRIDGE_UPDATE_GENERATED=1 cargo test --lib generated`):\n  {}",
        missing.join("\n  ")
    );
    // The main page's flags: 25 when this test was written; fewer means the parser broke.
    assert!(checked[0].1.len() >= 25, "{:?}", checked[0].1);
}

#[test]
fn help_flag_parser() {
    let help = "Usage: vmbridge [OPTIONS]\n\nOptions:\n      --listen <ADDR>\n          Listen address\n  -h, --help\n          Print help (see a summary with '-h')\n  -V, --version  Print version\n";
    assert_eq!(help_flags(help), ["--listen", "-h", "--help", "-V", "--version"]);
    let text = roff_text(r"\fB\-\-listen\fR=\fIADDR\fR and \fB\-h\fR, \fB\-\-help\fR");
    assert_eq!(text, "--listen=ADDR and -h, --help");
    assert!(mentions(&text, "--listen") && mentions(&text, "-h") && !mentions(&text, "--list"));
}
