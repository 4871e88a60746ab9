-- Rights that are exact and never silent: each region's part of a request carries its
-- state, its pass (erasures run in two), the last failure the region reported, when
-- to send it again, and its deadline. Jobs name their asset, so the control plane can
-- tell when nothing begun before an erasure of an asset is still running.

ALTER TABLE region_requests ADD COLUMN state TEXT NOT NULL DEFAULT 'waiting';
ALTER TABLE region_requests ADD COLUMN pass TEXT NOT NULL DEFAULT 'first';
ALTER TABLE region_requests ADD COLUMN pass_done_at BIGINT;
ALTER TABLE region_requests ADD COLUMN kept_newer BIGINT NOT NULL DEFAULT 0;
ALTER TABLE region_requests ADD COLUMN error_code TEXT;
ALTER TABLE region_requests ADD COLUMN error TEXT;
ALTER TABLE region_requests ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE region_requests ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE region_requests ADD COLUMN next_attempt_at BIGINT;
ALTER TABLE region_requests ADD COLUMN deadline BIGINT NOT NULL DEFAULT 0;

CREATE INDEX region_requests_by_state ON region_requests (state, updated_at);

ALTER TABLE jobs ADD COLUMN asset TEXT;
CREATE INDEX jobs_open_by_tenant ON jobs (tenant, region, finished_at, created_at);

-- A delivery whose body names erased keys: kept until delivered (a purge a CDN must
-- see), then its body is replaced.
ALTER TABLE webhook_deliveries ADD COLUMN redact_on_delivery BIGINT NOT NULL DEFAULT 0;
