//! Blocking libvirt calls on a bounded pool, at most one in flight per slot.
//!
//! Every libvirt call is a blocking RPC, and `tokio::time::timeout` around `spawn_blocking`
//! does not cancel it: the thread stays blocked until libvirt answers (30 s or never for a
//! SIGSTOPped QEMU). So each (VM, source) owns one [`BlockingSlot`]: a call that outlives its
//! deadline is *abandoned* — counted as stuck, its concurrency permit released — but remembered,
//! and no second call is started until it returns. A stuck VM therefore holds at most one
//! thread, and never a permit other VMs need.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const RUNNING: u8 = 0;
const ABANDONED: u8 = 1;
const DONE: u8 = 2;

/// Why a slot call produced no value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SlotError {
    /// The call is still running after the deadline (it stays in the slot).
    #[error("call still running after {running_for:?}")]
    Timeout {
        /// How long the call has been running.
        running_for: Duration,
    },
    /// No concurrency permit became free before the deadline.
    #[error("blocking pool saturated")]
    Saturated,
    /// The blocking closure panicked.
    #[error("blocking call panicked")]
    Panicked,
}

struct InFlight<T> {
    handle: JoinHandle<T>,
    started: Instant,
    state: Arc<AtomicU8>,
    permit: Option<OwnedSemaphorePermit>,
}

/// One slot for blocking calls: at most one in flight.
pub struct BlockingSlot<T> {
    in_flight: Option<InFlight<T>>,
    limiter: Arc<Semaphore>,
    stuck: Arc<AtomicU64>,
}

impl<T: Send + 'static> BlockingSlot<T> {
    /// A slot drawing permits from `limiter` (the pool-wide bound on running calls).
    pub fn new(limiter: Arc<Semaphore>) -> Self {
        BlockingSlot { in_flight: None, limiter, stuck: Arc::new(AtomicU64::new(0)) }
    }

    /// Calls abandoned at their deadline that have not returned yet (0 or 1).
    pub fn stuck_counter(&self) -> Arc<AtomicU64> {
        self.stuck.clone()
    }

    /// Runs `f` on the blocking pool and waits for it at most `timeout`.
    ///
    /// If an earlier call is still in flight, `f` is not started: this waits for the earlier
    /// call instead and returns its result (the data is as fresh as the moment it returns).
    /// An earlier call that already finished while nobody waited is discarded when it
    /// started longer than `timeout` ago, since its data may be old.
    pub async fn run<F>(&mut self, timeout: Duration, f: F) -> Result<T, SlotError>
    where
        F: FnOnce() -> T + Send + 'static,
    {
        if let Some(prev) = &self.in_flight {
            if prev.handle.is_finished() && prev.started.elapsed() > timeout {
                self.in_flight = None;
            }
        }
        if self.in_flight.is_none() {
            // Waiting for a permit and running the call each get the full timeout, so a busy
            // pool shows as `Saturated`, never as a call that "timed out" before it started.
            let permit = tokio::time::timeout(timeout, self.limiter.clone().acquire_owned())
                .await
                .map_err(|_| SlotError::Saturated)?
                .map_err(|_| SlotError::Saturated)?;
            let state = Arc::new(AtomicU8::new(RUNNING));
            let (st, stuck) = (state.clone(), self.stuck.clone());
            let handle = tokio::task::spawn_blocking(move || {
                let out = f();
                if st.swap(DONE, Ordering::AcqRel) == ABANDONED {
                    stuck.fetch_sub(1, Ordering::AcqRel);
                }
                out
            });
            self.in_flight = Some(InFlight { handle, started: Instant::now(), state, permit: Some(permit) });
        }
        let deadline = Instant::now() + timeout;
        // The option was filled just above when it was empty.
        let Some(call) = self.in_flight.as_mut() else {
            return Err(SlotError::Panicked);
        };
        match tokio::time::timeout_at(deadline, &mut call.handle).await {
            Ok(joined) => {
                self.in_flight = None;
                joined.map_err(|_| SlotError::Panicked)
            }
            Err(_) => {
                if call.permit.take().is_some() {
                    // First deadline missed: count it stuck unless it finished meanwhile.
                    self.stuck.fetch_add(1, Ordering::AcqRel);
                    if call.state.compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire).is_err() {
                        self.stuck.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                Err(SlotError::Timeout { running_for: call.started.elapsed() })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_call_is_counted_reused_and_never_duplicated() {
        let limiter = Arc::new(Semaphore::new(1));
        let mut slot: BlockingSlot<u32> = BlockingSlot::new(limiter.clone());
        let (release, gate) = mpsc::channel::<()>();
        let started = Arc::new(AtomicU64::new(0));
        let s = started.clone();
        let r = slot
            .run(Duration::from_millis(50), move || {
                s.fetch_add(1, Ordering::SeqCst);
                gate.recv().ok();
                7
            })
            .await;
        assert!(matches!(r, Err(SlotError::Timeout { .. })), "{r:?}");
        assert_eq!(slot.stuck_counter().load(Ordering::SeqCst), 1);
        assert_eq!(limiter.available_permits(), 1, "an abandoned call gives its permit back");
        // A second poll must not start a second call while the first is stuck.
        let s = started.clone();
        let r = slot
            .run(Duration::from_millis(50), move || {
                s.fetch_add(1, Ordering::SeqCst);
                8
            })
            .await;
        assert!(matches!(r, Err(SlotError::Timeout { .. })));
        assert_eq!(started.load(Ordering::SeqCst), 1);
        // Once it returns, the waiting poll gets its value and the stuck count drops.
        release.send(()).ok();
        let r = slot.run(Duration::from_secs(5), || 9).await;
        assert_eq!(r, Ok(7));
        assert_eq!(slot.stuck_counter().load(Ordering::SeqCst), 0);
        assert_eq!(slot.run(Duration::from_secs(5), || 9).await, Ok(9));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn saturated_pool_fails_fast_instead_of_queueing_forever() {
        let limiter = Arc::new(Semaphore::new(0));
        let mut slot: BlockingSlot<u32> = BlockingSlot::new(limiter);
        assert_eq!(slot.run(Duration::from_millis(20), || 1).await, Err(SlotError::Saturated));
    }
}
