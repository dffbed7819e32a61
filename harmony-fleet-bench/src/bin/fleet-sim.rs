//! `fleet-sim`: N simulated devices speaking the fleet wire contract to a nats-server.

use clap::Parser;
use harmony_fleet_bench::cli::{self, SimCli};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cli::init_tracing();
    cli::run_sim(SimCli::parse()).await?;
    Ok(())
}
