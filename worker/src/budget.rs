//! The worker's memory budget: bytes that its jobs may hold at once, across all of them.
//!
//! A job reserves its whole cost before it fetches its source (source bytes, decoded
//! pixels, every output buffer and encoder; see `pipeline::memory_cost`) and keeps it
//! until its outputs are stored. A job that could never fit is refused, not clamped.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone)]
pub struct MemoryBudget {
    total_units: u32,
    semaphore: Arc<Semaphore>,
}

/// The budget is counted in blocks so that it fits the semaphore's u32 permits.
const BYTES_PER_UNIT: u64 = 64 * 1024;

/// A share of the budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
    pub bytes: u64,
}

impl MemoryBudget {
    pub fn new(bytes: u64) -> Self {
        let total_units = (bytes / BYTES_PER_UNIT).clamp(1, u64::from(u32::MAX >> 4)) as u32;
        Self {
            total_units,
            semaphore: Arc::new(Semaphore::new(total_units as usize)),
        }
    }

    /// The whole budget, in bytes.
    pub fn total(&self) -> u64 {
        u64::from(self.total_units) * BYTES_PER_UNIT
    }

    fn units(bytes: u64) -> u64 {
        bytes.div_ceil(BYTES_PER_UNIT).max(1)
    }

    /// Whether `bytes` can ever be reserved.
    pub fn fits(&self, bytes: u64) -> bool {
        Self::units(bytes) <= u64::from(self.total_units)
    }

    /// Waits until `bytes` fit beside what other jobs hold; `None` when they never can.
    pub async fn reserve(&self, bytes: u64) -> Option<Reservation> {
        if !self.fits(bytes) {
            return None;
        }
        let permit = self
            .semaphore
            .clone()
            .acquire_many_owned(Self::units(bytes) as u32)
            .await
            .expect("the budget semaphore is never closed");
        Some(Reservation {
            _permit: permit,
            bytes,
        })
    }

    /// Bytes currently reserved.
    pub fn in_use(&self) -> u64 {
        u64::from(self.total_units - self.semaphore.available_permits() as u32) * BYTES_PER_UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_room_and_a_job_larger_than_the_budget_is_refused() {
        let budget = MemoryBudget::new(10 * BYTES_PER_UNIT);
        let first = budget.reserve(6 * BYTES_PER_UNIT).await.unwrap();
        assert_eq!(budget.in_use(), 6 * BYTES_PER_UNIT);
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            budget.reserve(6 * BYTES_PER_UNIT),
        )
        .await;
        assert!(waiting.is_err(), "a reservation past the budget must wait");
        drop(first);
        assert!(budget.reserve(11 * BYTES_PER_UNIT).await.is_none());
        let whole = budget.reserve(10 * BYTES_PER_UNIT).await.unwrap();
        assert_eq!(budget.in_use(), budget.total());
        drop(whole);
        assert_eq!(budget.in_use(), 0);
    }
}
