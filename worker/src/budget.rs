//! The worker's memory budget: bytes that its jobs may hold at once, across all of them.
//!
//! A job reserves its whole cost before it fetches its source (source bytes, decoded
//! pixels, every output buffer and encoder; see `pipeline::memory_cost`) and keeps it
//! until its outputs are stored. A job that could never fit is refused, not clamped.
//!
//! Waiting jobs are admitted fairly, not in arrival order: whenever memory frees, of
//! the waiting jobs that fit now, the one whose tenant holds least goes first (then the
//! one waiting longest), so a small job is not stuck behind a large one and one
//! tenant's jobs do not crowd out another's. A job that has waited [`AGING`] is
//! served before any newcomer: memory is held back for it until it fits, so a large
//! job is not starved by a stream of small ones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long a waiting job lets others past it.
pub const AGING: Duration = Duration::from_secs(2);

/// The budget is counted in blocks.
const BYTES_PER_UNIT: u64 = 64 * 1024;

#[derive(Debug, Clone)]
pub struct MemoryBudget {
    total_units: u64,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    available: u64,
    waiters: Vec<Waiter>,
    held: HashMap<String, u64>,
    next_id: u64,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    units: u64,
    tenant: String,
    since: Instant,
    granted: bool,
    wake: Arc<Notify>,
}

impl State {
    /// Grants what can be granted now, by the policy in the module's comment.
    fn grant(&mut self, now: Instant) {
        loop {
            let pending = || self.waiters.iter().enumerate().filter(|(_, w)| !w.granted);
            let aged = pending()
                .filter(|(_, w)| now.duration_since(w.since) >= AGING)
                .min_by_key(|(_, w)| w.since);
            let chosen = match aged {
                Some((index, waiter)) if waiter.units <= self.available => Some(index),
                // Held back for the job that has waited longest.
                Some(_) => None,
                None => pending()
                    .filter(|(_, w)| w.units <= self.available)
                    .min_by_key(|(_, w)| (self.held.get(&w.tenant).copied().unwrap_or(0), w.since))
                    .map(|(index, _)| index),
            };
            let Some(index) = chosen else { return };
            let waiter = &mut self.waiters[index];
            waiter.granted = true;
            self.available -= waiter.units;
            *self.held.entry(waiter.tenant.clone()).or_default() += waiter.units;
            waiter.wake.notify_one();
        }
    }

    fn give_back(&mut self, tenant: &str, units: u64) {
        self.available += units;
        if let Some(held) = self.held.get_mut(tenant) {
            *held -= units.min(*held);
            if *held == 0 {
                self.held.remove(tenant);
            }
        }
        self.grant(Instant::now());
    }
}

/// A share of the budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    state: Arc<Mutex<State>>,
    tenant: String,
    units: u64,
    pub bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut state = self.state.lock().expect("budget lock");
        state.give_back(&self.tenant, self.units);
    }
}

/// A waiter's place in line; leaving the line (the job was cancelled) gives back what
/// was granted to it meanwhile.
struct Place {
    state: Arc<Mutex<State>>,
    id: u64,
    claimed: bool,
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.claimed {
            return;
        }
        let mut state = self.state.lock().expect("budget lock");
        if let Some(index) = state.waiters.iter().position(|w| w.id == self.id) {
            let waiter = state.waiters.remove(index);
            if waiter.granted {
                state.give_back(&waiter.tenant, waiter.units);
            } else {
                state.grant(Instant::now());
            }
        }
    }
}

impl MemoryBudget {
    pub fn new(bytes: u64) -> Self {
        let total_units = (bytes / BYTES_PER_UNIT).max(1);
        Self {
            total_units,
            state: Arc::new(Mutex::new(State {
                available: total_units,
                ..State::default()
            })),
        }
    }

    /// The whole budget, in bytes.
    pub fn total(&self) -> u64 {
        self.total_units * BYTES_PER_UNIT
    }

    fn units(bytes: u64) -> u64 {
        bytes.div_ceil(BYTES_PER_UNIT).max(1)
    }

    /// Whether `bytes` can ever be reserved.
    pub fn fits(&self, bytes: u64) -> bool {
        Self::units(bytes) <= self.total_units
    }

