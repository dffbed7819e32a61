//! `harmony-fleet-operator`: `run` (default), `gen-crd` or `serve-web`.

use clap::Parser;
use harmony_fleet_operator::config::{Cli, Command, Config};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (args, log_json) = match cli.command {
        Some(Command::GenCrd) => {
            print!("{}", harmony_fleet_operator::crd::crd_yaml()?);
            return Ok(());
        }
        Some(Command::ServeWeb(args)) => (Err(args), false),
        Some(Command::Run(args)) => {
            let json = args.log_json;
            (Ok(args), json)
        }
        None => {
            let json = cli.run.log_json;
            (Ok(cli.run), json)
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    match args {
        Ok(run) => harmony_fleet_operator::run(Config::try_from(run)?).await?,
        Err(serve_web) => serve_web_command(serve_web).await?,
    }
    Ok(())
}

#[cfg(feature = "web-frontend")]
async fn serve_web_command(
    args: harmony_fleet_operator::config::ServeWebArgs,
) -> anyhow::Result<()> {
    harmony_fleet_operator::web::serve::serve_web(args).await?;
    Ok(())
}

#[cfg(not(feature = "web-frontend"))]
async fn serve_web_command(
    _args: harmony_fleet_operator::config::ServeWebArgs,
) -> anyhow::Result<()> {
    anyhow::bail!(
        "serve-web needs the dashboard: rebuild with `cargo build -p harmony-fleet-operator --features web-frontend`"
    )
}
