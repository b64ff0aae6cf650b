//! The one place where node domain errors become gRPC statuses.
//!
//! The match is exhaustive with no `_` arm on purpose: a new `LogError` variant must be given
//! a status code deliberately, not fall into a default.

use tonic::Status;

use crate::log::LogError;
use crate::replication::PublishRefused;

impl From<LogError> for Status {
    fn from(e: LogError) -> Status {
        let msg = e.to_string();
        match e {
            LogError::NotFound { .. } => Status::not_found(msg),
            LogError::BelowRetention { .. } => Status::out_of_range(msg),
            LogError::EmptyBatch => Status::invalid_argument(msg),
            LogError::Fenced { .. } => Status::failed_precondition(msg),
            // Replication's own bookkeeping: a replica and its primary disagree.
            LogError::OutOfSequence { .. }
            | LogError::EpochRegression { .. }
            | LogError::WouldHideVisible { .. }
            | LogError::SkipBackwards { .. } => Status::failed_precondition(msg),
            // Retrying cannot help: the producer must resend the missing batches first.
            LogError::SequenceGap { .. } => Status::failed_precondition(msg),
            LogError::DuplicateNotRetained { .. } => Status::already_exists(msg),
            LogError::DiskFull { .. } => Status::resource_exhausted(msg),
            LogError::Closed | LogError::CommitterStopped => Status::unavailable(msg),
            LogError::Storage { .. }
            | LogError::Corrupt { .. }
            | LogError::Inconsistent { .. }
            | LogError::Missing { .. } => Status::internal(msg),
        }
    }
}

impl From<PublishRefused> for Status {
    fn from(e: PublishRefused) -> Status {
        let msg = e.to_string();
        match e {
            // Go elsewhere: the mapping names another primary, or none.
            PublishRefused::NotPrimary { .. } | PublishRefused::Unmapped { .. } => {
                Status::failed_precondition(msg)
            }
            // Retry here shortly: the claim or the first mapping snapshot is on its way.
            PublishRefused::NotYetPrimary { .. } | PublishRefused::MappingUnknown { .. } => {
                Status::unavailable(msg)
            }
        }
    }
}
