//! The control store's behaviour, one suite run against both backends: SQLite (what
//! `locality up` uses) and the PostgreSQL server that scripts/test.sh starts (what
//! schedulers share). Without the PostgreSQL server these tests fail; they never skip.

use std::time::Duration;

use locality_proto::{
    ErrorCode, Fit, ImageFormat, JobError, JobMessage, JobOutcome, JobResult, JobStatus, Priority,
    RegionId, StageTimings, TenantId, ENVELOPE_VERSION,
};
use locality_scheduler::store::{
    ControlStore, Inserted, JobFilter, Millis, NewJob, Recorded, CLAIM,
};
use uuid::Uuid;

/// A store on a fresh SQLite file; the directory lives as long as the store is used.
async fn sqlite() -> (ControlStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("control.sqlite").display()
    );
    (ControlStore::open(&url).await.unwrap(), dir)
}

/// A store on a fresh database of the test PostgreSQL server.
async fn postgres() -> (ControlStore, String) {
    let admin = std::env::var("LOCALITY_TEST_DATABASE_URL").expect(
        "LOCALITY_TEST_DATABASE_URL is not set: these tests need the PostgreSQL server that \
         scripts/test.sh starts; run the suite with scripts/test.sh",
    );
    let url = fresh_database(&admin).await;
    (ControlStore::open(&url).await.unwrap(), url)
}

