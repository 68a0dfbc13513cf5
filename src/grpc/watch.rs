//! `WatchEnrollment`'s message stream: the current record (unless the caller has its revision),
//! each later change with a greater revision, a heartbeat after every quiet interval, and an
//! UNAVAILABLE `SERVER_DRAINING` end when the server drains (never OK).

use super::auth::Caller;
use super::policy::Rpc;
use super::{convert, status};
use crate::app::ports::ChangeStream;
use crate::app::{AppError, Source};
use crate::domain::EnrollmentRecord;
use crate::proto::v1::{WatchEnrollmentResponse, WatchHeartbeat, watch_enrollment_response};
use futures::{Stream, StreamExt as _};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;

/// What one watch holds while it is open.
pub struct Watch {
    /// The record read when the watch opened.
    pub current: EnrollmentRecord,
    /// Where it came from: the store, or the token list on this call (a card without a record).
    pub source: Source,
    /// Its later changes.
    pub changes: ChangeStream,
    /// The caller's `start_after_revision` (0: none).
    pub start_after: i64,
    /// `grpc.limits.watch_heartbeat_interval`.
    pub heartbeat: Duration,
    /// Cancelled when the server drains.
    pub drain: CancellationToken,
    /// Who watches: a card enrolled again under a program it may not see ends the watch.
    pub caller: Caller,
}

pin_project! {
    /// The stream of one watch, written out by hand (not `unfold` over an async block) so that
    /// an idle watch holds only this: its timer and its drain wait inline, the record read at
    /// the start boxed until it is sent.
    struct Messages {
        first: Option<Box<EnrollmentRecord>>,
        first_source: Source,
        changes: ChangeStream,
        // The revision of the latest enrollment sent (or the caller's start).
        last: i64,
        heartbeat: Duration,
        #[pin]
        next_beat: Sleep,
        #[pin]
        drained: WaitForCancellationFutureOwned,
        caller: Caller,
        ended: bool,
    }
}

/// A change (`Source::Store`: as written), or the first record (as read).
fn enrollment(record: &EnrollmentRecord, source: Source) -> WatchEnrollmentResponse {
    WatchEnrollmentResponse {
        event: Some(watch_enrollment_response::Event::Enrollment(
            convert::enrollment(record, source),
        )),
    }
}

fn heartbeat(revision: i64) -> WatchEnrollmentResponse {
    WatchEnrollmentResponse {
        event: Some(watch_enrollment_response::Event::Heartbeat(
            WatchHeartbeat {
                revision,
                send_time: Some(convert::timestamp(crate::domain::now_ms())),
            },
        )),
    }
}

impl Stream for Messages {
    type Item = Result<WatchEnrollmentResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        if let Some(first) = this.first.take() {
            // Without a start revision the current state is always sent (even one that was not
            // stored, revision 0); with one, only when newer.
            if *this.last == 0 || first.revision > *this.last {
                *this.last = (*this.last).max(first.revision);
                this.next_beat
                    .as_mut()
                    .reset(Instant::now() + *this.heartbeat);
                return Poll::Ready(Some(Ok(enrollment(&first, *this.first_source))));
            }
        }
        // In this order: a drain ends the stream before anything else is sent.
        if this.drained.poll(cx).is_ready() {
            *this.ended = true;
            return Poll::Ready(Some(Err(status::draining())));
        }
        loop {
            match this.changes.poll_next_unpin(cx) {
                // Revisions only grow: an older or repeated state (a re-read after a lag, a
                // write that changed nothing) is not sent again.
                Poll::Ready(Some(record)) if record.revision > *this.last => {
                    // The card was enrolled (again) under a program the watcher may not see:
                    // the watch ends there (PROGRAM_NOT_ALLOWED), as it would have been refused.
                    if let Err(denied) = this.caller.may_read(&record, Rpc::WatchEnrollment) {
                        *this.ended = true;
                        return Poll::Ready(Some(Err(denied)));
                    }
                    *this.last = record.revision;
                    this.next_beat
                        .as_mut()
                        .reset(Instant::now() + *this.heartbeat);
                    return Poll::Ready(Some(Ok(enrollment(&record, Source::Store))));
                }
                Poll::Ready(Some(_)) => continue,
                Poll::Ready(None) => {
                    *this.ended = true;
                    return Poll::Ready(Some(Err(status::to_status(&AppError::StoreUnavailable(
                        "the change feed ended; watch again with start_after_revision".into(),
                    )))));
                }
                Poll::Pending => break,
            }
        }
        if this.next_beat.as_mut().poll(cx).is_ready() {
            this.next_beat
                .as_mut()
                .reset(Instant::now() + *this.heartbeat);
            return Poll::Ready(Some(Ok(heartbeat(*this.last))));
        }
        Poll::Pending
    }
}

/// The messages of `watch`.
pub fn messages(
    watch: Watch,
) -> impl Stream<Item = Result<WatchEnrollmentResponse, Status>> + Send + 'static {
    Messages {
        first: Some(Box::new(watch.current)),
        first_source: watch.source,
        changes: watch.changes,
        last: watch.start_after,
        heartbeat: watch.heartbeat,
        next_beat: tokio::time::sleep(watch.heartbeat),
        drained: watch.drain.cancelled_owned(),
        caller: watch.caller,
        ended: false,
    }
}
