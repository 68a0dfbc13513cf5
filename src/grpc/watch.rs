//! `WatchEnrollment`'s message stream: the current record (unless the caller has its revision),
//! each later change with a greater revision, a heartbeat after every quiet interval, and an
//! UNAVAILABLE `SERVER_DRAINING` end when the server drains (never OK).

use super::{convert, status};
use crate::app::ports::ChangeStream;
use crate::app::{AppError, Source};
use crate::domain::EnrollmentRecord;
use crate::proto::v1::{WatchEnrollmentResponse, WatchHeartbeat, watch_enrollment_response};
use futures::{Stream, StreamExt as _};
use std::pin::Pin;
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// What one watch holds while it is open.
pub struct Watch {
    /// The record read when the watch opened.
    pub current: EnrollmentRecord,
    /// Its later changes.
    pub changes: ChangeStream,
    /// The caller's `start_after_revision` (0: none).
    pub start_after: i64,
    /// `grpc.limits.watch_heartbeat_interval`.
    pub heartbeat: Duration,
    /// Cancelled when the server drains.
    pub drain: CancellationToken,
}

struct State {
    first: Option<EnrollmentRecord>,
    changes: ChangeStream,
    /// The revision of the latest enrollment sent (or the caller's start).
    last: i64,
    heartbeat: Duration,
    next_beat: Pin<Box<Sleep>>,
    drain: CancellationToken,
    ended: bool,
}

fn enrollment(record: &EnrollmentRecord) -> WatchEnrollmentResponse {
    WatchEnrollmentResponse {
        event: Some(watch_enrollment_response::Event::Enrollment(
            convert::enrollment(record, Source::Store),
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

impl State {
    fn beat_later(&mut self) {
        self.next_beat
            .as_mut()
            .reset(Instant::now() + self.heartbeat);
    }

    async fn next(&mut self) -> Option<Result<WatchEnrollmentResponse, Status>> {
        if self.ended {
            return None;
        }
        if let Some(first) = self.first.take() {
            // Without a start revision the current state is always sent (even one that was not
            // stored, revision 0); with one, only when newer.
            if self.last == 0 || first.revision > self.last {
                self.last = self.last.max(first.revision);
                self.beat_later();
                return Some(Ok(enrollment(&first)));
            }
        }
        loop {
            tokio::select! {
                biased;
                _ = self.drain.cancelled() => {
                    self.ended = true;
                    return Some(Err(status::draining()));
                }
                item = self.changes.next() => match item {
                    // Revisions only grow: an older or repeated state (a re-read after a lag,
                    // a write that changed nothing) is not sent again.
                    Some(record) if record.revision > self.last => {
                        self.last = record.revision;
                        self.beat_later();
                        return Some(Ok(enrollment(&record)));
                    }
                    Some(_) => continue,
                    None => {
                        self.ended = true;
                        return Some(Err(status::to_status(&AppError::StoreUnavailable(
                            "the change feed ended; watch again with start_after_revision".into(),
                        ))));
                    }
                },
                _ = self.next_beat.as_mut() => {
                    self.beat_later();
                    return Some(Ok(heartbeat(self.last)));
                }
            }
        }
    }
}

/// The messages of `watch`.
pub fn messages(
    watch: Watch,
) -> impl Stream<Item = Result<WatchEnrollmentResponse, Status>> + Send + 'static {
    let state = State {
        first: Some(watch.current),
        changes: watch.changes,
        last: watch.start_after,
        heartbeat: watch.heartbeat,
        next_beat: Box::pin(tokio::time::sleep(watch.heartbeat)),
        drain: watch.drain,
        ended: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        state.next().await.map(|item| (item, state))
    })
}
