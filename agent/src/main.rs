//! `dash-agent`: tracing, config, run, wait for a signal, drain.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dash-agent",
    version,
    about = "Dash edge agent: collect, buffer durably, forward exactly once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: dash_runtime::logging::LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Collect from devices and forward to the aggregator until SIGTERM or Ctrl-C.
    Run {
        /// TOML config file; DASH_* environment variables override it.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print a commented default configuration.
    PrintDefaultConfig,
    /// Check a config file and exit.
    CheckConfig { file: PathBuf },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::PrintDefaultConfig => {
            print!("{}", dash_agent::config::default_toml());
            Ok(())
        }
        Command::CheckConfig { file } => match dash_agent::Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                Ok(())
            }
            Err(e) => {
                eprintln!("{}: not valid:", file.display());
                for line in format!("{e:#}").lines() {
                    eprintln!("  - {line}");
                }
                std::process::exit(1);
            }
        },
        Command::Run { config } => {
            dash_runtime::logging::init(cli.log.log_format, "info");
            let config = dash_agent::Config::load(&config)?;
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
            dash_runtime::panics::install(Some(dash_agent::crashes::record_path(&config.data_dir)));
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            runtime.block_on(dash_agent::run(config, shutdown_signal()))
        }
    }
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
