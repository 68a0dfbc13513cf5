//! `c2p-enroll`: the command line. Settings → logging → the subcommand.

use c2p_enroll::config::{self, Settings};
use c2p_enroll::run::{self, SandboxArgs};
use c2p_enroll::telemetry;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Run the Mastercard simulator alone (not Mastercard), its keys in a directory.
    Sandbox {
        /// Key directory: its keys are used, or fresh ones are written there, with a
        /// `service.env` for a service in mastercard mode.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8089")]
        listen: SocketAddr,
        /// A CMS file (default: the sample with cards 70001-70004).
        #[arg(long, value_name = "FILE")]
        cms: Option<PathBuf>,
        /// A faults file (TOML: `[routes.searches] latency = "200ms"`, `[notifications] ...`).
        #[arg(long, value_name = "FILE")]
        faults: Option<PathBuf>,
        /// Where TAR/TCN notifications go: the service's gRPC URL, e.g. http://127.0.0.1:50051.
        #[arg(long, value_name = "URL")]
        notify: Option<String>,
        /// Encrypt Processing payloads (`{"encryptedValue": JWE}`).
        #[arg(long)]
        payload_encryption: bool,
    },
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
    // The OTLP exporter is built on the runtime; its last spans are flushed before exit.
    let telemetry = {
        let _guard = runtime.enter();
        telemetry::init(&settings.log)
    };
    let code = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime.block_on(run::serve(settings)),
        Command::Sandbox {
            dir,
            listen,
            cms,
            faults,
            notify,
            payload_encryption,
        } => runtime.block_on(run::sandbox(SandboxArgs {
            dir,
            listen,
            cms,
            faults,
            notify,
            payload_encryption,
        })),
    };
    {
        let _guard = runtime.enter();
        telemetry.shutdown();
    }
    code
}