    /// Waits until `bytes` are granted to a job of `tenant`; `None` when they never can be.
    pub async fn reserve(&self, tenant: &str, bytes: u64) -> Option<Reservation> {
        if !self.fits(bytes) {
            return None;
        }
        let units = Self::units(bytes);
        let wake = Arc::new(Notify::new());
        let mut place = {
            let mut state = self.state.lock().expect("budget lock");
            let id = state.next_id;
            state.next_id += 1;
            state.waiters.push(Waiter {
                id,
                units,
                tenant: tenant.to_string(),
                since: Instant::now(),
                granted: false,
                wake: wake.clone(),
            });
            state.grant(Instant::now());
            Place {
                state: self.state.clone(),
                id,
                claimed: false,
            }
        };
        loop {
            {
                let mut state = self.state.lock().expect("budget lock");
                if let Some(index) = state
                    .waiters
                    .iter()
                    .position(|w| w.id == place.id && w.granted)
                {
                    state.waiters.remove(index);
                    place.claimed = true;
                    return Some(Reservation {
                        state: self.state.clone(),
                        tenant: tenant.to_string(),
                        units,
                        bytes,
                    });
                }
            }
            wake.notified().await;
        }
    }

    /// Bytes currently reserved.
    pub fn in_use(&self) -> u64 {
        let state = self.state.lock().expect("budget lock");
        (self.total_units - state.available) * BYTES_PER_UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: u64 = BYTES_PER_UNIT;

    async fn not_yet(reservation: impl std::future::Future<Output = Option<Reservation>>) {
        let waited = tokio::time::timeout(Duration::from_millis(50), reservation).await;
        assert!(waited.is_err(), "a reservation past the budget must wait");
    }

    #[tokio::test]
    async fn reservations_wait_for_room_and_a_job_larger_than_the_budget_is_refused() {
        let budget = MemoryBudget::new(10 * UNIT);
        let first = budget.reserve("a", 6 * UNIT).await.unwrap();
        assert_eq!(budget.in_use(), 6 * UNIT);
        not_yet(budget.reserve("a", 6 * UNIT)).await;
        drop(first);
        assert!(budget.reserve("a", 11 * UNIT).await.is_none());
        let whole = budget.reserve("a", 10 * UNIT).await.unwrap();
        assert_eq!(budget.in_use(), budget.total());
        drop(whole);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_small_job_goes_past_a_large_one_that_waits() {
        let budget = MemoryBudget::new(10 * UNIT);
        let held = budget.reserve("a", 6 * UNIT).await.unwrap();
        let large = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve("a", 8 * UNIT).await.map(|r| r.bytes) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The large one waits; a small one fits beside what is held and goes first.
        let small = tokio::time::timeout(Duration::from_millis(200), budget.reserve("b", 2 * UNIT))
            .await
            .expect("the small job is admitted past the large one")
            .unwrap();
        drop(small);
        drop(held);
        assert_eq!(large.await.unwrap(), Some(8 * UNIT));
    }

    #[tokio::test]
    async fn a_large_job_that_has_waited_long_enough_is_not_passed_again() {
        let budget = MemoryBudget::new(10 * UNIT);
        let held = budget.reserve("a", 6 * UNIT).await.unwrap();
        let large = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve("a", 8 * UNIT).await.map(|r| r.bytes) }
        });
        tokio::time::sleep(AGING + Duration::from_millis(50)).await;
        // Aged: memory is held back for it, newcomers wait behind it.
        not_yet(budget.reserve("b", 2 * UNIT)).await;
        drop(held);
        assert_eq!(large.await.unwrap(), Some(8 * UNIT));
    }

    #[tokio::test]
    async fn the_tenant_holding_least_is_admitted_first() {
        let budget = MemoryBudget::new(10 * UNIT);
        let busy = budget.reserve("busy", 8 * UNIT).await.unwrap();
        let quiet_held = budget.reserve("quiet", UNIT).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for tenant in ["busy", "quiet"] {
            let (budget, tx) = (budget.clone(), tx.clone());
            tokio::spawn(async move {
                let reservation = budget.reserve(tenant, 2 * UNIT).await.unwrap();
                tx.send(tenant).unwrap();
                drop(reservation);
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Room for one of them: "quiet" holds less, so it goes first; "busy" follows
        // once "quiet" gives its share back.
        drop(quiet_held);
        assert_eq!(rx.recv().await, Some("quiet"));
        assert_eq!(rx.recv().await, Some("busy"));
        drop(busy);
    }

    #[tokio::test]
    async fn a_cancelled_wait_gives_back_what_was_granted_to_it() {
        let budget = MemoryBudget::new(4 * UNIT);
        let held = budget.reserve("a", 4 * UNIT).await.unwrap();
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve("a", 4 * UNIT).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting.abort();
        let _ = waiting.await;
        drop(held);
        assert_eq!(budget.in_use(), 0);
        assert!(budget.reserve("a", 4 * UNIT).await.is_some());
    }
}
