//! Why a job or a request did not succeed: a stable code and a sentence. Whether
//! trying again could help is the code's [`Recovery`].

use locality_proto::{ErrorCode, JobOutcome, Recovery};

use crate::store::StoreError;

#[derive(Debug, Clone)]
pub struct Failure {
    pub outcome: JobOutcome,
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub fn failed(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            outcome: JobOutcome::Failed,
            code,
            message: message.into(),
        }
    }

    pub fn refused(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            outcome: JobOutcome::Refused,
            code,
            message: message.into(),
        }
    }

    pub fn recovery(&self) -> Recovery {
        self.code.recovery()
    }
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        let code = match &err {
            StoreError::NotFound { .. } => ErrorCode::SourceNotFound,
            StoreError::InvalidKey { .. } => ErrorCode::InvalidKey,
            _ if err.is_transient() => ErrorCode::StoreUnavailable,
            _ => ErrorCode::StoreError,
        };
        Self::failed(code, err.to_string())
    }
}

impl From<crate::seam::TransportError> for Failure {
    /// The way to report is gone: the request is tried again on another delivery.
    fn from(err: crate::seam::TransportError) -> Self {
        Self::failed(
            ErrorCode::StoreUnavailable,
            format!("could not report: {err}"),
        )
    }
}
