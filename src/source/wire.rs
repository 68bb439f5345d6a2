//! A small timeout-safe JSON-lines connection for QEMU's protocols (QGA now, QMP later).
//!
//! Why not `qapi`'s own async client: a timed-out command leaves it in a state where the next
//! command panics, and it has no reply size bound (qapi 0.15). This connection sends one
//! command at a time, gives each a deadline, caps every line (a hostile or broken peer cannot
//! make vmbridge buffer more than `max_line` bytes), and *poisons itself* after any timeout or
//! framing error so the owner reconnects instead of reading a late reply as the next answer.
//!
//! A line's bytes do not bound its parsed size: `[0,0,0,…]` grows sixteenfold as a
//! `serde_json::Value` (a 1 MiB agent reply became about 17 MB). Every line is therefore
//! parsed with [`parse_bounded`], which counts what it builds and stops at a cap (by default
//! twice the line cap), and a per-poll read budget counts parsed bytes as well as read ones.

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::UnixStream;
use tokio::time::Instant;
use tokio_util::codec::{Framed, LinesCodec, LinesCodecError};

/// Why a wire operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    /// Connecting failed.
    #[error("connect {path}: {message}")]
    Connect {
        /// Socket path.
        path: String,
        /// OS error.
        message: String,
        /// Its kind: `NotFound` (no socket) and `ConnectionRefused` (nobody listening) mean
        /// no peer, `PermissionDenied` a socket vmbridge may not open.
        io: std::io::ErrorKind,
    },
    /// No complete reply before the deadline.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// A line longer than the cap.
    #[error("reply longer than {0} bytes")]
    TooLong(usize),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// I/O failure.
    #[error("i/o: {0}")]
    Io(String),
    /// A line that is not JSON, or JSON of the wrong shape.
    #[error("garbage from peer: {0}")]
    Garbage(String),
    /// An earlier failure made this connection unusable.
    #[error("connection unusable after an earlier failure; reconnecting")]
    Poisoned,
    /// The peer sent more than one poll may read (bytes read plus their parsed size).
    #[error("more than {0} bytes in one poll (read and parsed)")]
    OverBudget(u64),
    /// One message would parse into more than the cap.
    #[error("reply parses into more than {0} bytes")]
    TooBig(usize),
}

/// How many times its line cap one line may take once parsed.
pub const PARSED_PER_LINE_BYTE: usize = 2;

/// Why [`parse_bounded`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not one JSON value.
    Syntax,
    /// It would take more than the limit once parsed.
    TooBig,
}

/// Memory a parsed JSON value takes, counted as it is built.
struct Budget {
    left: std::cell::Cell<usize>,
    exceeded: std::cell::Cell<bool>,
}

impl Budget {
    /// Size of one `Value` (also charged per array element and per object entry).
    const NODE: usize = std::mem::size_of::<Value>();

    fn charge<E: serde::de::Error>(&self, bytes: usize) -> Result<(), E> {
        match self.left.get().checked_sub(bytes) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.exceeded.set(true);
                Err(E::custom("parsed size over the cap"))
            }
        }
    }
}

/// Builds a `Value` while charging each node, string and key to the budget.
#[derive(Clone, Copy)]
struct Bounded<'b>(&'b Budget);

