//! The reply budget: bytes of reply bodies vmbridge holds at once, over every connection of
//! both listeners. A body is charged once, when it is made, and its charge is given back when
//! its last holder lets go of it: the collector's cache, a connection still writing it, or a
//! stream whose peer never reads. Bodies shared by many replies (the `/metrics` body, reused
//! while nothing it was made from changed) are therefore charged once, not once per reply.
//!
//! A request whose body does not fit is answered `503` with `Retry-After` (counted in
//! `vmbridge_http_replies_shed_total`); with the write deadline
//! ([`super::limits::Limits::write_timeout`]) bounding how long an unread reply is held, the
//! budget then frees up. A body larger than the whole budget takes all of it: it is served
//! when nothing else is held.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The default budget: 32 MiB, twenty `/metrics` bodies at 100 VMs (about 1.6 MB each).
pub const DEFAULT_BUDGET: usize = 32 << 20;

/// Bodies smaller than this are not charged: a connection holds at most a few of them
/// (`H2_MAX_STREAMS`), so they cannot add up past what the connection cap allows.
pub const UNCHARGED_BELOW: usize = 4096;

/// Seconds a shed request is told to wait (`Retry-After`).
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// The budget and its figures.
#[derive(Debug)]
pub struct ReplyBudget {
    sem: Arc<Semaphore>,
    total: usize,
    shed: AtomicU64,
}

impl Default for ReplyBudget {
    fn default() -> Self {
        ReplyBudget::new(DEFAULT_BUDGET)
    }
}

/// The budget had no room for a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget;

/// A body's storage and its charge.
struct Charged {
    body: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.body
    }
}

impl ReplyBudget {
    /// A budget of `bytes` (at least 1).
    pub fn new(bytes: usize) -> ReplyBudget {
        let total = bytes.clamp(1, u32::MAX as usize).min(Semaphore::MAX_PERMITS);
        ReplyBudget { sem: Arc::new(Semaphore::new(total)), total, shed: AtomicU64::new(0) }
    }

    /// `body`, charged to the budget until its last clone is dropped; [`OverBudget`] (counted
    /// as shed) when the budget has no room for it now.
    pub fn charge(&self, body: Vec<u8>) -> Result<bytes::Bytes, OverBudget> {
        if body.len() < UNCHARGED_BELOW {
            return Ok(bytes::Bytes::from(body));
        }
        // At most the whole budget, so a body larger than it is served when nothing else is.
        let n = u32::try_from(body.len().min(self.total)).unwrap_or(u32::MAX);
        match self.sem.clone().try_acquire_many_owned(n) {
            Ok(permit) => Ok(bytes::Bytes::from_owner(Charged { body, _permit: permit })),
            Err(_) => {
                self.shed.fetch_add(1, Ordering::Relaxed);
                Err(OverBudget)
            }
        }
    }

    /// Bytes charged now.
    pub fn held(&self) -> usize {
        self.total - self.sem.available_permits().min(self.total)
    }

    /// The budget, bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Requests shed so far.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_charged_until_its_last_clone_goes() {
        let b = ReplyBudget::new(100_000);
        let body = b.charge(vec![7u8; 40_000]).expect("fits");
        assert_eq!(b.held(), 40_000);
        let shared = body.clone();
        let slice = body.slice(10..20);
        drop(body);
        drop(shared);
        assert_eq!(b.held(), 40_000, "a slice still holds the storage");
        assert_eq!(&slice[..], &[7u8; 10]);
        drop(slice);
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn a_body_that_does_not_fit_is_shed_and_fits_once_room_is_given_back() {
        let b = ReplyBudget::new(100_000);
        let first = b.charge(vec![0u8; 60_000]).expect("fits");
        assert_eq!(b.charge(vec![0u8; 50_000]), Err(OverBudget));
        assert_eq!(b.shed(), 1);
        // Small bodies are not charged, and are never shed.
        assert_eq!(b.charge(vec![0u8; UNCHARGED_BELOW - 1]).map(|x| x.len()), Ok(UNCHARGED_BELOW - 1));
        assert_eq!(b.held(), 60_000);
        let second = b.charge(vec![0u8; 40_000]).expect("fits exactly");
        assert_eq!(b.held(), 100_000);
        drop(first);
        assert_eq!(b.held(), 40_000);
        drop(second);
        assert_eq!(b.held(), 0);
        assert_eq!(b.shed(), 1);
    }

    #[test]
    fn a_body_larger_than_the_budget_takes_all_of_it_and_only_when_nothing_else_is_held() {
        let b = ReplyBudget::new(50_000);
        let small = b.charge(vec![0u8; 10_000]).expect("fits");
        assert_eq!(b.charge(vec![0u8; 80_000]), Err(OverBudget));
        drop(small);
        let big = b.charge(vec![1u8; 80_000]).expect("alone, it is served");
        assert_eq!(big.len(), 80_000);
        assert_eq!(b.held(), 50_000);
        assert_eq!(b.charge(vec![0u8; 5_000]), Err(OverBudget));
        drop(big);
        assert_eq!(b.held(), 0);
    }
}
