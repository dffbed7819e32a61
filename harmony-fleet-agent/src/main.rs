//! `fleet-agent`: the device agent binary. Parses the command line, sets up logging, and hands
//! over to [`harmony_fleet_agent::Agent`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use harmony_fleet_agent::{Agent, Config};
use tokio_util::sync::CancellationToken;

/// The harmony fleet device agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Agent configuration file (TOML).
    #[arg(long, env = "FLEET_AGENT_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Print this device's public key (creating the key in the data dir on first use), to
    /// compare with the key an admin approves (`status.enrollment.requestedKey`).
    Identity,
    /// Validate a configuration file without connecting to anything.
    CheckConfig {
        /// The file to check (defaults to --config / FLEET_AGENT_CONFIG).
        path: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let identity_only = matches!(cli.command, Some(Command::Identity));
    let (path, check_only) = match cli.command {
        Some(Command::CheckConfig { path }) => (path.or(cli.config), true),
        Some(Command::Run | Command::Identity) | None => (cli.config, false),
    };
    let Some(path) = path else {
        eprintln!(
            "fleet-agent: no configuration file: pass --config PATH or set FLEET_AGENT_CONFIG"
        );
        return ExitCode::from(2);
    };
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("fleet-agent: {err}");
            return ExitCode::from(2);
        }
    };
    if identity_only {
        return print_identity(&config);
    }
    if check_only {
        println!("{}: ok (device {})", path.display(), config.agent.device_id);
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("fleet-agent: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        match Agent::new(config).run(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("fleet-agent: {err}");
                ExitCode::FAILURE
            }
        }
    });
    // Dropping the runtime would wait for every blocking task (a shell's terminal reader
    // blocks until its shell exits); the state is saved by now, so do not wait long.
    runtime.shutdown_timeout(SHUTDOWN_BLOCKING);
    code
}

/// How long blocking tasks (terminal readers, file writes) get once the agent has stopped.
const SHUTDOWN_BLOCKING: std::time::Duration = std::time::Duration::from_millis(200);

/// `fleet-agent identity`: the public key, and the credential held if any.
fn print_identity(config: &Config) -> ExitCode {
    let data_dir = &config.agent.data_dir;
    let key = match harmony_fleet_agent::identity::load_or_create_key(data_dir) {
        Ok(key) => key,
        Err(err) => {
            eprintln!("fleet-agent: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!("device:     {}", config.agent.device_id);
    println!("public key: {}", key.public_key());
    match harmony_fleet_agent::identity::load_credential(data_dir, &key) {
        Some(_) => println!(
            "credential: held ({})",
            data_dir
                .join(harmony_fleet_agent::identity::CREDENTIAL_FILE)
                .display()
        ),
        None => println!("credential: none yet (the agent enrolls on start)"),
    }
    ExitCode::SUCCESS
}

/// Cancel `shutdown` on SIGTERM or SIGINT.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the agent with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    shutdown.cancel();
}