impl<'de> serde::de::DeserializeSeed<'de> for Bounded<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Bounded<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Value, E> {
        self.0.charge(Budget::NODE)?;
        Ok(Value::Bool(b))
    }
    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Value, E> {
        self.0.charge(Budget::NODE)?;
        Ok(Value::Number(n.into()))
    }
    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Value, E> {
        self.0.charge(Budget::NODE)?;
        Ok(Value::Number(n.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Value, E> {
        self.0.charge(Budget::NODE)?;
        Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Value, E> {
        self.0.charge(Budget::NODE.saturating_add(s.len()))?;
        Ok(Value::String(s.to_owned()))
    }
    fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Value, E> {
        self.0.charge(Budget::NODE.saturating_add(s.len()))?;
        Ok(Value::String(s))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.0.charge(Budget::NODE)?;
        Ok(Value::Null)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.0.charge(Budget::NODE)?;
        let mut items = Vec::new();
        // Each element charges its own node; the vector's spare capacity is the slack.
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.0.charge(Budget::NODE)?;
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // The key, and the map's own bookkeeping for the entry.
            self.0.charge(Budget::NODE.saturating_add(key.len()))?;
            let v = map.next_value_seed(self)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Parses one JSON text into a `Value` that takes at most about `limit` bytes, counted as
/// it is built (each node, string and key), so an over-large value is refused before it
/// exists rather than after. Returns the value and the bytes it was charged.
pub fn parse_bounded(text: &str, limit: usize) -> Result<(Value, usize), ParseError> {
    use serde::de::DeserializeSeed;
    let budget = Budget { left: std::cell::Cell::new(limit), exceeded: std::cell::Cell::new(false) };
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Bounded(&budget).deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(v) => Ok((v, limit - budget.left.get())),
        Err(_) if budget.exceeded.get() => Err(ParseError::TooBig),
        Err(_) => Err(ParseError::Syntax),
    }
}

/// A value's JSON text, cut after `max` bytes (for debug views): the value is written
/// into a bounded buffer, never serialised whole.
pub fn preview(v: &Value, max: usize) -> String {
    struct Capped {
        buf: Vec<u8>,
        max: usize,
        total: usize,
    }
    impl std::io::Write for Capped {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.total = self.total.saturating_add(b.len());
            let room = self.max.saturating_sub(self.buf.len());
            self.buf.extend_from_slice(&b[..b.len().min(room)]);
            if self.total > self.max.saturating_mul(2) {
                // Far enough past the cap: stop serialising.
                return Err(std::io::Error::other("preview full"));
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = Capped { buf: Vec::new(), max, total: 0 };
    let complete = serde_json::to_writer(&mut w, v).is_ok() && w.total <= max;
    let text = String::from_utf8_lossy(&w.buf);
    if complete {
        return text.into_owned();
    }
    // A character cut in half at the cap shows as U+FFFD: drop it.
    let text = text.trim_end_matches('\u{FFFD}');
    if w.total > max.saturating_mul(2) {
        format!("{text}… (over {} bytes)", max.saturating_mul(2))
    } else {
        format!("{text}… ({} bytes)", w.total)
    }
}

/// A JSON-lines connection over a Unix socket.
pub struct LineConn {
    framed: Framed<UnixStream, LinesCodec>,
    max_line: usize,
    /// Most bytes one line may take once parsed.
    max_parsed: usize,
    poisoned: bool,
    /// Bytes read since the connection opened.
    read: u64,
    /// Reading past this many bytes (of `read`) fails with [`WireError::OverBudget`].
    read_limit: Option<(u64, u64)>,
}

impl std::fmt::Debug for LineConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineConn").field("max_line", &self.max_line).field("poisoned", &self.poisoned).finish()
    }
}

/// Shortens text for error messages and debug views, on a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

impl LineConn {
    /// Connects within `deadline`.
    pub async fn connect(path: &Path, deadline: Duration, max_line: usize) -> Result<LineConn, WireError> {
        let stream = tokio::time::timeout(deadline, UnixStream::connect(path))
            .await
            .map_err(|_| WireError::Timeout(deadline))?
            .map_err(|e| WireError::Connect {
                path: path.display().to_string(),
                message: e.to_string(),
                io: e.kind(),
            })?;
        Ok(LineConn {
            framed: Framed::new(stream, LinesCodec::new_with_max_length(max_line)),
            max_line,
            max_parsed: max_line.saturating_mul(PARSED_PER_LINE_BYTE),
            read: 0,
            read_limit: None,
            poisoned: false,
        })
    }

    /// True once the connection must be replaced.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Sends one line.
    pub async fn send(&mut self, line: String, until: Instant) -> Result<(), WireError> {
        if self.poisoned {
            return Err(WireError::Poisoned);
        }
        let r = tokio::time::timeout_at(until, self.framed.send(line)).await;
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.poison(io_error(e, self.max_line))),
            Err(_) => Err(self.poison(WireError::Timeout(until.saturating_duration_since(Instant::now())))),
        }
    }

    /// Reads JSON values until `accept` returns `Some`, or the deadline passes; `accept` gets
    /// each value with the size of its line. Values it returns `None` for (events, stale
    /// replies) are skipped.
    pub async fn read_until<T>(
        &mut self,
        until: Instant,
        started: Instant,
        mut accept: impl FnMut(Value, usize) -> Option<T>,
    ) -> Result<T, WireError> {
        if self.poisoned {
            return Err(WireError::Poisoned);
        }
        loop {
            let next = match tokio::time::timeout_at(until, self.framed.next()).await {
                Err(_) => return Err(self.poison(WireError::Timeout(until - started))),
                Ok(None) => return Err(self.poison(WireError::Closed)),
                Ok(Some(Err(e))) => return Err(self.poison(io_error(e, self.max_line))),
                Ok(Some(Ok(line))) => line,
            };
            self.read += next.len() as u64 + 1;
            if let Some((limit, budget)) = self.read_limit {
                if self.read > limit {
                    return Err(self.poison(WireError::OverBudget(budget)));
                }
            }
            // QGA may emit a 0xFF sentinel byte before a reply (after guest-sync-delimited);
            // it arrives as a stray character and is not JSON.
            let trimmed = next.trim_matches(|c: char| c.is_whitespace() || c == '\u{FF}' || c == '\u{FFFD}');
            if trimmed.is_empty() {
                continue;
            }
            // Within a poll's budget, a line may parse into no more than the budget has left.
            let limit = match self.read_limit {
                Some((limit, _)) => self.max_parsed.min(usize::try_from(limit - self.read).unwrap_or(usize::MAX)),
                None => self.max_parsed,
            };
            let value = match parse_bounded(trimmed, limit) {
                Ok((value, parsed)) => {
                    self.read = self.read.saturating_add(parsed as u64);
                    value
                }
                Err(ParseError::TooBig) => {
                    return Err(self.poison(match self.read_limit {
                        Some((_, budget)) if limit < self.max_parsed => WireError::OverBudget(budget),
                        _ => WireError::TooBig(self.max_parsed),
                    }));
                }
                Err(ParseError::Syntax) => return Err(self.poison(WireError::Garbage(truncate(trimmed, 120)))),
            };
            if let Some(t) = accept(value, next.len()) {
                return Ok(t);
            }
        }
    }

    /// From now on, at most `budget` more bytes may be read (until the next call).
    pub fn budget_reads(&mut self, budget: u64) {
        self.read_limit = Some((self.read.saturating_add(budget), budget));
    }

    fn poison(&mut self, e: WireError) -> WireError {
        self.poisoned = true;
        e
    }
}

fn io_error(e: LinesCodecError, max: usize) -> WireError {
    match e {
        LinesCodecError::MaxLineLengthExceeded => WireError::TooLong(max),
        LinesCodecError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            WireError::Garbage("reply is not UTF-8".into())
        }
        LinesCodecError::Io(e) => WireError::Io(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é… (6 bytes)");
    }

    async fn pair(max: usize) -> (LineConn, UnixStream) {
        let dir = std::env::temp_dir().join(format!("vmbridge-wire-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("s");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let (conn, peer) = tokio::join!(LineConn::connect(&path, Duration::from_secs(1), max), listener.accept());
        (conn.expect("connect"), peer.expect("accept").0)
    }

    #[tokio::test]
    async fn oversized_garbage_and_silence_poison_the_connection() {
        let (mut c, mut peer) = pair(64).await;
        peer.write_all(&[b'x'; 200]).await.expect("write");
        peer.write_all(b"\n").await.expect("write");
        let now = Instant::now();
        let r = c.read_until(now + Duration::from_secs(1), now, |v, _| Some(v)).await;
        assert_eq!(r, Err(WireError::TooLong(64)));
        assert!(c.is_poisoned());
        assert_eq!(c.send("{}".into(), now + Duration::from_secs(1)).await, Err(WireError::Poisoned));

        let (mut c, mut peer) = pair(1024).await;
        peer.write_all(b"this is not json\n").await.expect("write");
        let now = Instant::now();
        assert!(matches!(
            c.read_until(now + Duration::from_secs(1), now, |v, _| Some(v)).await,
            Err(WireError::Garbage(_))
        ));

        let (mut c, _peer) = pair(1024).await;
        let now = Instant::now();
        let r = c.read_until(now + Duration::from_millis(50), now, |v, _| Some(v)).await;
        assert!(matches!(r, Err(WireError::Timeout(_))), "{r:?}");
        assert!(c.is_poisoned());
    }

    #[tokio::test]
    async fn skips_values_the_caller_does_not_want() {
        let (mut c, mut peer) = pair(1024).await;
        peer.write_all(b"{\"event\":\"X\"}\n\n{\"return\":7}\n").await.expect("write");
        let now = Instant::now();
        let r = c.read_until(now + Duration::from_secs(1), now, |v, _| v.get("return").cloned()).await;
        assert_eq!(r, Ok(serde_json::json!(7)));
    }

    #[test]
    fn a_megabyte_of_tiny_values_is_refused_while_parsing() {
        // 1 MiB of `0,`: about 17 MB as an unbounded `Value`.
        let tiny = format!("[{}0]", "0,".repeat(1 << 19));
        assert_eq!(parse_bounded(&tiny, 4 << 20), Err(ParseError::TooBig));
        // The charge follows what is built: 32 bytes per node.
        let (v, charged) = parse_bounded(&tiny, 64 << 20).expect("within a large cap");
        assert_eq!(v.as_array().map(Vec::len), Some((1 << 19) + 1));
        assert_eq!(charged, ((1 << 19) + 2) * 32);
        // A real reply parses, and costs a few times its text.
        let fs =
            r#"[{"name": "vda1", "mountpoint": "/", "type": "ext4", "disk": [], "total-bytes": 10, "used-bytes": 5}]"#;
        let (v, charged) = parse_bounded(fs, 4096).expect("parses");
        assert_eq!(v, serde_json::from_str::<Value>(fs).expect("json"));
        assert!(charged < 8 * fs.len(), "{charged} bytes charged for {}", fs.len());
        assert_eq!(parse_bounded("[1] x", 4096), Err(ParseError::Syntax));
        assert_eq!(parse_bounded("{\"a\": tru", 4096), Err(ParseError::Syntax));
    }

    #[test]
    fn previews_are_bounded_and_cut_on_a_character() {
        let v = serde_json::json!({"k": "é".repeat(5000)});
        let p = preview(&v, 100);
        assert!(p.len() < 140 && p.starts_with("{\"k\":\"éé") && p.contains("… (over 200 bytes)"), "{p}");
        assert!(!p.contains('\u{FFFD}'), "{p}");
        assert_eq!(preview(&serde_json::json!([1, 2]), 100), "[1,2]");
        assert_eq!(preview(&serde_json::json!("abcdef"), 5), "\"abcd… (8 bytes)");
    }

    #[tokio::test]
    async fn parsed_size_counts_against_the_line_cap_and_the_poll_budget() {
        // A line within the 64 KiB cap that would parse into more than 2 x 64 KiB.
        let (mut c, mut peer) = pair(64 << 10).await;
        let line = format!("[{}0]\n", "0,".repeat(30_000));
        peer.write_all(line.as_bytes()).await.expect("write");
        let now = Instant::now();
        let r = c.read_until(now + Duration::from_secs(1), now, |v, _| Some(v)).await;
        assert_eq!(r, Err(WireError::TooBig(128 << 10)));
        assert!(c.is_poisoned());

        // Small lines, each well within the cap, but their parsed size exhausts the budget
        // long before their bytes would.
        let (mut c, mut peer) = pair(64 << 10).await;
        c.budget_reads(1 << 20);
        let event = format!("{{\"event\":\"X\",\"data\":[{}0]}}\n", "0,".repeat(1000));
        let writer = tokio::spawn(async move {
            for _ in 0..200 {
                if peer.write_all(event.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        let now = Instant::now();
        let mut events = 0;
        let r = c
            .read_until(now + Duration::from_secs(5), now, |_, _| {
                events += 1;
                None::<()>
            })
            .await;
        assert_eq!(r, Err(WireError::OverBudget(1 << 20)));
        // 200 events are 400 kB of text; about 30 of them (each 2 kB read, 32 kB parsed) fill
        // the budget.
        assert!((25..=40).contains(&events), "{events} events read");
        writer.abort();
    }
}
