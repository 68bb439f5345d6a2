//! A small timeout-safe JSON-lines connection for QEMU's protocols (QGA now, QMP later).
//!
//! Why not `qapi`'s own async client: a timed-out command leaves it in a state where the next
//! command panics, and it has no reply size bound (qapi 0.15). This connection sends one
//! command at a time, gives each a deadline, caps every line (a hostile or broken peer cannot
//! make vmbridge buffer more than `max_line` bytes), and *poisons itself* after any timeout or
//! framing error so the owner reconnects instead of reading a late reply as the next answer.

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
    /// The peer sent more than one poll may read.
    #[error("more than {0} bytes in one poll")]
    OverBudget(u64),
}

/// A JSON-lines connection over a Unix socket.
pub struct LineConn {
    framed: Framed<UnixStream, LinesCodec>,
    max_line: usize,
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

    /// Reads JSON values until `accept` returns `Some`, or the deadline passes. Values it
    /// returns `None` for (events, stale replies) are skipped.
    pub async fn read_until<T>(
        &mut self,
        until: Instant,
        started: Instant,
        mut accept: impl FnMut(Value) -> Option<T>,
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
            let value: Value =
                serde_json::from_str(trimmed).map_err(|_| self.poison(WireError::Garbage(truncate(trimmed, 120))))?;
            if let Some(t) = accept(value) {
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
        let r = c.read_until(now + Duration::from_secs(1), now, Some).await;
        assert_eq!(r, Err(WireError::TooLong(64)));
        assert!(c.is_poisoned());
        assert_eq!(c.send("{}".into(), now + Duration::from_secs(1)).await, Err(WireError::Poisoned));

        let (mut c, mut peer) = pair(1024).await;
        peer.write_all(b"this is not json\n").await.expect("write");
        let now = Instant::now();
        assert!(matches!(c.read_until(now + Duration::from_secs(1), now, Some).await, Err(WireError::Garbage(_))));

        let (mut c, _peer) = pair(1024).await;
        let now = Instant::now();
        let r = c.read_until(now + Duration::from_millis(50), now, Some).await;
        assert!(matches!(r, Err(WireError::Timeout(_))), "{r:?}");
        assert!(c.is_poisoned());
    }

    #[tokio::test]
    async fn skips_values_the_caller_does_not_want() {
        let (mut c, mut peer) = pair(1024).await;
        peer.write_all(b"{\"event\":\"X\"}\n\n{\"return\":7}\n").await.expect("write");
        let now = Instant::now();
        let r = c.read_until(now + Duration::from_secs(1), now, |v| v.get("return").cloned()).await;
        assert_eq!(r, Ok(serde_json::json!(7)));
    }
}
