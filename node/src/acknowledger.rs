//! The answers of one pipelined `PublishStream`, as plain state: the gRPC task queues each
//! request as it is submitted, says what became of it when asked, and sends what this
//! returns. Nothing here awaits, sends or knows about gRPC.
//!
//! Rules:
//! - Answers go out in request order: a request is acknowledged only after every request
//!   before it, whatever order their commits (and replications) finish in.
//! - Every request is answered exactly once: by its acknowledgement, or by the one failure
//!   that ends the stream — the first request, in request order, that failed. Nothing after
//!   that failure is answered or taken.
//! - One message carries at most `max_acks` acknowledgements, and never none: a message goes
//!   out only when the first request still unanswered has its outcome.

use std::collections::VecDeque;

/// What became of one request, as far as is known now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome<A, E> {
    /// Not committed (or, for `acks=all`, not replicated) yet.
    Waiting,
    /// Ready to acknowledge with `A`.
    Done(A),
    /// Failed: the stream ends with `E`.
    Failed(E),
}

/// One message for the publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply<A, E> {
    /// Acknowledgements, each with its request's sequence, in request order.
    Acks(Vec<(u64, A)>),
    /// The stream's last message.
    Failed(E),
}

/// The unanswered requests of one stream, oldest first.
#[derive(Debug)]
pub(crate) struct Acknowledger<T> {
    queue: VecDeque<(u64, T)>,
    max_acks: usize,
    /// A failure was answered: the stream is over.
    over: bool,
}

impl<T> Acknowledger<T> {
    /// An empty stream whose messages carry at most `max_acks` acknowledgements.
    pub(crate) fn new(max_acks: usize) -> Acknowledger<T> {
        Acknowledger {
            queue: VecDeque::new(),
            max_acks: max_acks.max(1),
            over: false,
        }
    }

    /// Queues request `sequence` behind the others (ignored once the stream is over).
    pub(crate) fn push(&mut self, sequence: u64, request: T) {
        if !self.over {
            self.queue.push_back((sequence, request));
        }
    }

    /// Requests queued and not answered.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when every queued request was answered.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// True once the failure that ends the stream was answered.
    pub(crate) fn is_over(&self) -> bool {
        self.over
    }

    /// The oldest unanswered request: the next answer waits for it.
    pub(crate) fn first(&mut self) -> Option<&mut T> {
        self.queue.front_mut().map(|(_, r)| r)
    }

    /// Answers from the front as far as `outcome` says the requests are finished: at most
    /// one message of acknowledgements, then the failure if the next request failed.
    pub(crate) fn answer<A, E>(
        &mut self,
        mut outcome: impl FnMut(&mut T) -> Outcome<A, E>,
    ) -> Vec<Reply<A, E>> {
        let mut acks = Vec::new();
        let mut failed = None;
        while acks.len() < self.max_acks && !self.over {
            let Some((sequence, request)) = self.queue.front_mut() else {
                break;
            };
            match outcome(request) {
                Outcome::Waiting => break,
                Outcome::Done(a) => acks.push((*sequence, a)),
                Outcome::Failed(e) => {
                    failed = Some(e);
                    self.over = true;
                    self.queue.clear();
                    break;
                }
            }
            self.queue.pop_front();
        }
        let mut replies = Vec::new();
        if !acks.is_empty() {
            replies.push(Reply::Acks(acks));
        }
        replies.extend(failed.map(Reply::Failed));
        replies
    }
}

#[cfg(test)]
mod tests;
