//! `dash-aggregator`: tracing, config, run, wait for a signal, drain.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dash-aggregator",
    version,
    about = "Dash cloud aggregator: MQTT in, PostgreSQL exactly once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker link, ingest and HTTP endpoints until SIGTERM or Ctrl-C.
    Serve {
        /// TOML config file; DASH_* environment variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the default configuration as TOML.
    PrintDefaultConfig,
    /// Check a config file and exit.
    CheckConfig { file: PathBuf },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::PrintDefaultConfig => {
            print!("{}", dash_aggregator::config::default_toml());
            Ok(())
        }
        Command::CheckConfig { file } => {
            dash_aggregator::Config::load(Some(&file))?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Serve { config } => {
            init_tracing();
            let config = dash_aggregator::Config::load(config.as_deref())?;
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(dash_aggregator::run(config, shutdown_signal()))
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,rumqttd=warn,sqlx=warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
