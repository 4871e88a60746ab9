-- The control store: metadata only (no image bytes, no raw IP, no API key).
-- One dialect for PostgreSQL and SQLite: TEXT, BIGINT (times in Unix milliseconds).

CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    region TEXT NOT NULL,
    priority TEXT NOT NULL,
    -- queued, running, succeeded, failed, refused
    status TEXT NOT NULL,
    -- The pseudonymous data subject the job is about, when it names one.
    subject TEXT,
    -- The job message as routed (JSON): object keys and operations, the client IP's
    -- pseudonym at most. Kept to dispatch it again while its region is unreachable.
    message TEXT NOT NULL,
    correlation_id TEXT,
    -- 0 until the region's queue holds the job (an outbox): any scheduler dispatches it.
    dispatched BIGINT NOT NULL DEFAULT 0,
    dispatch_attempts BIGINT NOT NULL DEFAULT 0,
    -- The scheduler dispatching it, or relaying its result, holds it until then.
    claimed_by TEXT,
    claimed_until BIGINT,
    outputs TEXT,
    error TEXT,
    timings TEXT,
    dead_lettered BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT,
    -- Set once the result is on locality.results: each job's result is published once.
    relayed_at BIGINT
);

CREATE INDEX jobs_by_tenant ON jobs (tenant, created_at, job_id);
CREATE INDEX jobs_to_dispatch ON jobs (dispatched, created_at);
CREATE INDEX jobs_by_age ON jobs (created_at);

CREATE TABLE idempotency_keys (
    tenant TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    -- SHA-256 of the envelope without its client_ip, so reuse with another envelope is told apart.
    envelope_sha256 TEXT NOT NULL,
    job_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, idempotency_key)
);

-- Named leases, so a periodic task (the job-record sweep) runs in one scheduler at a time.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
