//! Fleet simulator and scale benchmarks of harmony fleet, against real servers: a real
//! nats-server (`harmony::local::LocalNats`), a real kube-apiserver (`LocalControlPlane`), the
//! operator's own code in a child process, the agent's own watch code and the real release
//! `fleet-agent` binary. Nothing here is a mock; numbers come from `/proc` and the servers.
//!
//! | module | holds |
//! |---|---|
//! | [`sim`] | the fleet simulator: N devices speaking the wire contract over shared connections |
//! | [`scale`] | the scale runs: Deployments → keys → states → status, operator cost, cold start |
//! | [`consumers`] | the consumer wall: one real agent KV watch (JetStream consumer) per device |
//! | `dashboard` | (feature `dashboard`) the dashboard's server time with 100k devices in its view |
//! | `apply_latency` | (feature `stack`) `kubectl apply` → answering → status on the e2e stack, next to a bare `podman run` |
//! | [`notify`] | the alternative to a consumer per device: change notices + KV direct get |
//! | [`writes`] | the write budget: heartbeats of a large fleet and the server's headroom |
//! | [`footprint`] | the real `fleet-agent` release binary: size and idle memory |
//! | [`operator`] | the operator run as a child process (`fleet-bench operator`), measured |
//! | [`procstat`] | pure: CPU seconds and memory of a process from `/proc` |
//! | [`stats`] | pure: percentiles |
//! | [`report`], [`plot`] | tables, CSV and the PNG latency plot |
//! | [`cli`] | the `fleet-bench` and `fleet-sim` command lines |
//! | [`error`] | the error type |

#[cfg(feature = "stack")]
pub mod apply_latency;
pub mod cli;
pub mod consumers;
#[cfg(feature = "dashboard")]
pub mod dashboard;
pub mod enroll;
pub mod error;
pub mod footprint;
pub mod notify;
pub mod operator;
pub mod plot;
pub mod procstat;
pub mod reconciler;
pub mod reconnect;
pub mod report;
pub mod scale;
pub mod servers;
pub mod sim;
pub mod stats;
pub mod writes;

pub use error::{Error, Result};

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `probe` every `every` until it returns `Some`, or fails after `deadline` naming what
/// was awaited (no sleeps as synchronisation: a deadline and a reason).
pub async fn poll_until<T, F, Fut>(
    what: &str,
    deadline: Duration,
    every: Duration,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                after: deadline,
            });
        }
        tokio::time::sleep(every).await;
    }
}
