//! `fleet-agent`: the device agent binary. Parses the command line, sets up logging, and hands
//! over to [`harmony_fleet_agent::Agent`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use harmony_fleet_agent::{Agent, Config, upgrade, version};
use tokio_util::sync::CancellationToken;

/// The harmony fleet device agent.
#[derive(Debug, Parser)]
#[command(name = "fleet-agent", version, about)]
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
    /// Load the configuration and print `fleet-agent <version>`: what a newly downloaded
    /// build must pass before it replaces the running one.
    SelfTest,
    /// Run by systemd before every start (`ExecStartPre`, as the previous binary): count the
    /// starts of a newly installed build and put the previous one back when it does not
    /// heartbeat in time. Always exits 0.
    UpgradeGuard,
}

/// Parses the command line; `--version` prints [`version::current`] (the stamped version).
fn parse() -> Cli {
    let version: &'static str = Box::leak(version::current().into_boxed_str());
    let matches = Cli::command().version(version).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
}

fn main() -> ExitCode {
    let cli = parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if matches!(cli.command, Some(Command::UpgradeGuard)) {
        return upgrade_guard(cli.config.as_deref());
    }
    let identity_only = matches!(cli.command, Some(Command::Identity));
    let self_test = matches!(cli.command, Some(Command::SelfTest));
    let (path, check_only) = match cli.command {
        Some(Command::CheckConfig { path }) => (path.or(cli.config), true),
        Some(Command::Run | Command::Identity | Command::SelfTest | Command::UpgradeGuard)
        | None => (cli.config, false),
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
    if self_test {
        println!("fleet-agent {}", version::current());
        return ExitCode::SUCCESS;
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
        match Agent::new(config)
            .with_config_path(path)
            .run(shutdown)
            .await
        {
            Ok(exit) => ExitCode::from(exit.code()),
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

/// `fleet-agent upgrade-guard`: never fails the start; says what it did on stderr.
fn upgrade_guard(config: Option<&std::path::Path>) -> ExitCode {
    let Some(path) = config else {
        eprintln!("fleet-agent upgrade-guard: no configuration file (--config); nothing to guard");
        return ExitCode::SUCCESS;
    };
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("fleet-agent upgrade-guard: {err}; nothing guarded");
            return ExitCode::SUCCESS;
        }
    };
    let data_dir = &config.agent.data_dir;
    match upgrade::guard::run(data_dir, upgrade::guard::now_unix()) {
        Ok(upgrade::guard::GuardAction::Nothing) => {
            eprintln!("fleet-agent upgrade-guard: no upgrade pending");
        }
        Ok(upgrade::guard::GuardAction::Counted(starts)) => eprintln!(
            "fleet-agent upgrade-guard: new agent build on probation, start {starts} of at most {}",
            upgrade::guard::MAX_STARTS
        ),
        Ok(upgrade::guard::GuardAction::Reverted(reason)) => {
            eprintln!("fleet-agent upgrade-guard: {reason}");
        }
        Err(err) => eprintln!("fleet-agent upgrade-guard: {err}; starting the agent anyway"),
    }
    ExitCode::SUCCESS
}

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
