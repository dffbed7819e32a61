//! `harmony-fleet-operator`: `run` (default) or `gen-crd`.

use clap::Parser;
use harmony_fleet_operator::config::{Cli, Command, Config};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::GenCrd) => {
            print!("{}", harmony_fleet_operator::crd::crd_yaml()?);
            return Ok(());
        }
        Some(Command::Run(args)) => args,
        None => cli.run,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    harmony_fleet_operator::run(Config::try_from(args)?).await?;
    Ok(())
}
