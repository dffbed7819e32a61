//! What a test binary that runs the operator against its own nats-server sets up: a unique
//! tag for its names, namespaces, and a fresh nats-server with the fleet buckets. Included with
//! `#[path]` where used.

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Result;
use harmony::local::{LocalNats, NatsOptions};
use harmony_fleet_operator::kv::FleetKv;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde_json::json;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A suffix no other test of this run uses: the process id and a counter, in hex.
pub fn tag() -> String {
    format!(
        "{:x}{:x}",
        std::process::id() & 0xffff,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates the namespaces `names`.
pub async fn create_namespaces(client: &kube::Client, names: &[&str]) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    for name in names {
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}}))?,
        )
        .await?;
    }
    Ok(())
}

/// A nats-server of this test alone, an admin client, and the fleet buckets created.
pub async fn fleet_nats() -> Result<(LocalNats, async_nats::Client, FleetKv)> {
    let nats = LocalNats::start(NatsOptions::default()).await?;
    let client = async_nats::connect(nats.url()).await?;
    let kv = FleetKv::open(client.clone(), true).await?;
    Ok((nats, client, kv))
}
