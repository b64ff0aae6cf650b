//! The one place where node domain errors become gRPC statuses.
//!
//! Every match is exhaustive with no `_` arm on purpose: a new variant must be given a status
//! code deliberately, not fall into a default.

use ec_core::DataId;
use tonic::Status;

use crate::log::{Appended, LogError};
use crate::replication::{NotReplicated, PublishRefused, SessionRefused};

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

impl From<SessionRefused> for Status {
    fn from(e: SessionRefused) -> Status {
        match e {
            // The replica asked the wrong node or epoch, or claims what it was never sent:
            // it must look for the primary again (or be repaired), not retry here.
            SessionRefused::NotPrimary { .. }
            | SessionRefused::WrongEpoch { .. }
            | SessionRefused::NotAMember { .. }
            | SessionRefused::BeyondEnd { .. } => Status::failed_precondition(e.to_string()),
            // The primary's own log failed: its status, not the replica's fault.
            SessionRefused::Log(e) => Status::from(e),
        }
    }
}

/// An `acks=all` publish that was not acknowledged, with what its status message names.
pub(super) struct NotAcknowledged<'a> {
    pub(super) data_id: &'a DataId,
    pub(super) appended: &'a Appended,
    /// This node, the primary that stored the events.
    pub(super) primary: &'a str,
    pub(super) why: NotReplicated,
}

impl From<NotAcknowledged<'_>> for Status {
    fn from(e: NotAcknowledged<'_>) -> Status {
        let NotAcknowledged {
            data_id,
            appended: a,
            primary,
            why,
        } = e;
        match why {
            NotReplicated::TimedOut(waited) => Status::deadline_exceeded(format!(
                "offsets {}..={} of data ID {data_id} are durable on primary {primary} but not yet on every in-sync replica after {}ms (node.replication.ack_timeout); they may still appear later, or be lost if this primary fails first — do not assume either",
                a.first,
                a.last,
                waited.as_millis()
            )),
            NotReplicated::Replaced => Status::aborted(format!(
                "offsets {}..={} of data ID {data_id} were not kept: node {primary} stopped being the primary before its in-sync replicas stored them, and the new primary's events took those offsets; publish them again to the primary",
                a.first, a.last
            )),
            NotReplicated::NotEnoughInSync { in_sync, required } => Status::unavailable(format!(
                "offsets {}..={} of data ID {data_id} are durable on primary {primary} but not acknowledged: acks=all needs {required} nodes in sync (node.replication.min_insync) and only [{}] are; they may still reach the replicas, or be lost if this primary fails — retry once a replica has caught up, or publish with acks=leader",
                a.first,
                a.last,
                NotReplicated::describe_in_sync(&in_sync)
            )),
            NotReplicated::Log(e) => Status::from(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use ec_core::NodeId;
    use tonic::Code;

    use super::*;

    #[test]
    fn a_refused_session_is_the_replicas_problem_a_log_failure_is_ours() {
        let me = NodeId::parse("n1").expect("valid");
        let data_id = DataId::parse("d").expect("valid");
        let refused = SessionRefused::NotPrimary { me, data_id };
        assert_eq!(Status::from(refused).code(), Code::FailedPrecondition);
        // Before, every session error was FAILED_PRECONDITION, so a replica read a primary
        // whose log had closed as "look for another primary".
        let closed = SessionRefused::Log(LogError::Closed);
        assert_eq!(Status::from(closed).code(), Code::Unavailable);
    }
}
