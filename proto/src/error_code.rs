//! Every stable, machine-readable code Locality answers with: refusals at a door
//! (HTTP or AMQP), job failures in results, and errors of the HTTP API. Serialised
//! as snake_case strings; the table of codes in docs/api.md is checked against [`ErrorCode::ALL`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// What to do with a job that failed: try it again later, or give up at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Transient (a store or broker outage): the job goes back to its queue, up to
    /// `limits.delivery_limit` deliveries.
    Retry,
    /// Permanent (bad image, residency refusal): the same input gives the same answer.
    Abort,
}

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $text:literal, http $status:literal, $recovery:ident; )+) => {
        /// A stable code. `http_status` is the status of an HTTP answer carrying it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )+
        }

        impl ErrorCode {
            /// Every code, in the order of docs/api.md's table.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)+
                }
            }

            /// Status of an HTTP response carrying this code (job failures, which
            /// reach clients inside a job's status or result, say 200 here).
            pub fn http_status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)+
                }
            }

            /// Whether a job failing with this code is tried again.
            pub fn recovery(self) -> Recovery {
                match self {
                    $(ErrorCode::$variant => Recovery::$recovery,)+
                }
            }
        }
    };
}

error_codes! {
    // Refusals of a request, over HTTP or on `locality.submit`.
    /// The envelope's `v` is not a version this server speaks.
    UnsupportedVersion = "unsupported_version", http 400, Abort;
    /// No valid `Authorization: Bearer API_KEY`.
    Unauthorised = "unauthorised", http 401, Abort;
    /// The envelope names a tenant that does not exist.
    UnknownTenant = "unknown_tenant", http 403, Abort;
    /// The API key belongs to another tenant than the one the request is for.
    WrongTenant = "wrong_tenant", http 403, Abort;
    /// Residency: the tenant is not pinned to the region asked for.
    RegionNotAllowed = "region_not_allowed", http 403, Abort;
    /// A field is missing or invalid; the message names it.
    InvalidField = "invalid_field", http 422, Abort;
    /// An upload with an empty body.
    EmptySource = "empty_source", http 422, Abort;
    /// An upload larger than the tenant's limit (`max_upload_bytes`); refused from its
    /// Content-Length before a byte is read, or cut off when it passes the limit.
    UploadTooLarge = "upload_too_large", http 413, Abort;
    /// An upload that stopped sending for `limits.upload_idle_timeout_seconds`.
    UploadStalled = "upload_stalled", http 408, Abort;
    /// Every upload slot of the region's ingest endpoint is busy; try again.
    UploadsBusy = "uploads_busy", http 503, Retry;
    /// No job with this id for this tenant.
    JobNotFound = "job_not_found", http 404, Abort;
    /// No erasure, export or export archive with this id for this caller.
    NotFound = "not_found", http 404, Abort;
    /// Only the operators' key (`scheduler.operator_key_sha256`) may do this.
    OperatorOnly = "operator_only", http 403, Abort;
    /// An export download link past its expiry; ask for a new export.
    LinkExpired = "link_expired", http 410, Abort;
    /// Uploads for this region go to the region's own ingest endpoint, and none is configured.
    UploadInRegion = "upload_in_region", http 409, Abort;
    /// An idempotency key used before with another envelope.
    IdempotencyConflict = "idempotency_conflict", http 409, Abort;
    /// The region cannot take work now, or could not be reached before the job's deadline.
    RegionUnavailable = "region_unavailable", http 503, Retry;
    /// The control plane cannot record the request now (its store is unreachable); try again.
    ServiceUnavailable = "service_unavailable", http 503, Retry;
    /// The tenant submits faster than its `quota.submissions_per_second`; try again after
    /// the `Retry-After` seconds.
    RateLimited = "rate_limited", http 429, Retry;
    /// The tenant has as many jobs accepted and unfinished as its `quota.max_queued_jobs`.
    QuotaExceeded = "quota_exceeded", http 429, Retry;
    /// A job envelope larger than `limits.max_submission_bytes`; refused unread.
    MessageTooLarge = "message_too_large", http 413, Abort;
    /// A request whose body did not arrive within `limits.http_body_timeout_seconds`.
    RequestTimeout = "request_timeout", http 408, Abort;

    // Job failures, in a job's status and result.
    /// The source is not a JPEG, PNG, WebP or GIF.
    UnsupportedFormat = "unsupported_format", http 200, Abort;
    /// The source is truncated or corrupt.
    CorruptImage = "corrupt_image", http 200, Abort;
    /// The source is over a size limit, read from its header.
    ImageTooLarge = "image_too_large", http 200, Abort;
    /// The job's whole memory cost (source, decode, outputs, encoders), or its outputs'
    /// area, is more than the worker may ever hold; the message names the numbers.
    JobTooLarge = "job_too_large", http 200, Abort;
    /// The job ran longer than `limits.job_timeout_seconds`.
    JobTimeout = "job_timeout", http 200, Abort;
    /// The job's (or upload's) subject, asset or tenant was erased after the job was
    /// submitted or the upload began: it leaves nothing (what it wrote is removed).
    Erased = "erased", http 410, Abort;
    /// A message older than it may be acted on: a job submitted more than
    /// `jobs.retention_days` ago, or a request past its deadline. Not run.
    MessageExpired = "message_expired", http 200, Abort;
    /// No original under the job's source key in the region's store.
    SourceNotFound = "source_not_found", http 200, Abort;
    /// The region's store did not answer, after every retry and redelivery.
    StoreUnavailable = "store_unavailable", http 200, Retry;
    /// The region's store refused the operation (permissions, invalid request).
    StoreError = "store_error", http 200, Abort;
    /// An object key the store cannot take.
    InvalidKey = "invalid_key", http 200, Abort;
    /// An output could not be encoded.
    EncodeFailed = "encode_failed", http 200, Abort;
    /// An output could not be resized.
    ResizeFailed = "resize_failed", http 200, Abort;
    /// Residency: a job or an upload reached another region's worker or ingest endpoint;
    /// refused, never rerouted (the message names the tenant's regions).
    WrongRegion = "wrong_region", http 421, Abort;
    /// Residency: the job's tenant is not pinned to the region of the worker it reached.
    TenantNotInRegion = "tenant_not_in_region", http 200, Abort;
    /// A key of the job lies outside its tenant's area.
    KeyOutsideTenant = "key_outside_tenant", http 200, Abort;
    /// An output key of the job lies outside the outputs of its source's asset.
    KeyOutsideAsset = "key_outside_asset", http 200, Abort;
    /// The worker's image code panicked on this job; the worker goes on serving.
    InternalError = "internal_error", http 200, Abort;
    /// A message that could not be read (content type, schema version, JSON): dead-lettered.
    MalformedMessage = "malformed_message", http 200, Abort;
    /// A message between the scheduler and a region without a valid signature of the
    /// region's message key (unsigned, tampered, or an unknown key): dead-lettered or
    /// dropped, nothing written, nothing relayed.
    BadSignature = "bad_signature", http 200, Abort;
    /// The job was delivered more often than `limits.delivery_limit` without finishing: dead-lettered.
    DeliveryLimitReached = "delivery_limit_reached", http 200, Abort;
    /// A worker's report on a job the control plane did not route that way (unknown id,
    /// another region or tenant, outputs not asked for): counted, never relayed.
    ResultNotRouted = "result_not_routed", http 200, Abort;
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialise_as_their_strings_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), *code);
            assert!(seen.insert(code.as_str()), "{code} twice");
        }
    }

    #[test]
    fn only_outages_busy_slots_and_limits_that_lift_are_worth_trying_again() {
        let retried: Vec<&str> = ErrorCode::ALL
            .iter()
            .filter(|c| c.recovery() == Recovery::Retry)
            .map(|c| c.as_str())
            .collect();
        assert_eq!(
            retried,
            [
                "uploads_busy",
                "region_unavailable",
                "service_unavailable",
                "rate_limited",
                "quota_exceeded",
                "store_unavailable"
            ]
        );
    }
}
