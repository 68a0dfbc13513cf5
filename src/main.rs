//! `c2p-enroll`: the command line. Settings → logging → the subcommand.

use c2p_enroll::config::{self, Settings};
use c2p_enroll::run::{self, SandboxArgs};
use c2p_enroll::telemetry;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod bench;

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
    Sandbox(SandboxArgs),
    /// Write a development CA, a localhost server certificate, two client certificates and
    /// an `mtls.toml` settings file that turns on mutual TLS with them.
    DevCerts(c2p_enroll::devcerts::DevCertsArgs),
    /// Load-test a running service over gRPC (loopback only): one RPC or a mix, closed or
    /// open loop; throughput, latency percentiles, errors by code, the service's CPU and RSS.
    Bench(Box<bench::BenchArgs>),
}

fn main() -> ExitCode {
    // One TLS implementation for every rustls user in the process, before any is built.
    c2p_enroll::install_crypto_provider();
    let cli = Cli::parse();
    // Tokio reads this variable itself when it builds a runtime, and panics on a bad value.
    if let Err(problem) = worker_threads_from_env() {
        eprintln!("c2p-enroll: {problem}");
        return ExitCode::from(2);
    }
    if let Some(Command::DevCerts(args)) = &cli.command {
        return c2p_enroll::devcerts::run(args);
    }
    // The load generator reads no settings: it is a client of a service configured elsewhere.
    if let Some(Command::Bench(args)) = &cli.command {
        return bench::run(args);
    }
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
        Command::Sandbox(args) => runtime.block_on(run::sandbox(args)),
        Command::DevCerts(_) | Command::Bench(_) => ExitCode::SUCCESS,
    };
    {
        let _guard = runtime.enter();
        telemetry.shutdown();
    }
    code
}

/// `TOKIO_WORKER_THREADS`, which Tokio reads (the async workers, default one per core), checked
/// as Tokio checks it, so that a bad value is named instead of panicking the runtime's builder.
fn worker_threads_from_env() -> Result<(), String> {
    const NAME: &str = "TOKIO_WORKER_THREADS";
    match std::env::var(NAME) {
        Err(std::env::VarError::NotPresent) => Ok(()),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{NAME} is not valid UTF-8")),
        Ok(value) => match value.parse::<usize>() {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(format!(
                "{NAME} must be a positive number of async workers, not {:?}",
                value.chars().take(32).collect::<String>()
            )),
        },
    }
}
