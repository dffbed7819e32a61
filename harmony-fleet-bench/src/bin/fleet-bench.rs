//! `fleet-bench`: the scale benchmarks (see `BENCHMARKS.md`).

use clap::Parser;
use harmony_fleet_bench::cli::{self, BenchCli};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cli::init_tracing();
    cli::run(BenchCli::parse()).await?;
    Ok(())
}
