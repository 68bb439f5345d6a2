//! Polls one VM's direct QMP monitor: `query-status`, `query-blockstats`, `query-balloon`,
//! `query-migrate`, `query-stats` and the balloon's `guest-stats`, and counts the events
//! that arrived since the last poll. Any transport failure drops the connection (the next
//! poll reconnects) and fails the poll for the breaker; counters are vmbridge's own and
//! survive reconnects.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use qapi::qmp;
use serde_json::Value;

use super::allow::{QueryStats, ReadOnlyQmpCommand};
use super::conn::{QmpConn, QmpError};
use super::{BlockExt, QmpSample};
use crate::clock::now_unix;
use crate::model::label;
use crate::model::{ErrorKind, PollError};
use crate::source::SourceKind;
use crate::source::events::Migration;
use crate::source::wire::{WireError, preview, truncate};
use crate::source::{Poller, SourceSample};

/// Events kept for `/debug`.
const RECENT_EVENTS: usize = 32;

/// `qom-get` lookups of unknown virtio-serial ports per poll: a monitor inventing a new port id
/// in every event must not make vmbridge send a command per event.
const PORT_LOOKUPS_PER_POLL: usize = 4;

/// Capabilities kept from the greeting (QEMU 10 offers two).
const GREETING_CAPABILITIES: usize = 16;

/// `major.minor.micro` from the greeting, when all three are numbers (the greeting is the
/// monitor's, so nothing else of it is kept as it came).
fn qemu_version(greeting: &Value) -> Option<String> {
    let v = &greeting["version"]["qemu"];
    let n = |k: &str| v[k].as_u64();
    Some(format!("{}.{}.{}", n("major")?, n("minor")?, n("micro")?))
}

/// The capabilities the greeting offers: at most [`GREETING_CAPABILITIES`], each cleaned
/// and at most 64 bytes.
fn capabilities(greeting: &Value) -> Vec<String> {
    let offered = greeting["capabilities"].as_array().map(Vec::as_slice).unwrap_or_default();
    offered.iter().filter_map(Value::as_str).take(GREETING_CAPABILITIES).map(|c| label(c, 64)).collect()
}

/// The QMP poller for one VM.
#[derive(Debug)]
pub struct QmpPoller {
    path: PathBuf,
    conn: Option<QmpConn>,
    timeout: Duration,
    max_reply: usize,
    /// Bytes one poll may read (events and replies).
    max_poll_bytes: u64,
    /// Port lookups left in this poll.
    lookups_left: usize,
    sample: QmpSample,
    /// virtio-serial port id → whether it is the guest agent's channel.
    ports: BTreeMap<String, bool>,
    last_completed_key: Option<String>,
}

fn transport(e: WireError) -> PollError {
    let kind = match e {
        WireError::Timeout(_) => ErrorKind::Timeout,
        WireError::TooLong(_) | WireError::TooBig(_) | WireError::Garbage(_) | WireError::OverBudget(_) => {
            ErrorKind::Protocol
        }
        _ => ErrorKind::Connection,
    };
    PollError::new(kind, e.to_string())
}

impl QmpPoller {
    /// A poller for the monitor socket at `path`.
    pub fn new(path: PathBuf, timeout: Duration, max_reply: usize, max_poll_bytes: u64) -> Self {
        QmpPoller {
            path,
            conn: None,
            timeout,
            max_reply,
            max_poll_bytes,
            lookups_left: PORT_LOOKUPS_PER_POLL,
            sample: QmpSample::default(),
            ports: BTreeMap::new(),
            last_completed_key: None,
        }
    }

    /// Runs one command; `Ok(None)` when QEMU refused it.
    async fn run<C: ReadOnlyQmpCommand>(&mut self, cmd: C) -> Result<Option<Value>, PollError> {
        let name = C::NAME;
        let Some(conn) = self.conn.as_mut() else { return Err(PollError::new(ErrorKind::Connection, "not connected")) };
        match conn.execute(cmd, self.timeout).await {
            Ok((v, _)) => {
                self.sample.raw.insert(name.to_owned(), preview(&v, 2048));
                Ok(Some(v))
            }
            Err(QmpError::Command(e)) => {
                self.sample.raw.insert(name.to_owned(), format!("error: {e}"));
                Ok(None)
            }
            Err(QmpError::Transport(e)) => {
                self.conn = None;
                Err(PollError { message: format!("{name}: {}", transport(e.clone()).message), ..transport(e) })
            }
        }
    }

    async fn connect(&mut self) -> Result<(), PollError> {
        let mut conn =
            QmpConn::connect(&self.path, self.timeout, self.max_reply, self.max_poll_bytes).await.map_err(transport)?;
        let greeting = std::mem::take(&mut conn.greeting);
        self.sample.qemu_version = qemu_version(&greeting);
        self.sample.capabilities = capabilities(&greeting);
        self.conn = Some(conn);
        Ok(())
    }

    /// Whether a virtio-serial port is the guest agent's (asked once per port id).
    async fn is_agent_port(&mut self, id: &str) -> Result<bool, PollError> {
        if let Some(known) = self.ports.get(id) {
            return Ok(*known);
        }
        if self.lookups_left == 0 {
            // Unknown and out of lookups for this poll: not counted as the agent's.
            return Ok(false);
        }
        self.lookups_left -= 1;
        let cmd = qmp::qom_get { path: format!("/machine/peripheral/{id}"), property: "name".into() };
        let is_agent = self.run(cmd).await?.is_some_and(|v| v.as_str() == Some("org.qemu.guest_agent.0"));
        if self.ports.len() < 64 {
            self.ports.insert(id.to_owned(), is_agent);
        }
        Ok(is_agent)
    }

