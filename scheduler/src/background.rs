//! The scheduler's background duties, each its own task: dispatching waiting jobs and
//! rights parts, relaying lapsed results, advancing erasures, delivering webhooks and
//! sweeping expired records. A duty that fails a round logs it and tries the next; one
//! that panics or ends before shutdown is restarted, with an error logged and
//! `locality_background_restarts_total{duty}` counted, so no duty dies silently.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::control::Control;
use crate::dispatch::DispatchState;
use crate::store::now_millis;

const ROUND: Duration = Duration::from_secs(1);
/// Rounds of the dispatcher woken by new work come at most this often.
const QUICKEST_DISPATCH: Duration = Duration::from_millis(20);
const RESTART_AFTER: Duration = Duration::from_secs(1);

/// Sleeps `period`, or less if shutdown comes first (then `false`).
async fn pause(period: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(period) => true,
    }
}

impl Control {
    /// Runs every background duty until `shutdown`.
    pub async fn run_background(self: Arc<Self>, shutdown: CancellationToken) {
        let duties: [(&'static str, Duty); 5] = [
            ("dispatch", |control, stop| {
                Box::pin(control.dispatch_duty(stop))
            }),
            ("relay", |control, stop| Box::pin(control.relay_duty(stop))),
            ("rights", |control, stop| {
                Box::pin(control.rights_duty(stop))
            }),
            ("webhooks", |control, stop| {
                Box::pin(control.webhook_duty(stop))
            }),
            ("sweep", |control, stop| Box::pin(control.sweep_duty(stop))),
        ];
        let mut running = JoinSet::new();
        for (name, duty) in duties {
            // Each duty's series from the start, so an alert sees 0, not nothing.
            self.metrics.background_restarts.with_label_values(&[name]);
            running.spawn(supervise(self.clone(), name, shutdown.clone(), duty));
        }
        while running.join_next().await.is_some() {}
    }

    async fn dispatch_duty(self: Arc<Self>, shutdown: CancellationToken) {
        let mut state = DispatchState::default();
        loop {
            if let Err(err) = self.dispatch_round(&mut state).await {
                tracing::warn!(error = %err, "could not dispatch waiting jobs");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.dispatch_wanted.notified() => {}
                _ = tokio::time::sleep(ROUND) => {}
            }
            if !pause(QUICKEST_DISPATCH, &shutdown).await {
                return;
            }
        }
    }

    async fn relay_duty(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if let Err(err) = self.relay_round().await {
                tracing::warn!(error = %err, "could not relay lapsed results");
            }
            if !pause(ROUND, &shutdown).await {
                return;
            }
        }
    }

    async fn rights_duty(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if let Err(err) = self.advance_rights().await {
                tracing::warn!(error = %err, "could not advance erasures and exports");
            }
            if !pause(ROUND, &shutdown).await {
                return;
            }
        }
    }

    async fn webhook_duty(self: Arc<Self>, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(err) = self.deliver_webhooks(&shutdown).await {
                tracing::warn!(error = %err, "webhook deliveries stopped; starting them again");
                if !pause(ROUND, &shutdown).await {
                    return;
                }
            }
        }
    }

    async fn sweep_duty(self: Arc<Self>, shutdown: CancellationToken) {
        let every = Duration::from_secs(self.config.jobs.sweep_interval_seconds.max(1));
        let retention = Duration::from_secs(u64::from(self.config.jobs.retention_days) * 86_400);
        loop {
            match self
                .store
                .sweep(retention, &self.identity, now_millis())
                .await
            {
                Ok(Some(swept)) if swept > 0 => {
                    tracing::info!(swept, "expired job records removed")
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "the job-record sweep failed"),
            }
            if !pause(every, &shutdown).await {
                return;
            }
        }
    }
}

/// A duty: runs until shutdown.
type Duty = fn(Arc<Control>, CancellationToken) -> BoxFuture<'static, ()>;

/// Runs a duty until shutdown, starting it again whenever it ends before.
async fn supervise(
    control: Arc<Control>,
    duty: &'static str,
    shutdown: CancellationToken,
    run: Duty,
) {
    loop {
        let ended = tokio::spawn(run(control.clone(), shutdown.clone())).await;
        if shutdown.is_cancelled() {
            return;
        }
        match ended {
            Ok(()) => tracing::error!(duty, "a background duty ended by itself; starting it again"),
            Err(err) => {
                tracing::error!(duty, error = %err, "a background duty failed; starting it again")
            }
        }
        control
            .metrics
            .background_restarts
            .with_label_values(&[duty])
            .inc();
        if !pause(RESTART_AFTER, &shutdown).await {
            return;
        }
    }
}
