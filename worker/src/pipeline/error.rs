//! Why an image could not be processed. Every variant but `Cancelled` is permanent:
//! retrying the same bytes gives the same answer, so the job fails at once with this
//! reason.

use locality_proto::{ErrorCode, ImageFormat};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    #[error("unsupported source format: {detail}")]
    UnsupportedFormat { detail: String },
    #[error("source image too large: {detail}")]
    TooLarge { detail: String },
    #[error("corrupt or truncated {format} image: {detail}")]
    Corrupt {
        format: &'static str,
        detail: String,
    },
    #[error("could not encode {format:?} output: {detail}")]
    Encode { format: ImageFormat, detail: String },
    #[error("could not resize: {detail}")]
    Resize { detail: String },
    /// The job's time ran out; the work stopped at its next step.
    #[error("stopped: the job's time ran out")]
    Cancelled,
}

impl PipelineError {
    /// Stable machine-readable code for job results.
    pub fn code(&self) -> ErrorCode {
        match self {
            PipelineError::UnsupportedFormat { .. } => ErrorCode::UnsupportedFormat,
            PipelineError::TooLarge { .. } => ErrorCode::ImageTooLarge,
            PipelineError::Corrupt { .. } => ErrorCode::CorruptImage,
            PipelineError::Encode { .. } => ErrorCode::EncodeFailed,
            PipelineError::Resize { .. } => ErrorCode::ResizeFailed,
            PipelineError::Cancelled => ErrorCode::JobTimeout,
        }
    }

    pub(crate) fn corrupt(format: &'static str, detail: impl ToString) -> Self {
        PipelineError::Corrupt {
            format,
            detail: detail.to_string(),
        }
    }
}
