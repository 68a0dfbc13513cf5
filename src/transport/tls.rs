//! The listener's rustls configuration, rebuilt when its files change on disk (cert-manager
//! rotates a Secret in place): new handshakes get the new certificate, open connections keep
//! theirs. A change that cannot be loaded is logged and the last good configuration stays.

use super::TlsSettings;
use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why the TLS files could not be turned into a configuration. Names the file, never its bytes.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{setting} ({path}): {problem}")]
    File {
        /// The setting that names the file.
        setting: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// rustls refused the combination (e.g. the key does not match the certificate).
    #[error("grpc.tls: {0}")]
    Config(String),
}

fn file_error(setting: &'static str, path: &Path, problem: impl ToString) -> TlsError {
    TlsError::File {
        setting,
        path: path.display().to_string(),
        problem: problem.to_string(),
    }
}

/// The three files' contents, to notice a change.
#[derive(PartialEq, Eq)]
struct Snapshot(Vec<u8>);

fn snapshot(settings: &TlsSettings) -> Snapshot {
    let mut bytes = Vec::new();
    for path in [Some(&settings.cert_file), Some(&settings.key_file)]
        .into_iter()
        .chain([settings.client_ca_file.as_ref()])
        .flatten()
    {
        bytes.extend(crate::digest::sha256(
            &std::fs::read(path).unwrap_or_default(),
        ));
    }
    Snapshot(bytes)
}

/// Builds the server configuration from the files.
pub fn load(settings: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&settings.cert_file)
        .map_err(|e| file_error("grpc.tls.cert_file", &settings.cert_file, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error("grpc.tls.cert_file", &settings.cert_file, e))?;
    if certs.is_empty() {
        return Err(file_error(
            "grpc.tls.cert_file",
            &settings.cert_file,
            "no PEM certificate in it",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&settings.key_file)
        .map_err(|e| file_error("grpc.tls.key_file", &settings.key_file, e))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &settings.client_ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(path)
                .map_err(|e| file_error("grpc.tls.client_ca_file", path, e))?;
            for ca in cas {
                let ca = ca.map_err(|e| file_error("grpc.tls.client_ca_file", path, e))?;
                roots
                    .add(ca)
                    .map_err(|e| file_error("grpc.tls.client_ca_file", path, e))?;
            }
            if roots.is_empty() {
                return Err(file_error(
                    "grpc.tls.client_ca_file",
                    path,
                    "no PEM certificate in it",
                ));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(format!("cert_file and key_file: {e}")))?;
    // gRPC is HTTP/2 only; clients such as grpc-go insist on negotiating it.
    config.alpn_protocols = vec![b"h2".to_vec()];
    if settings.client_ca_file.is_some() {
        // No session resumption with client certificates: a resumed session carries the
        // certificate of the handshake it resumes without checking it again, so a client
        // whose certificate expired since would be let in. gRPC connections are long-lived:
        // a full handshake each costs little.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(config)
}

/// The current configuration, swapped atomically when the files change.
pub struct TlsReloader {
    current: ArcSwap<ServerConfig>,
    settings: TlsSettings,
}

impl TlsReloader {
    /// Loads the files once (an error stops the start) and polls them every
    /// `reload_interval` until `stop` is cancelled.
    pub fn start(settings: &TlsSettings, stop: CancellationToken) -> Result<Arc<Self>, TlsError> {
        // Taken before loading: a rotation that lands in between is then seen as a change.
        let mut seen = snapshot(settings);
        let config = load(settings)?;
        let reloader = Arc::new(Self {
            current: ArcSwap::from_pointee(config),
            settings: settings.clone(),
        });
        let poller = reloader.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(poller.settings.reload_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = snapshot(&poller.settings);
                if now == seen {
                    continue;
                }
                seen = now;
                poller.reload();
            }
        });
        Ok(reloader)
    }

    /// Rebuilds the configuration from the files now; keeps the old one if that fails.
    pub fn reload(&self) {
        match load(&self.settings) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                crate::metrics::tls_reload("ok");
                tracing::info!("grpc.tls files changed: new handshakes use them");
            }
            Err(e) => {
                crate::metrics::tls_reload("error");
                tracing::warn!(error = %e, "grpc.tls files changed but cannot be used; keeping the previous ones");
            }
        }
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }
}
