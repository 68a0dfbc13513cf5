//! The TLS settings of the gRPC listener, in the transport's words: the config layer fills
//! them in from `grpc.tls.*`.

use std::path::PathBuf;
use std::time::Duration;

/// `grpc.tls.*`: the listener's certificate, and the client CA that turns on mutual TLS.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// `grpc.tls.cert_file`: the server certificate chain (PEM).
    pub cert_file: PathBuf,
    /// `grpc.tls.key_file`: its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// `grpc.tls.client_ca_file`: CA certificates (PEM); when set, every client must present a
    /// certificate they signed.
    pub client_ca_file: Option<PathBuf>,
    /// `grpc.tls.reload_interval`: how often the files are checked for changes.
    pub reload_interval: Duration,
}