    async fn count_events(&mut self) -> Result<(), PollError> {
        let events = self.conn.as_mut().map(QmpConn::take_events).unwrap_or_default();
        for ev in events {
            let port = ev["data"]["id"].as_str().filter(|_| ev["event"] == "VSERPORT_CHANGE").map(str::to_owned);
            let is_agent = match port {
                Some(id) => self.is_agent_port(&id).await?,
                None => false,
            };
            self.sample.events.count(&ev, |_| is_agent);
            if self.sample.recent_events.len() == RECENT_EVENTS {
                self.sample.recent_events.pop_front();
            }
            // What `/debug` keeps of it: its name and time, and its data as capped text.
            let mut shown = serde_json::Map::new();
            for (key, max) in [("event", 128), ("timestamp", 128), ("data", 512)] {
                let v = match &ev[key] {
                    Value::Null => continue,
                    Value::String(s) => Value::String(truncate(s, max)),
                    Value::Object(t) if key == "timestamp" => serde_json::json!({
                        "seconds": t.get("seconds").and_then(Value::as_i64),
                        "microseconds": t.get("microseconds").and_then(Value::as_i64),
                    }),
                    other => Value::String(preview(other, max)),
                };
                shown.insert(key.to_owned(), v);
            }
            self.sample.recent_events.push_back(Value::Object(shown));
        }
        Ok(())
    }
}

impl Poller for QmpPoller {
    fn kind(&self) -> SourceKind {
        SourceKind::Qmp
    }

    fn stuck_calls(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        // Socket I/O is cancellable: nothing is ever left running.
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0))
    }

    fn deadline(&self) -> Duration {
        // Connect and greeting, seven commands, the event drain: each within `timeout`.
        self.timeout * 10
    }

    async fn poll(&mut self) -> Result<SourceSample, PollError> {
        if self.conn.as_ref().is_none_or(QmpConn::is_poisoned) {
            self.conn = None;
            self.connect().await?;
        }
        self.lookups_left = PORT_LOOKUPS_PER_POLL;
        if let Some(c) = self.conn.as_mut() {
            c.budget_reads(self.max_poll_bytes);
        }
        if let Some(st) = self.run(qmp::query_status {}).await? {
            self.sample.status = st.get("status").and_then(Value::as_str).map(|s| crate::model::label(s, 64));
        }
        if let Some(Value::Array(list)) = self.run(qmp::query_blockstats { query_nodes: None }).await? {
            self.sample.blocks = list.iter().take(64).filter_map(BlockExt::from_blockstats).collect();
        }
        if let Some(b) = self.run(qmp::query_balloon {}).await? {
            self.sample.balloon_actual_bytes = b.get("actual").and_then(Value::as_u64);
        }
        // libvirt names the balloon device `balloon0`; without one QEMU answers an error.
        let stats = qmp::qom_get { path: "/machine/peripheral/balloon0".into(), property: "guest-stats".into() };
        if let Some(v) = self.run(stats).await? {
            self.sample.balloon_guest_stats = v["stats"]
                .as_object()
                .map(|m| m.iter().take(32).filter_map(|(k, v)| v.as_u64().map(|n| (k.clone(), n))).collect())
                .unwrap_or_default();
        }
        if let Some(m) = self.run(qmp::query_migrate {}).await? {
            let mig = Migration::from_query_migrate(&m);
            if let Some(done) = mig.as_ref().filter(|m| m.status == "completed") {
                // QEMU keeps reporting the last migration: note each completion once, when
                // first seen (within one poll interval of it, or at start for an older one).
                let key = format!("{:?}/{:?}", done.elapsed_seconds, done.memory_processed_bytes);
                if self.last_completed_key.as_ref() != Some(&key) {
                    self.sample.migration_last_completed_at = Some(now_unix());
                    self.last_completed_key = Some(key);
                }
            }
            self.sample.migration = mig;
        }
        self.sample.stats.clear();
        if let Some(Value::Array(results)) = self.run(QueryStats { target: "vm" }).await? {
            for r in results.iter().take(16) {
                let provider = r["provider"].as_str().unwrap_or("unknown");
                // Label values from the monitor are capped like the guest's (128 bytes).
                for s in r["stats"].as_array().into_iter().flatten().take(128) {
                    if let (Some(name), Some(v)) = (s["name"].as_str(), s["value"].as_f64()) {
                        let stat = format!("{}/{}", crate::model::label(provider, 32), crate::model::label(name, 95));
                        self.sample.stats.insert(stat, v);
                    }
                }
            }
        }
        self.count_events().await?;
        Ok(SourceSample::Qmp(self.sample.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn greeting_strings_are_capped_and_a_version_is_numbers_only() {
        let long = "c\n".repeat(10_000);
        let greeting = json!({
            "version": {"qemu": {"major": 10, "minor": 1, "micro": 2}},
            "capabilities": vec![long.clone(); 1000],
        });
        assert_eq!(qemu_version(&greeting).as_deref(), Some("10.1.2"));
        let caps = capabilities(&greeting);
        assert_eq!(caps.len(), GREETING_CAPABILITIES);
        assert!(caps.iter().all(|c| c.len() <= 64 && !c.contains('\n')), "{caps:?}");
        // Before: `format!` of the raw values, so a string of any length became the version.
        let hostile = json!({"version": {"qemu": {"major": long, "minor": 0, "micro": 0}}});
        assert_eq!(qemu_version(&hostile), None);
        assert!(capabilities(&json!({"capabilities": "not a list"})).is_empty());
    }
}
