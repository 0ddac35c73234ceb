//! The budget of request body bytes in flight, one semaphore permit a
//! byte: a process-wide pool, a share per connection, and, for large
//! bodies, a sub-pool of half the process-wide one.
//!
//! A request reserves what it declares before reading, and more as
//! undeclared bytes arrive; a reservation that cannot be had fails at once
//! (503), so no body ever waits in memory for budget. Bodies above
//! [`LARGE_BODY`] also draw on the large pool: a few clients that declare
//! the maximum body and trickle it in can hold at most half the budget for
//! the request timeout, and the small reviews the API server sends (a few
//! KiB each) always keep the other half. Used by the connection layer
//! (which gives each connection its share) and the HTTP handlers (which
//! reserve).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bodies larger than this draw on the large pool too. Real admission
/// reviews are a few KiB; only unusual objects come near it.
pub const LARGE_BODY: usize = 256 * 1024;

/// The process-wide pools.
#[derive(Debug)]
pub struct Budget {
    all: Arc<Semaphore>,
    large: Arc<Semaphore>,
}

/// A connection's share of the in-flight byte budget; handed to the
/// handler with each request.
#[derive(Debug, Clone)]
pub struct ConnBudget(pub Arc<Semaphore>);

/// Bytes reserved for one request. Released when dropped.
#[derive(Debug)]
pub struct Reserved {
    all: OwnedSemaphorePermit,
    conn: Option<OwnedSemaphorePermit>,
    large: Option<OwnedSemaphorePermit>,
}

/// `n` permits of `pool`, or `None` when it has not that many left.
fn take(pool: &Arc<Semaphore>, n: usize) -> Option<OwnedSemaphorePermit> {
    pool.clone()
        .try_acquire_many_owned(u32::try_from(n).ok()?)
        .ok()
}

/// Adds `more` to a permit that may not exist yet.
fn merge(into: &mut Option<OwnedSemaphorePermit>, more: OwnedSemaphorePermit) {
    match into {
        Some(p) => p.merge(more),
        None => *into = Some(more),
    }
}

impl Budget {
    pub fn new(bytes: usize) -> Budget {
        Budget {
            all: Arc::new(Semaphore::new(bytes)),
            large: Arc::new(Semaphore::new(bytes / 2)),
        }
    }

    /// A reservation of `n` bytes (at least one, so it always exists to
    /// grow), or `None` when a pool is spent.
    pub fn reserve(&self, conn: Option<&ConnBudget>, n: usize) -> Option<Reserved> {
        let n = n.max(1);
        let conn = match conn {
            Some(c) => Some(take(&c.0, n)?),
            None => None,
        };
        let large = match n > LARGE_BODY {
            true => Some(take(&self.large, n)?),
            false => None,
        };
        let all = take(&self.all, n)?;
        Some(Reserved { all, conn, large })
    }

    /// Grows `r` to hold `total` bytes; false when a pool is spent. (What
    /// was taken before a pool ran out stays with `r`, and goes back with
    /// it.)
    pub fn grow(&self, r: &mut Reserved, conn: Option<&ConnBudget>, total: usize) -> bool {
        let more = total.saturating_sub(r.bytes());
        if more > 0 {
            if let Some(c) = conn {
                let Some(p) = take(&c.0, more) else {
                    return false;
                };
                merge(&mut r.conn, p);
            }
            let Some(p) = take(&self.all, more) else {
                return false;
            };
            r.all.merge(p);
        }
        let held = r.large.as_ref().map_or(0, |p| p.num_permits());
        if total > LARGE_BODY && total > held {
            let Some(p) = take(&self.large, total - held) else {
                return false;
            };
            merge(&mut r.large, p);
        }
        true
    }
}

impl Reserved {
    pub fn bytes(&self) -> usize {
        self.all.num_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_takes_from_every_pool_and_gives_back_when_dropped() {
        let budget = Budget::new(10);
        let conn = ConnBudget(Arc::new(Semaphore::new(6)));
        let mut r = budget.reserve(Some(&conn), 4).unwrap();
        assert!(budget.grow(&mut r, Some(&conn), 6));
        assert_eq!(r.bytes(), 6);
        // The connection's share is spent, though the pool is not.
        assert!(budget.reserve(Some(&conn), 1).is_none());
        assert!(budget.reserve(None, 4).is_some());
        assert!(budget.reserve(None, 5).is_none());
        drop(r);
        assert_eq!(budget.all.available_permits(), 10);
        assert_eq!(conn.0.available_permits(), 6);
    }

    #[test]
    fn large_bodies_can_hold_only_half_of_the_budget() {
        let mib = 1024 * 1024;
        let budget = Budget::new(32 * mib);
        let big: Vec<Reserved> = (0..4)
            .filter_map(|_| budget.reserve(None, 8 * mib))
            .collect();
        assert_eq!(big.len(), 2, "16 of 32 MiB for large bodies");
        // Small reviews still fit in the rest.
        let small: Vec<Reserved> = (0..1000)
            .filter_map(|_| budget.reserve(None, 10 * 1024))
            .collect();
        assert_eq!(small.len(), 1000);
        // A body that grows past the line joins the large pool.
        let mut growing = budget.reserve(None, 1024).unwrap();
        assert!(!budget.grow(&mut growing, None, 2 * LARGE_BODY));
        drop(big);
        assert!(budget.grow(&mut growing, None, 2 * LARGE_BODY));
        assert_eq!(growing.bytes(), 2 * LARGE_BODY);
        assert_eq!(budget.large.available_permits(), 16 * mib - 2 * LARGE_BODY);
        drop(growing);
        drop(small);
        assert_eq!(budget.large.available_permits(), 16 * mib);
        assert_eq!(budget.all.available_permits(), 32 * mib);
    }
}
