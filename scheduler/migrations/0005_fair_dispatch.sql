-- Fair dispatch between tenants, results relayed once, submissions taken once.

-- Jobs waiting for their region's window, per tenant and priority, oldest first.
CREATE INDEX jobs_waiting ON jobs (region, tenant, priority, created_at) WHERE dispatched = 0;
-- Jobs in their region's queues or at work: the dispatch window.
CREATE INDEX jobs_in_flight ON jobs (region, tenant) WHERE dispatched = 1 AND finished_at IS NULL;
-- Jobs a tenant has accepted and not finished: its queued-jobs quota.
CREATE INDEX jobs_unfinished ON jobs (tenant) WHERE finished_at IS NULL;
-- Results recorded and not yet known to be published.
CREATE INDEX jobs_unrelayed ON jobs (finished_at) WHERE finished_at IS NOT NULL AND relayed_at IS NULL;

-- The result as recorded (JSON), so whichever scheduler relays it publishes the same.
ALTER TABLE jobs ADD COLUMN result TEXT;

-- AMQP submissions taken, by the publisher's message id: one redelivered after a
-- scheduler died between recording and acking it is the same job.
CREATE TABLE submission_messages (
    tenant TEXT NOT NULL,
    message_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, message_id)
);
CREATE INDEX submission_messages_by_age ON submission_messages (created_at);
CREATE INDEX submission_messages_by_job ON submission_messages (job_id);

-- Deliveries due, per tenant.
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (tenant, next_attempt_at) WHERE delivered_at IS NULL;
