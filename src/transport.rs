//! The gRPC listeners' transport: TLS (mutual TLS when a client CA is set) with certificates
//! reloaded from disk, the caller identity read from the client certificate, and the bounds on
//! how long a new connection may take to become useful.

mod accept;
mod conn;
mod identity;
mod settings;
mod tls;

pub use accept::{AcceptLimits, incoming};
pub use conn::{Conn, Peer};
pub use identity::identity_of;
pub use settings::TlsSettings;
pub use tls::{TlsError, TlsReloader};
