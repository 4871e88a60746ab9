//! The worker's pixel budget: decoded pixels in flight across all its jobs.
//!
//! Memory is bounded by pixels, not by job count: one 20 Mpx photo and many
//! thumbnails-from-small-sources cost what their decodes cost.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone)]
pub struct PixelBudget {
    total: u32,
    semaphore: Arc<Semaphore>,
}

/// Budget is counted in blocks so it fits the semaphore's u32 permits.
const PIXELS_PER_PERMIT: u64 = 1024;

impl PixelBudget {
    pub fn new(pixels: u64) -> Self {
        let total = (pixels / PIXELS_PER_PERMIT).clamp(1, u64::from(u32::MAX >> 4)) as u32;
        Self {
            total,
            semaphore: Arc::new(Semaphore::new(total as usize)),
        }
    }

    /// Waits until `pixels` fit. A job larger than the whole budget waits for
    /// the budget to be entirely free and then runs alone.
    pub async fn reserve(&self, pixels: u64) -> OwnedSemaphorePermit {
        let wanted = pixels
            .div_ceil(PIXELS_PER_PERMIT)
            .clamp(1, u64::from(self.total)) as u32;
        self.semaphore
            .clone()
            .acquire_many_owned(wanted)
            .await
            .expect("the budget semaphore is never closed")
    }

    /// Pixels currently reserved, for metrics.
    pub fn in_use(&self) -> u64 {
        u64::from(self.total - self.semaphore.available_permits() as u32) * PIXELS_PER_PERMIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_room_and_oversized_jobs_run_alone() {
        let budget = PixelBudget::new(10 * 1024);
        let first = budget.reserve(6 * 1024).await;
        assert_eq!(budget.in_use(), 6 * 1024);
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            budget.reserve(6 * 1024),
        )
        .await;
        assert!(waiting.is_err(), "a reservation past the budget must wait");
        drop(first);
        let huge = budget.reserve(1_000_000).await;
        assert_eq!(budget.in_use(), 10 * 1024);
        drop(huge);
        assert_eq!(budget.in_use(), 0);
    }
}
