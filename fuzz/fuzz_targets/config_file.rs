//! An operator's TOML config file through `FileConfig::parse` and `validate`: never a panic,
//! and what validation accepts is usable (bounds hold, every duration can be added to an
//! `Instant` as the supervisor, pollers and breaker do).
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use vmbridge::config::FileConfig;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(cfg) = FileConfig::parse(&text) else { return };
    let Ok(s) = cfg.validate("node") else { return };
    assert!(!s.node_name.is_empty());
    assert!(s.max_concurrent_calls >= 1);
    assert!(s.poll.breaker.failure_threshold >= 1);
    assert!(s.poll.hard_timeout >= s.poll.timeout);
    assert!(s.poll.breaker.backoff_max >= s.poll.breaker.backoff_min);
    assert!(s.staleness >= s.poll.interval);
    let lim = &s.sources.qga.poll.limits;
    assert!(lim.label_bytes >= 16 && lim.filesystems >= 1 && lim.cpus >= 1);

    let mut durations: Vec<(String, Duration)> = vec![
        ("poll.interval".into(), s.poll.interval),
        ("poll.timeout".into(), s.poll.timeout),
        ("poll.hard_timeout".into(), s.poll.hard_timeout),
        ("poll.retry_delay".into(), s.poll.retry_delay),
        ("breaker.backoff_min".into(), s.poll.breaker.backoff_min),
        ("breaker.backoff_max".into(), s.poll.breaker.backoff_max),
        ("breaker.staleness".into(), s.staleness),
        ("qga.timeout".into(), s.sources.qga.poll.timeout),
        ("qmp.timeout".into(), s.sources.qmp.timeout),
    ];
    durations.extend(s.sources.qga.poll.periods.iter().map(|(k, d)| (format!("qga.periods.{k}"), *d)));
    let now = Instant::now();
    for (field, d) in durations {
        assert!(!d.is_zero(), "{field} validated as zero");
        // src/supervisor.rs `started + settings.interval`, src/source/libvirt/blocking.rs
        // `Instant::now() + timeout`, src/source/qga/poller.rs `Instant::now() + period`, ... panic
        // on overflow.
        assert!(now.checked_add(d).is_some(), "validated {field} = {d:?} overflows Instant arithmetic");
    }
});
