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
