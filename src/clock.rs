//! Wall-clock helpers. Scheduling uses tokio's clock (so paused-time tests drive it); what is
//! shown to people and exported as timestamps is wall-clock time in Unix seconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, as Prometheus timestamps are expressed.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Now, in seconds since the Unix epoch.
pub fn now_unix() -> f64 {
    unix_seconds(SystemTime::now())
}
