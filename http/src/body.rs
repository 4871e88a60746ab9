//! Request bodies a slow or oversized client cannot use to hold a server: a small body
//! (a job envelope, export options) is read whole, after the request was
//! authenticated, within a deadline and a size limit. (An upload's body is guarded by
//! the ingest endpoint: an idle timeout, a minimum rate, a total time.)

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use locality_proto::ErrorCode;

use crate::ApiError;

/// Reads a whole body of at most `limit` bytes within `deadline`.
pub async fn read_body(body: Body, limit: u64, deadline: Duration) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match tokio::time::timeout(deadline, limited.collect()).await {
        Err(_) => Err(ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the request body did not arrive within {} s",
                deadline.as_secs()
            ),
        )),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            ErrorCode::MessageTooLarge,
            format!("the request body is larger than {limit} bytes"),
        )),
        Ok(Err(err)) => Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("the request body could not be read: {err}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}
