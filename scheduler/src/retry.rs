//! Trying again in place, with backoff, what cannot be settled now (the store or the
//! broker is unreachable), rather than giving it back: nothing depends on how a broker
//! version counts requeues.

use std::future::Future;
use std::time::Duration;

use locality_proto::backoff::Delays;
use tokio_util::sync::CancellationToken;

/// Backoff between tries: 200 ms doubling, at most 5 s, with jitter.
const POLICY: locality_proto::backoff::Backoff =
    locality_proto::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

pub(crate) struct Backoff {
    next: Duration,
    delays: Delays,
}

impl Default for Backoff {
    fn default() -> Self {
        let mut delays = POLICY.delays();
        let next = delays.next().unwrap_or(Duration::from_secs(5));
        Self { next, delays }
    }
}

impl Backoff {
    /// The wait before the next try.
    pub(crate) fn delay(&self) -> Duration {
        self.next
    }

    /// Waits before another try and lengthens the next wait; `false` if shutdown came
    /// first.
    pub(crate) async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(self.next) => {}
        }
        self.next = self.delays.next().unwrap_or(self.next);
        true
    }
}

/// Runs `attempt` until it succeeds, backing off between tries, or until `shutdown`
/// (then `false`: the caller gives the work back).
pub(crate) async fn until_done<E: std::fmt::Display, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut attempt: impl FnMut() -> Fut,
) -> bool
where
    Fut: Future<Output = Result<(), E>>,
{
    let mut backoff = Backoff::default();
    loop {
        match attempt().await {
            Ok(()) => return true,
            Err(err) => {
                tracing::warn!(error = %err, what, delay = ?backoff.delay(), "cannot settle it yet; trying again");
            }
        }
        if !backoff.wait(shutdown).await {
            return false;
        }
    }
}
