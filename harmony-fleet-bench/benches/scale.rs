//! `cargo bench -p harmony-fleet-bench [-- <bench> <flags>]`: the `fleet-bench` command line
//! (default `all`). The `--bench` flag cargo passes is dropped.

use clap::Parser;
use harmony_fleet_bench::cli::{self, BenchCli};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cli::init_tracing();
    let mut args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    if args.len() == 1 {
        args.push("all".to_owned());
    }
    cli::run(BenchCli::parse_from(args)).await?;
    Ok(())
}
