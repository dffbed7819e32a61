//! The NATS servers a scale run talks to: one nats-server, or a cluster of them joined by
//! routes with the fleet buckets replicated on three (issue 20 part 6: how the fleet outgrows
//! one server). Simulated connections are spread over the members round-robin, as a fleet's
//! agents given every member's URL would spread (async-nats picks one at random).

use harmony::local::{LocalNats, LocalNatsCluster};

use crate::error::{Error, Result};

/// One server or a cluster.
#[derive(Debug)]
pub enum NatsServers {
    /// A single nats-server; buckets with one replica.
    One(Box<LocalNats>),
    /// `n ≥ 3` servers; buckets with three replicas.
    Cluster(LocalNatsCluster),
}

impl NatsServers {
    /// Starts `servers` nats-servers (1, or at least 3) with the storage `devices` need each.
    pub async fn start(servers: usize, devices: usize) -> Result<Self> {
        let options = crate::sim::nats_options(devices);
        match servers {
            1 => Ok(Self::One(Box::new(LocalNats::start(options).await?))),
            n if n >= 3 => Ok(Self::Cluster(LocalNatsCluster::start(n, options).await?)),
            n => Err(Error::Config(format!(
                "--nats-servers {n}: give 1, or 3 or more (JetStream replicates on a quorum)"
            ))),
        }
    }

    /// Every member's client URL, comma separated (what the operator's `--nats-url` takes).
    pub fn urls(&self) -> String {
        match self {
            Self::One(nats) => nats.url(),
            Self::Cluster(cluster) => cluster.urls().join(","),
        }
    }

    /// The first member's URL (for the bench's own client).
    pub fn first_url(&self) -> String {
        match self {
            Self::One(nats) => nats.url(),
            Self::Cluster(cluster) => cluster.urls().into_iter().next().unwrap_or_default(),
        }
    }

    /// Replicas of the fleet buckets: 3 on a cluster.
    pub fn replicas(&self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Cluster(_) => 3,
        }
    }

    /// How many servers.
    pub fn count(&self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Cluster(cluster) => cluster.nodes().len(),
        }
    }

    /// Process ids of the running members.
    pub fn pids(&self) -> Vec<u32> {
        match self {
            Self::One(nats) => nats.pid().into_iter().collect(),
            Self::Cluster(cluster) => cluster.nodes().iter().filter_map(LocalNats::pid).collect(),
        }
    }
}

/// The URL connection `k` of a simulated fleet uses, out of a comma-separated list
/// (round-robin, so each member serves the same share of the devices).
pub fn url_for_connection(urls: &str, k: usize) -> &str {
    let members: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    match members.len() {
        0 => urls,
        n => members[k % n],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_spread_over_the_members() {
        let urls = "nats://127.0.0.1:1,nats://127.0.0.1:2, nats://127.0.0.1:3";
        let picked: Vec<&str> = (0..4).map(|k| url_for_connection(urls, k)).collect();
        assert_eq!(
            picked,
            [
                "nats://127.0.0.1:1",
                "nats://127.0.0.1:2",
                "nats://127.0.0.1:3",
                "nats://127.0.0.1:1"
            ]
        );
        assert_eq!(url_for_connection("nats://one:4222", 7), "nats://one:4222");
    }
}
