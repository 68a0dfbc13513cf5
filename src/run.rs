//! What the two subcommands do: `serve` (the service, with an in-process simulator in sandbox
//! mode) and `sandbox` (the simulator alone, its keys in a directory).

use crate::config::{Mode, Settings};
use crate::mastercard::setup::Upstream;
use crate::sandbox::cms::Cms;
use crate::sandbox::faults::Faults;
use crate::sandbox::keys::{SandboxKeys, files};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::server;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// `c2p-enroll serve`: until SIGTERM/SIGINT, then drain.
pub async fn serve(settings: Settings) -> ExitCode {
    if settings.redis.url.is_none() {
        tracing::warn!(
            "redis.url is empty: using the in-memory store (state is lost on exit and not shared between replicas)"
        );
    }
    // Sandbox mode keeps its simulator alive for as long as the service runs.
    let (upstream, sandbox) = match settings.mode {
        Mode::Sandbox => match embedded_sandbox(&settings).await {
            Ok((upstream, sandbox)) => (upstream, Some(sandbox)),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the simulator");
                return ExitCode::FAILURE;
            }
        },
        Mode::Mastercard => {
            // Keys are read once, here; a bad one stops the service before it listens.
            match Upstream::from_settings(&settings.mastercard, &settings.programs) {
                Ok(upstream) => {
                    tracing::info!("mastercard mode: keys loaded");
                    (Arc::new(upstream), None)
                }
                Err(e) => {
                    eprintln!("c2p-enroll: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let running = match server::start(&settings, upstream).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    if let Some(sandbox) = &sandbox {
        let target = format!("http://{}", loopback_of(running.local_addr()));
        if let Err(e) = sandbox.set_notification_target(&target) {
            tracing::warn!(error = %e, "simulator cannot notify the service");
        }
        // Behind a mesh the gateway's identity arrives in the header: the simulator sends the
        // one the policy grants NotificationIngest.
        if settings.auth.identity == crate::config::IdentitySource::MeshHeader
            && let Some(gateway) = settings
                .auth
                .callers
                .values()
                .find(|c| c.rpcs.contains(&crate::config::Rpc::NotificationIngest))
        {
            sandbox.set_notification_identity(&settings.auth.mesh_header, &gateway.identity);
        }
        if settings.grpc.tls.is_some() {
            tracing::warn!(
                "the simulator notifies over plaintext gRPC: with grpc.tls on, TAR/TCN notifications do not reach the service"
            );
        }
    }
    let signal = shutdown_signal().await;
    tracing::info!(signal, grace_period = ?settings.shutdown.grace_period, "draining");
    let outcome = running.shutdown().await;
    drop(sandbox);
    tracing::info!(?outcome, "stopped");
    ExitCode::SUCCESS
}

async fn embedded_sandbox(settings: &Settings) -> Result<(Arc<Upstream>, Sandbox), String> {
    let keys = SandboxKeys::generate().map_err(|e| e.to_string())?;
    let mut config = SandboxConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), keys)?;
    config.payload_encryption = settings.mastercard.processing.payload_encryption_enabled;
    let sandbox = Sandbox::start(config).await.map_err(|e| e.to_string())?;
    let upstream = sandbox
        .upstream(&settings.mastercard)
        .map_err(|e| e.to_string())?;
    tracing::warn!(
        simulator = %sandbox.addr(),
        "SANDBOX MODE: Mastercard calls go to the in-process simulator, not to Mastercard; nothing is enrolled for real"
    );
    Ok((Arc::new(upstream), sandbox))
}

/// A loopback address for a listen address (`0.0.0.0:50051` → `127.0.0.1:50051`).
fn loopback_of(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// `c2p-enroll sandbox` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// Key directory: its keys are used, or fresh ones are written there, with a
    /// `service.env` for a service in mastercard mode.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,
    /// A CMS file (default: the sample with cards 70001-70004).
    #[arg(long, value_name = "FILE")]
    pub cms: Option<PathBuf>,
    /// A faults file (TOML: `[routes.searches] latency = "200ms"`, `[notifications] ...`).
    #[arg(long, value_name = "FILE")]
    pub faults: Option<PathBuf>,
    /// Where TAR/TCN notifications go: the service's gRPC URL, e.g. http://127.0.0.1:50051.
    #[arg(long, value_name = "URL")]
    pub notify: Option<String>,
    /// Encrypt Processing payloads (`{"encryptedValue": JWE}`).
    #[arg(long)]
    pub payload_encryption: bool,
}

/// `c2p-enroll sandbox`: the simulator alone, until SIGTERM/SIGINT.
pub async fn sandbox(args: SandboxArgs) -> ExitCode {
    match run_sandbox(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("c2p-enroll sandbox: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_sandbox(args: SandboxArgs) -> Result<(), String> {
    let keys = SandboxKeys::load_or_create(&args.dir).map_err(|e| e.to_string())?;
    let mut config = SandboxConfig::new(args.listen, keys)?;
    if let Some(path) = &args.cms {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        config.cms = Cms::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.faults {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        config.faults = Faults::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    config.notification_target = args.notify.clone();
    config.payload_encryption = args.payload_encryption;
    let sandbox = Sandbox::start(config).await.map_err(|e| e.to_string())?;
    let fingerprint_key = args.dir.join(files::FINGERPRINT_KEY);
    if !fingerprint_key.is_file() {
        crate::secret_file::write_private(&fingerprint_key, &rand::random::<[u8; 32]>())
            .map_err(|e| format!("{}: {e}", fingerprint_key.display()))?;
    }
    let env_file = args.dir.join(files::SERVICE_ENV);
    std::fs::write(
        &env_file,
        service_env(&sandbox, &args.dir, args.payload_encryption),
    )
    .map_err(|e| format!("{}: {e}", env_file.display()))?;
    tracing::warn!(
        addr = %sandbox.addr(),
        keys = %args.dir.display(),
        service_env = %env_file.display(),
        "Mastercard SIMULATOR running alone (not Mastercard); configure a service with the service.env file"
    );
    shutdown_signal().await;
    Ok(())
}

/// The `C2P_*` settings of a service in mastercard mode that talks to this simulator.
fn service_env(sandbox: &Sandbox, dir: &Path, payload_encryption: bool) -> String {
    let keys = sandbox.keys();
    let path = |name: &str| dir.join(name).display().to_string();
    let mut lines = vec![
        "C2P_MODE=mastercard".to_owned(),
        format!(
            "C2P_MASTERCARD__PROCESSING__BASE_URL={}",
            sandbox.processing_base_url()
        ),
        format!(
            "C2P_MASTERCARD__PROCESSING__CONSUMER_KEY={}",
            keys.processing_consumer_key
        ),
        format!(
            "C2P_MASTERCARD__PROCESSING__SIGNING_KEY_FILE={}",
            path(files::PROCESSING_SIGNING_KEY)
        ),
        format!(
            "C2P_MASTERCARD__ENROLL__BASE_URL={}",
            sandbox.enroll_base_url()
        ),
        format!(
            "C2P_MASTERCARD__ENROLL__CONSUMER_KEY={}",
            keys.enroll_consumer_key
        ),
        format!(
            "C2P_MASTERCARD__ENROLL__SIGNING_KEY_FILE={}",
            path(files::ENROLL_SIGNING_KEY)
        ),
        format!(
            "C2P_ENROLL__FINGERPRINT_KEY_FILE={}",
            path(files::FINGERPRINT_KEY)
        ),
        format!(
            "C2P_PROGRAMS__DEFAULT__SRC_CLIENT_ID={}",
            keys.program.src_client_id
        ),
        format!(
            "C2P_PROGRAMS__DEFAULT__SERVICE_ID={}",
            keys.program.service_id
        ),
        format!(
            "C2P_PROGRAMS__DEFAULT__ENROLL_ENCRYPTION_CERTIFICATE_FILE={}",
            path(files::ENROLL_ENCRYPTION_CERT)
        ),
        // The same program, its cards managed through the simulator's Credential Directory.
        format!(
            "C2P_PROGRAMS__DIRECTORY__SRC_CLIENT_ID={}",
            keys.program.src_client_id
        ),
        format!(
            "C2P_PROGRAMS__DIRECTORY__SERVICE_ID={}",
            keys.program.service_id
        ),
        format!(
            "C2P_PROGRAMS__DIRECTORY__ENROLL_ENCRYPTION_CERTIFICATE_FILE={}",
            path(files::ENROLL_ENCRYPTION_CERT)
        ),
        "C2P_PROGRAMS__DIRECTORY__LIFECYCLE=credential_directory".to_owned(),
        format!(
            "C2P_PROGRAMS__DIRECTORY__DIRECTORY_ID={}",
            crate::sandbox::DIRECTORY_ID
        ),
    ];
    if payload_encryption {
        lines.push("C2P_MASTERCARD__PROCESSING__PAYLOAD_ENCRYPTION__ENABLED=true".into());
        lines.push(format!(
            "C2P_MASTERCARD__PROCESSING__PAYLOAD_ENCRYPTION__ENCRYPTION_CERTIFICATE_FILE={}",
            path(files::MASTERCARD_PAYLOAD_CERT)
        ));
        lines.push(format!(
            "C2P_MASTERCARD__PROCESSING__PAYLOAD_ENCRYPTION__DECRYPTION_KEY_FILE={}",
            path(files::CLIENT_PAYLOAD_KEY)
        ));
    }
    lines.join("\n") + "\n"
}

/// Waits for SIGTERM (Kubernetes) or SIGINT (Ctrl-C) and names the one received.
pub async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the service");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
