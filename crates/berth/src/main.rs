//! The `berth` command line: parses arguments, loads configuration, sets up logging and
//! runs one subcommand. All behaviour lives in the library crates.

use berth::config::{Config, LogFormat};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// berth: a private OCI container registry and pull-through cache in one binary.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry server.
    ///
    /// Without --config, berth runs its embedded default configuration: a filesystem
    /// store in ./berth-data and a listener on 127.0.0.1:5000.
    Serve {
        /// Path of the TOML configuration file (see docs/config.md).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the embedded default configuration, a starting point for your own file.
    DefaultConfig,
    /// Check a configuration file and exit: 0 when valid, 1 with the reason when not.
    CheckConfig {
        /// Path of the TOML configuration file.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: finishing in-flight requests");
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::DefaultConfig => {
            print!("{}", berth::config::DEFAULT_TOML);
            Ok(())
        }
        Command::CheckConfig { config } => {
            Config::load(Some(&config))?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Serve { config } => {
            let config = Config::load(config.as_deref())?;
            init_logging(config.log.format);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(berth::run_server(&config, shutdown_signal()))
        }
    }
}