async fn fresh_database(admin: &str) -> String {
    use sqlx::Connection;
    let name = format!("store_test_{}", Uuid::new_v4().simple());
    let mut connection = sqlx::PgConnection::connect(admin)
        .await
        .expect("the test PostgreSQL server is reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut connection)
        .await
        .unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

fn tenant(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

fn message(tenant_id: &str, region: &str) -> JobMessage {
    let job_id = Uuid::new_v4();
    JobMessage {
        v: ENVELOPE_VERSION,
        job_id,
        tenant: tenant(tenant_id),
        region: RegionId::new(region).unwrap(),
        source_key: format!("{tenant_id}/subjects/_/assets/a/original/x.jpg"),
        outputs: vec![locality_proto::envelope::ResolvedOutput {
            name: "t".into(),
            width: 10,
            height: 10,
            fit: Fit::Inside,
            format: ImageFormat::Jpeg,
            quality: 80,
            upscale: false,
            key: format!("{tenant_id}/subjects/_/assets/a/outputs/t.jpg"),
        }],
        priority: Priority::Batch,
        client_ip_pseudonym: Some("ip1-abc".into()),
        correlation_id: None,
        submitted_at_ms: Some(1),
    }
}

fn new_job(message: &JobMessage, idempotency: Option<(&str, &str)>) -> NewJob {
    NewJob {
        message: message.clone(),
        subject: Some("user-1".into()),
        asset: "a".into(),
        idempotency: idempotency.map(|(k, h)| (k.to_string(), h.to_string())),
        message_id: None,
        dispatch_now: true,
    }
}

fn succeeded(message: &JobMessage) -> JobResult {
    JobResult {
        v: ENVELOPE_VERSION,
        job_id: message.job_id,
        tenant: message.tenant.clone(),
        region: message.region.clone(),
        outcome: JobOutcome::Succeeded,
        outputs: Vec::new(),
        error: None,
        timings: StageTimings::default(),
        correlation_id: None,
        dead_lettered: false,
        finished_at_ms: None,
    }
}

const T0: Millis = 1_800_000_000_000;

async fn insert(store: &ControlStore, message: &JobMessage, at: Millis) {
    match store.insert(new_job(message, None), "a", at).await.unwrap() {
        Inserted::New(record) => assert_eq!(record.status, JobStatus::Queued),
        other => panic!("{other:?}"),
    }
}

async fn a_job_is_recorded_and_only_its_tenant_sees_it(store: ControlStore) {
    let job = message("demo-eu", "eu");
    insert(&store, &job, T0).await;
    let record = store.get(&job.tenant, &job.job_id).await.unwrap().unwrap();
    assert_eq!(record.region.as_str(), "eu");
    assert_eq!(record.subject.as_deref(), Some("user-1"));
    assert!(store
        .get(&tenant("demo-ca"), &job.job_id)
        .await
        .unwrap()
        .is_none());
}

async fn an_idempotency_key_returns_the_first_job_or_a_conflict(
    store: ControlStore,
) -> ControlStore {
    let first = message("demo-eu", "eu");
    let again = message("demo-eu", "eu");
    let other = message("demo-eu", "eu");
    assert!(matches!(
        store
            .insert(new_job(&first, Some(("k1", "hash-a"))), "a", T0)
            .await
            .unwrap(),
        Inserted::New(_)
    ));
    match store
        .insert(new_job(&again, Some(("k1", "hash-a"))), "a", T0 + 1)
        .await
        .unwrap()
    {
        Inserted::Existing(record) => assert_eq!(record.job_id, first.job_id),
        other => panic!("expected the first job, got {other:?}"),
    }
    match store
        .insert(new_job(&other, Some(("k1", "hash-b"))), "a", T0 + 2)
        .await
        .unwrap()
    {
        Inserted::Conflict { job_id } => assert_eq!(job_id, first.job_id),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // The same key of another tenant is another key.
    let elsewhere = message("demo-ca", "ca");
    assert!(matches!(
        store
            .insert(new_job(&elsewhere, Some(("k1", "hash-b"))), "a", T0)
            .await
            .unwrap(),
        Inserted::New(_)
    ));
    // Neither repeat recorded a job.
    let page = store
        .list(
            &tenant("demo-eu"),
            &JobFilter {
                limit: 10,
                ..JobFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    store
}

async fn each_result_is_relayed_once(store: ControlStore) {
    let job = message("demo-eu", "eu");
    insert(&store, &job, T0).await;
    store.mark_dispatched(&job.job_id, T0).await.unwrap();
    store.record_started(&job.job_id, T0 + 1).await.unwrap();
    let record = store.get(&job.tenant, &job.job_id).await.unwrap().unwrap();
    assert_eq!(record.status, JobStatus::Running);

    let result = succeeded(&job);
    assert_eq!(
        store.record_finished(&result, "a", T0 + 2).await.unwrap(),
        Recorded::First
    );
    // Another scheduler gets the same result (a redelivery) while "a" relays it: it is
    // recorded, and its relay is "a"'s.
    assert_eq!(
        store.record_finished(&result, "b", T0 + 3).await.unwrap(),
        Recorded::Done
    );
    assert!(store
        .claim_unrelayed("b", T0 + 3, 10)
        .await
        .unwrap()
        .is_empty());
    // "a" died before marking it: once its claim lapses, the relay duty claims it, with
    // the result as recorded.
    let later = T0 + 3 + CLAIM.as_millis() as Millis;
    let lapsed = store.claim_unrelayed("b", later, 10).await.unwrap();
    assert_eq!(lapsed.len(), 1);
    assert_eq!(lapsed[0].result, result);
    assert!(store
        .claim_unrelayed("c", later, 10)
        .await
        .unwrap()
        .is_empty());
    // The ledger showed it published: marked, and never claimed again.
    assert_eq!(
        store.mark_relayed_many(&[job.job_id], later).await.unwrap(),
        1
    );
    assert_eq!(
        store.mark_relayed_many(&[job.job_id], later).await.unwrap(),
        0
    );
    let much_later = later + 10 * CLAIM.as_millis() as Millis;
    assert!(store
        .claim_unrelayed("c", much_later, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .record_finished(&result, "c", later + 1)
            .await
            .unwrap(),
        Recorded::Done
    );
    // Reports the job was not routed for are never relayed: another region, an
    // output it did not ask for, an unknown job.
    let mut elsewhere = result.clone();
    elsewhere.region = RegionId::new("sg").unwrap();
    elsewhere.outcome = JobOutcome::Failed;
    let mut extra_output = result.clone();
    extra_output.outputs.push(locality_proto::OutputInfo {
        name: "x".into(),
        key: "demo-eu/subjects/_/assets/other/outputs/x.jpg".into(),
        region: job.region.clone(),
        width: 1,
        height: 1,
        format: ImageFormat::Jpeg,
        bytes: 1,
    });
    let unknown = succeeded(&message("demo-eu", "eu"));
    for forged in [&elsewhere, &extra_output, &unknown] {
        assert_eq!(
            store.record_finished(forged, "c", later + 2).await.unwrap(),
            Recorded::NotRouted
        );
    }
    let record = store.get(&job.tenant, &job.job_id).await.unwrap().unwrap();
    assert_eq!(record.status, JobStatus::Succeeded);
    assert!(record.finished_at.is_some());
}

async fn jobs_waiting_for_their_region_are_claimed_once(store: ControlStore) {
    let waiting = message("demo-eu", "eu");
    let sent = message("demo-eu", "eu");
    insert(&store, &waiting, T0).await;
    insert(&store, &sent, T0).await;
    store.mark_dispatched(&sent.job_id, T0).await.unwrap();
    let (eu, demo) = (waiting.region.clone(), waiting.tenant.clone());
    // The submitter holds its fresh job while it dispatches it.
    assert!(store
        .waiting(&eu, &demo, Priority::Batch, T0 + 1, 10)
        .await
        .unwrap()
        .is_empty());
    store
        .release_dispatch(&waiting.job_id, T0 + 2)
        .await
        .unwrap();
    let found = store
        .waiting(&eu, &demo, Priority::Batch, T0 + 3, 10)
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].message, waiting);
    assert!(store
        .waiting(&eu, &demo, Priority::Interactive, T0 + 3, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store.anything_waiting(&eu).await.unwrap());
    assert!(!store
        .anything_waiting(&RegionId::new("ca").unwrap())
        .await
        .unwrap());
    // Of two schedulers claiming it, one wins; the other gets it once the claim lapses.
    assert!(store
        .claim_for_dispatch(&waiting.job_id, "b", T0 + 3)
        .await
        .unwrap());
    assert!(!store
        .claim_for_dispatch(&waiting.job_id, "c", T0 + 4)
        .await
        .unwrap());
    let lapsed = T0 + 4 + CLAIM.as_millis() as Millis;
    assert!(store
        .claim_for_dispatch(&waiting.job_id, "c", lapsed)
        .await
        .unwrap());
    store
        .mark_dispatched(&waiting.job_id, lapsed)
        .await
        .unwrap();
    assert!(!store
        .claim_for_dispatch(&waiting.job_id, "d", lapsed * 2)
        .await
        .unwrap());
    assert!(!store.anything_waiting(&eu).await.unwrap());
}

async fn the_window_counts_what_a_region_has_in_flight(store: ControlStore) {
    let eu = RegionId::new("eu").unwrap();
    let (a, b, c) = (
        message("demo-eu", "eu"),
        message("demo-eu", "eu"),
        message("demo-ca", "eu"),
    );
    let mut interactive = c.clone();
    interactive.priority = Priority::Interactive;
    for job in [&a, &b, &interactive] {
        insert(&store, job, T0).await;
        store.mark_dispatched(&job.job_id, T0).await.unwrap();
    }
    store.record_started(&a.job_id, T0 + 1).await.unwrap();
    let in_flight = store.in_flight(&eu, T0 - 1).await.unwrap();
    assert_eq!((in_flight.total, in_flight.running), (3, 1));
    assert_eq!(in_flight.by_tenant[&tenant("demo-eu")], (2, 0));
    assert_eq!(in_flight.by_tenant[&tenant("demo-ca")], (1, 1));
    // Finished jobs leave the window; so do ones too old to be alive.
    store
        .record_finished(&succeeded(&b), "a", T0 + 2)
        .await
        .unwrap();
    assert_eq!(store.in_flight(&eu, T0 - 1).await.unwrap().total, 2);
    assert_eq!(store.in_flight(&eu, T0 + 1).await.unwrap().total, 1);
    // The queued-jobs quota counts what is unfinished, up to what it asks.
    assert_eq!(
        store
            .unfinished_jobs(&tenant("demo-eu"), 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .unfinished_jobs(&tenant("demo-ca"), 100)
            .await
            .unwrap(),
        1
    );
    for _ in 0..3 {
        insert(&store, &message("demo-sg", "sg"), T0).await;
    }
    assert_eq!(
        store.unfinished_jobs(&tenant("demo-sg"), 2).await.unwrap(),
        2
    );
}

async fn an_amqp_message_is_taken_once(store: ControlStore) {
    let first = message("demo-eu", "eu");
    let redelivered = message("demo-eu", "eu");
    let with_id = |job: &JobMessage, id: &str| NewJob {
        message_id: Some(id.to_string()),
        ..new_job(job, None)
    };
    assert!(matches!(
        store.insert(with_id(&first, "m-1"), "a", T0).await.unwrap(),
        Inserted::New(_)
    ));
    match store
        .insert(with_id(&redelivered, "m-1"), "b", T0 + 1)
        .await
        .unwrap()
    {
        Inserted::Existing(record) => assert_eq!(record.job_id, first.job_id),
        other => panic!("a redelivered message must be the same job, got {other:?}"),
    }
    // Another tenant's message id is its own.
    let other = message("demo-ca", "ca");
    assert!(matches!(
        store.insert(with_id(&other, "m-1"), "a", T0).await.unwrap(),
        Inserted::New(_)
    ));
    assert!(store
        .get(&redelivered.tenant, &redelivered.job_id)
        .await
        .unwrap()
        .is_none());
}

async fn a_job_past_its_dispatch_deadline_fails_once(store: ControlStore) {
    let job = message("demo-eu", "eu");
    let newer = message("demo-eu", "eu");
    insert(&store, &job, T0).await;
    insert(&store, &newer, T0 + 30_000).await;
    store.release_dispatch(&job.job_id, T0).await.unwrap();
    store.release_dispatch(&newer.job_id, T0).await.unwrap();
    let eu = job.region.clone();
    // The region was unreachable for 60 s: jobs that waited that long fail, once.
    let failed = store
        .fail_waiting(&eu, T0 + 1, 60, "a", T0 + 61_000, 100)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].job_id, job.job_id);
    assert_eq!(
        failed[0].error,
        Some(JobError {
            code: ErrorCode::RegionUnavailable,
            message: failed[0].error.as_ref().unwrap().message.clone()
        })
    );
    assert!(store
        .fail_waiting(&eu, T0 + 1, 60, "b", T0 + 62_000, 100)
        .await
        .unwrap()
        .is_empty());
    let record = store.get(&job.tenant, &job.job_id).await.unwrap().unwrap();
    assert_eq!(record.status, JobStatus::Failed);
    let record = store
        .get(&newer.tenant, &newer.job_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, JobStatus::Queued);
}

async fn unfinished_jobs_can_be_queued_again(store: ControlStore) {
    let running = message("demo-eu", "eu");
    let done = message("demo-eu", "eu");
    for job in [&running, &done] {
        insert(&store, job, T0).await;
        store.mark_dispatched(&job.job_id, T0).await.unwrap();
    }
    store.record_started(&running.job_id, T0).await.unwrap();
    store
        .record_finished(&succeeded(&done), "a", T0)
        .await
        .unwrap();
    assert_eq!(store.requeue_unfinished(T0 + 1).await.unwrap(), 1);
    let waiting = store
        .waiting(
            &running.region,
            &running.tenant,
            Priority::Batch,
            T0 + 2,
            10,
        )
        .await
        .unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].message.job_id, running.job_id);
}

async fn a_tenants_jobs_are_listed_a_page_at_a_time(store: ControlStore) {
    let mut ids = Vec::new();
    for n in 0..5 {
        let job = message("demo-sg", "sg");
        insert(&store, &job, T0 + n).await;
        ids.push(job.job_id);
    }
    insert(&store, &message("demo-eu", "eu"), T0).await;
    let finished = succeeded(&message_with(ids[1]));
    assert_eq!(
        store.record_finished(&finished, "a", T0).await.unwrap(),
        Recorded::First
    );
    let sg = tenant("demo-sg");
    let mut seen = Vec::new();
    let mut filter = JobFilter {
        limit: 2,
        ..JobFilter::default()
    };
    loop {
        let page = store.list(&sg, &filter).await.unwrap();
        seen.extend(page.iter().map(|r| r.job_id));
        match page.last() {
            Some(last) if page.len() == 2 => {
                filter.after = Some((last.created_at_millis, last.job_id))
            }
            _ => break,
        }
    }
    assert_eq!(seen, ids);
    let since = store
        .list(
            &sg,
            &JobFilter {
                since: Some(T0 + 3),
                limit: 10,
                ..JobFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(since.len(), 2);
    let queued = store
        .list(
            &sg,
            &JobFilter {
                status: Some(JobStatus::Queued),
                limit: 10,
                ..JobFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(queued.len(), 4);
    assert!(queued.iter().all(|r| r.job_id != ids[1]));
}

fn message_with(job_id: Uuid) -> JobMessage {
    JobMessage {
        job_id,
        ..message("demo-sg", "sg")
    }
}

async fn expired_records_are_swept_by_one_scheduler_at_a_time(store: ControlStore) {
    let old = message("demo-eu", "eu");
    let recent = message("demo-eu", "eu");
    let day: Millis = 86_400_000;
    store
        .insert(new_job(&old, Some(("old-key", "h"))), "a", T0 - 31 * day)
        .await
        .unwrap();
    insert(&store, &recent, T0 - day).await;
    let retention = Duration::from_secs(30 * 86_400);
    // Another scheduler holds the sweep: this one does nothing.
    assert!(store
        .take_lease("job-sweep", "other", Duration::from_secs(60), T0)
        .await
        .unwrap());
    assert_eq!(store.sweep(retention, "me", T0).await.unwrap(), None);
    assert!(store.get(&old.tenant, &old.job_id).await.unwrap().is_some());
    // Its lease lapsed (it died): this one sweeps.
    assert_eq!(
        store.sweep(retention, "me", T0 + 61_000).await.unwrap(),
        Some(1)
    );
    assert!(store.get(&old.tenant, &old.job_id).await.unwrap().is_none());
    assert!(store
        .get(&recent.tenant, &recent.job_id)
        .await
        .unwrap()
        .is_some());
    // The swept job's idempotency key went with it.
    assert!(matches!(
        store
            .insert(
                new_job(&message("demo-eu", "eu"), Some(("old-key", "other"))),
                "a",
                T0
            )
            .await
            .unwrap(),
        Inserted::New(_)
    ));
}

async fn an_ip_period_key_is_shared_within_its_period_and_gone_after_it(store: ControlStore) {
    let first = store.ip_period_key(100, 1).await.unwrap();
    assert_eq!(first.len(), 32);
    assert_eq!(
        store.ip_period_key(100, 2).await.unwrap(),
        first,
        "one key per period"
    );
    let next = store.ip_period_key(101, 3).await.unwrap();
    assert_ne!(next, first);
    // The old period's key is gone: asking for it again makes a new one.
    assert_ne!(store.ip_period_key(100, 4).await.unwrap(), first);
}

macro_rules! on_both_backends {
    ($($case:ident),+ $(,)?) => {
        mod on_sqlite {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let (store, _dir) = sqlite().await;
                    super::$case(store).await;
                }
            )+
        }
        mod on_postgres {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let (store, _url) = postgres().await;
                    super::$case(store).await;
                }
            )+
        }
    };
}

on_both_backends!(
    a_job_is_recorded_and_only_its_tenant_sees_it,
    each_result_is_relayed_once,
    jobs_waiting_for_their_region_are_claimed_once,
    the_window_counts_what_a_region_has_in_flight,
    an_amqp_message_is_taken_once,
    a_job_past_its_dispatch_deadline_fails_once,
    unfinished_jobs_can_be_queued_again,
    a_tenants_jobs_are_listed_a_page_at_a_time,
    expired_records_are_swept_by_one_scheduler_at_a_time,
    an_ip_period_key_is_shared_within_its_period_and_gone_after_it,
);

/// Idempotency keys survive reopening the store, as across a scheduler restart.
#[tokio::test]
async fn idempotency_keys_hold_across_a_reopen_on_sqlite() {
    let (store, dir) = sqlite().await;
    let store = an_idempotency_key_returns_the_first_job_or_a_conflict(store).await;
    drop(store);
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("control.sqlite").display()
    );
    let reopened = ControlStore::open(&url).await.unwrap();
    let again = message("demo-eu", "eu");
    assert!(matches!(
        reopened
            .insert(new_job(&again, Some(("k1", "hash-a"))), "a", T0 + 9)
            .await
            .unwrap(),
        Inserted::Existing(_)
    ));
}

#[tokio::test]
async fn idempotency_keys_hold_across_a_reopen_on_postgres() {
    let (store, url) = postgres().await;
    let store = an_idempotency_key_returns_the_first_job_or_a_conflict(store).await;
    drop(store);
    let reopened = ControlStore::open(&url).await.unwrap();
    let again = message("demo-eu", "eu");
    assert!(matches!(
        reopened
            .insert(new_job(&again, Some(("k1", "hash-b"))), "a", T0 + 9)
            .await
            .unwrap(),
        Inserted::Conflict { .. }
    ));
}
