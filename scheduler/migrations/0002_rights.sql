-- Data subjects' rights: erasures and exports, fanned out to regions through an
-- outbox, and the webhook deliveries of each tenant.

-- One erasure or export, as requested.
CREATE TABLE rights_requests (
    request_id TEXT PRIMARY KEY,
    -- erase or export
    kind TEXT NOT NULL,
    tenant TEXT NOT NULL,
    -- What it covers (JSON): the erasure scope, or the exported subject and options.
    scope TEXT NOT NULL,
    -- The scope as a comparable key: an identical request while one is open returns it.
    scope_key TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    finished_at BIGINT
);

CREATE INDEX rights_requests_open ON rights_requests (tenant, kind, scope_key, finished_at);

-- Its part in each region: sent through the region's own broker (or queue), and
-- answered by the region (a signed receipt, an export report).
CREATE TABLE region_requests (
    request_id TEXT NOT NULL,
    region TEXT NOT NULL,
    -- The request as sent to the region (JSON).
    message TEXT NOT NULL,
    dispatched BIGINT NOT NULL DEFAULT 0,
    claimed_by TEXT,
    claimed_until BIGINT,
    -- Progress reported so far.
    objects BIGINT NOT NULL DEFAULT 0,
    bytes BIGINT NOT NULL DEFAULT 0,
    -- The region's answer (JSON): its signed receipt, or its export report.
    outcome TEXT,
    finished_at BIGINT,
    PRIMARY KEY (request_id, region)
);

CREATE INDEX region_requests_to_dispatch ON region_requests (dispatched, finished_at);

-- Job results and purge events to POST to tenants' webhooks, with retries.
CREATE TABLE webhook_deliveries (
    delivery_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    -- result or purge
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    claimed_until BIGINT,
    delivered_at BIGINT,
    last_status TEXT,
    created_at BIGINT NOT NULL
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (delivered_at, next_attempt_at);
CREATE INDEX webhook_deliveries_by_tenant ON webhook_deliveries (tenant, created_at);
