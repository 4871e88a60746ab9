-- One random key per client-IP pseudonym period; a period's key is deleted once the
-- next period has begun, so older pseudonyms can no longer be linked to an address.
CREATE TABLE ip_keys (
    period BIGINT PRIMARY KEY,
    key TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
