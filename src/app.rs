//! The use cases: enroll a card, read its status, take in notifications, watch a card, and
//! after the enrollment remove it, read and change the cardholder's Click to Pay profile, opt
//! the cardholder out and back in. The app knows nothing of tonic or reqwest: it speaks domain
//! types, the store port and the Mastercard ports.

mod canonical;
mod enroll;
mod error;
mod fingerprint;
mod lifecycle;
mod lifecycle_check;
mod lock_guard;
mod notifications;
mod opt_out;
pub mod ports;
mod profile;
mod reconcile;
mod remove;
mod status;
mod watch;

pub use enroll::{ConsumerInput, EnrollCommand, Enrolled};
pub use error::{AppError, ErrorParts, FieldViolation, Reason, Step};
pub use fingerprint::FingerprintKey;
pub use lifecycle::CheckedProgram;
pub use notifications::IngestOutcome;
pub use opt_out::{OptedOut, Withdrawal};
pub use reconcile::ReconcileReport;
pub use remove::{CardRemoved, RemoveCommand};
pub use status::Source;

use ports::EnrollmentStore;
use std::sync::Arc;
use std::time::Duration;

/// Settings the use cases need.
#[derive(Debug, Clone)]
pub struct AppSettings {
    /// Enrollment records' retention.
    pub enrollment_ttl: Duration,
    /// Retention of a NOT_ENROLLED answer rebuilt from Mastercard.
    pub not_enrolled_ttl: Duration,
    /// Idempotency lease.
    pub lease: Duration,
    /// The key of the idempotency fingerprints (and of the consumer references).
    pub fingerprint_key: FingerprintKey,
    /// How often the reconciler asks Click to Pay whether it still holds an ENROLLED card;
    /// `None`: never (only `GetEnrollmentStatus` with `refresh` asks).
    pub lifecycle_check_interval: Option<Duration>,
}

/// The application: the store and the Mastercard clients.
pub struct App {
    store: Arc<dyn EnrollmentStore>,
    upstream: Arc<dyn ports::Mastercard>,
    settings: AppSettings,
    instance: String,
    /// Watches reading their record at once: [`WATCH_READS_AT_ONCE`].
    watch_reads: tokio::sync::Semaphore,
}

/// The most watches reading their first record at once; more wait their turn. This many keep
/// Redis busy (the reads are pipelined), while each read in flight holds about a kilobyte of
/// state, which after a burst is freed but not returned to the system.
const WATCH_READS_AT_ONCE: usize = 64;

impl App {
    /// The use cases over `store` and `upstream`.
    pub fn new(
        store: Arc<dyn EnrollmentStore>,
        upstream: Arc<dyn ports::Mastercard>,
        settings: AppSettings,
    ) -> Self {
        Self {
            store,
            upstream,
            settings,
            instance: uuid::Uuid::new_v4().to_string(),
            watch_reads: tokio::sync::Semaphore::new(WATCH_READS_AT_ONCE),
        }
    }

    /// Whether `name` is a configured program (empty = the default).
    pub fn has_program(&self, name: &str) -> bool {
        self.upstream.has_program(name)
    }
}

/// Whether the caller's deadline has passed (or will before anything useful can be done).
fn past(deadline: Option<tokio::time::Instant>) -> bool {
    deadline.is_some_and(|d| tokio::time::Instant::now() + Duration::from_millis(20) >= d)
}

#[cfg(test)]
pub(crate) mod tests;
