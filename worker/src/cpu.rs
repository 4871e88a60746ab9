//! Hands CPU-bound work to rayon and awaits it without blocking a tokio thread.

use std::panic::{catch_unwind, AssertUnwindSafe};

use tokio::sync::oneshot;

/// The work panicked; the message says where. The worker goes on serving.
#[derive(Debug, thiserror::Error)]
#[error("image work panicked: {0}")]
pub struct WorkPanicked(pub String);

/// Runs `work` on `pool`; the async caller waits on a channel.
/// Work whose caller has gone away is skipped.
pub async fn run_on_pool<T, F>(pool: &rayon::ThreadPool, work: F) -> Result<T, WorkPanicked>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (sender, receiver) = oneshot::channel();
    let span = tracing::Span::current();
    pool.spawn(move || {
        if sender.is_closed() {
            return;
        }
        let _entered = span.enter();
        let outcome = catch_unwind(AssertUnwindSafe(work)).map_err(|panic| {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            WorkPanicked(text)
        });
        let _ = sender.send(outcome);
    });
    receiver
        .await
        .unwrap_or_else(|_| Err(WorkPanicked("the rayon task was dropped".into())))
}
