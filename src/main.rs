//! `c2p-enroll`: the command line. Settings → logging → serve until SIGTERM/SIGINT → drain.

use c2p_enroll::config::{self, Mode, Settings};
use c2p_enroll::mastercard::setup::Upstream;
use c2p_enroll::{server, telemetry};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    version,
    about = "Enables a PAN-less issuer's cards for Mastercard Click to Pay"
)]
struct Cli {
    /// A TOML settings file; `C2P_*` environment variables override it.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC API (the default).
    Serve,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref(), config::env_pairs()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("c2p-enroll: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("c2p-enroll: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime.block_on(serve(settings)),
    }
}

async fn serve(settings: Settings) -> ExitCode {
    let upstream = match settings.mode {
        Mode::Sandbox => {
            tracing::warn!(
                "SANDBOX MODE: this is not Mastercard; no Mastercard API is called and nothing is enrolled for real"
            );
            None
        }
        Mode::Mastercard => {
            // Keys are read once, here; a bad one stops the service before it listens.
            match Upstream::from_settings(&settings.mastercard, &settings.programs) {
                Ok(upstream) => {
                    tracing::info!("mastercard mode: keys loaded");
                    Some(Arc::new(upstream))
                }
                Err(e) => {
                    eprintln!("c2p-enroll: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    if settings.redis.url.is_none() {
        tracing::warn!(
            "redis.url is empty: using the in-memory store (state is lost on exit and not shared between replicas)"
        );
    }
    let running = match server::start(&settings, upstream).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let signal = shutdown_signal().await;
    tracing::info!(signal, grace_period = ?settings.shutdown.grace_period, "draining");
    let outcome = running.shutdown().await;
    tracing::info!(?outcome, "stopped");
    ExitCode::SUCCESS
}

/// Waits for SIGTERM (Kubernetes) or SIGINT (Ctrl-C) and names the one received.
async fn shutdown_signal() -> &'static str {
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
