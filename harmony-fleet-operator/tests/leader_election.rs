//! Two operator replicas on one real control plane and one real nats-server, with leader
//! election: one writes, the standby stays warm and writes nothing, and it takes over when the
//! leader stops (Lease released) or dies (Lease left to expire).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use harmony::local::LocalNats;
use harmony_fleet_contracts::ids::DeviceId;
use harmony_fleet_contracts::notice;
use harmony_fleet_contracts::payload::{PodmanV0, ReconcileScore, Service};
use harmony_fleet_operator::OperatorHandle;
use harmony_fleet_operator::config::Config;
use harmony_fleet_operator::crd::Deployment;
use harmony_fleet_operator::http::Readiness;
use harmony_fleet_operator::kv::FleetKv;
use harmony_fleet_operator::leader::LeaderConfig;
use harmony_fleet_operator::metrics::Metrics;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/setup.rs"]
mod setup;
mod support;
use support::{eventually, kubeconfig};

struct Env {
    client: kube::Client,
    ns: String,
    tag: String,
    nats: LocalNats,
    nats_client: async_nats::Client,
    kv: FleetKv,
}

impl Env {
    async fn new() -> Result<Self> {
        let client = harmony::local::control_plane::client_from_kubeconfig(&kubeconfig()?).await?;
        let tag = setup::tag();
        let ns = format!("le-{tag}");
        setup::create_namespaces(&client, &[&ns]).await?;
        let (nats, nats_client, kv) = setup::fleet_nats().await?;
        Ok(Self {
            client,
            ns,
            tag,
            nats,
            nats_client,
            kv,
        })
    }

    /// A replica with leader election on, as `identity`; not waited for.
    async fn replica(&self, identity: &str) -> Result<OperatorHandle> {
        let mut config = Config::for_nats(self.nats.url());
        config.namespace = Some(self.ns.clone());
        config.leader = Some(LeaderConfig::new(&self.ns, identity));
        Ok(harmony_fleet_operator::start(
            config,
            self.client.clone(),
            self.nats_client.clone(),
            Metrics::new(),
            Readiness::default(),
        )
        .await?)
    }

    fn device(&self, n: u32) -> DeviceId {
        DeviceId::new(format!("d{}-{n}", self.tag)).expect("valid device id")
    }

    async fn apply(&self, name: &str, image: &str) -> Result<()> {
        let body = json!({
            "apiVersion": "fleet.nationtech.io/v1alpha1",
            "kind": "Deployment",
            "metadata": { "name": name },
            "spec": {
                "targetSelector": { "matchLabels": { "site": "plant-1" } },
                "score": serde_json::to_value(score(image))?,
            }
        });
        Api::<Deployment>::namespaced(self.client.clone(), &self.ns)
            .patch(
                name,
                &PatchParams::apply("leader-tests").force(),
                &Patch::Apply(&body),
            )
            .await?;
        Ok(())
    }

    /// This test's deployment keys and their bytes.
    async fn desired(&self) -> Result<BTreeMap<String, bytes::Bytes>> {
        let mut out = BTreeMap::new();
        let mut keys = self.kv.desired.keys().await?;
        let prefix = format!("d{}-", self.tag);
        while let Some(key) = keys.next().await {
            let key = key?;
            if key.starts_with(&prefix)
                && !notice::is_index_key(&key)
                && let Some(value) = self.kv.desired.get(&key).await?
            {
                out.insert(key, value);
            }
        }
        Ok(out)
    }

    /// Waits until every one of `devices` holds `image`'s bytes.
    async fn converged_on(&self, devices: usize, image: &str) -> Result<()> {
        let expected = score(image).to_canonical_json()?;
        eventually(&format!("{devices} keys holding {image}"), || async {
            let keys = self.desired().await.ok()?;
            (keys.len() == devices && keys.values().all(|v| v.as_ref() == expected.as_slice()))
                .then_some(())
        })
        .await
    }

    async fn holder(&self) -> Option<String> {
        Api::<Lease>::namespaced(self.client.clone(), &self.ns)
            .get_opt(LeaderConfig::DEFAULT_NAME)
            .await
            .ok()??
            .spec?
            .holder_identity
    }
}

fn score(image: &str) -> ReconcileScore {
    ReconcileScore::PodmanV0(PodmanV0::new(vec![Service::new("web", image)]))
}

fn leads(op: &OperatorHandle) -> bool {
    op.metrics.leader.get() == 1
}

async fn ready(op: &OperatorHandle, what: &str) -> Result<()> {
    let readiness = op.readiness.clone();
    eventually(what, || async { readiness.is_converged().then_some(()) }).await
}

/// Replica a elected, replica b a warm standby, three devices at `plant-1` and a Deployment
/// of `nginx:1` converged on them.
async fn two_replicas_serving_three_devices()
-> Result<(Env, OperatorHandle, OperatorHandle, String)> {
    let env = Env::new().await?;
    let a = env.replica("replica-a").await?;
    ready(&a, "replica a converged").await?;
    eventually("replica a elected", || async { leads(&a).then_some(()) }).await?;
    let b = env.replica("replica-b").await?;
    ready(&b, "replica b warm (standby)").await?;
    assert!(!leads(&b));
    assert_eq!(env.holder().await.as_deref(), Some("replica-a"));
    for n in 1..=3 {
        fleet::put_device(&env.kv, &env.device(n), "plant-1").await?;
    }
    let name = format!("web-{}", env.tag);
    env.apply(&name, "nginx:1").await?;
    env.converged_on(3, "nginx:1").await?;
    Ok((env, a, b, name))
}

#[tokio::test]
async fn the_standby_writes_nothing_and_takes_over_at_once_when_the_leader_stops() -> Result<()> {
    let (env, a, b, name) = two_replicas_serving_three_devices().await?;
    // One writer: three keys and three indexes, all by the leader.
    eventually("the leader's six writes", || async {
        (a.metrics.kv_writes_ok() == 6).then_some(())
    })
    .await?;
    assert_eq!(b.metrics.kv_writes_ok(), 0, "the standby wrote");
    assert!(
        !b.metrics
            .encode()
            .contains("status_patches_total{kind=\"deployment\",result=\"ok\"}"),
        "the standby patched a status"
    );

    // The leader stops (a rolling update): it releases the Lease once it writes no more.
    let stopped = Instant::now();
    a.shutdown().await;
    eventually("replica b elected", || async { leads(&b).then_some(()) }).await?;
    let handover = stopped.elapsed();
    assert_eq!(env.holder().await.as_deref(), Some("replica-b"));
    // The takeover rewrote nothing; the change that follows is written once.
    let before = b.metrics.kv_writes_ok();
    assert_eq!(before, 0, "the takeover rewrote what the leader wrote");
    let applied = Instant::now();
    env.apply(&name, "nginx:2").await?;
    env.converged_on(3, "nginx:2").await?;
    let converged = applied.elapsed();
    eventually("the new leader's six writes", || async {
        (b.metrics.kv_writes_ok() == 6).then_some(())
    })
    .await?;
    println!(
        "stopped leader → standby elected: {} ms; apply → 3 keys on the new revision: {} ms",
        handover.as_millis(),
        converged.as_millis()
    );
    Ok(())
}

#[tokio::test]
async fn a_killed_leader_is_replaced_when_its_lease_expires() -> Result<()> {
    let (env, a, b, name) = two_replicas_serving_three_devices().await?;

    // Killed: every task stops at once, the Lease is left to expire (10 s).
    let killed = Instant::now();
    drop(a);
    env.apply(&name, "nginx:2").await?;
    let lease = LeaderConfig::new(&env.ns, "x").lease_duration;
    let expected = score("nginx:2").to_canonical_json()?;
    let deadline = killed + lease * 2;
    loop {
        let keys = env.desired().await?;
        if keys.len() == 3 && keys.values().all(|v| v.as_ref() == expected.as_slice()) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the change did not converge within twice the lease ({:?}) after the leader died",
            lease * 2
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failover = killed.elapsed();
    assert!(leads(&b));
    assert_eq!(env.holder().await.as_deref(), Some("replica-b"));
    println!(
        "killed leader → change converged by the standby: {} ms (lease {} s)",
        failover.as_millis(),
        lease.as_secs()
    );
    drop(b);
    Ok(())
}

#[tokio::test]
async fn leader_election_flags_default_to_the_pod_and_a_ten_second_lease() -> Result<()> {
    use clap::Parser;
    let cli = harmony_fleet_operator::config::Cli::try_parse_from([
        "harmony-fleet-operator",
        "--leader-elect",
        "--leader-elect-namespace",
        "fleet-system",
        "--leader-elect-identity",
        "op-0",
    ])?;
    let config = Config::try_from(cli.run)?;
    let leader = config.leader.context("leader election on")?;
    assert_eq!(
        (
            leader.namespace.as_str(),
            leader.identity.as_str(),
            leader.name.as_str()
        ),
        ("fleet-system", "op-0", "harmony-fleet-operator")
    );
    assert_eq!(leader.lease_duration, Duration::from_secs(10));
    assert_eq!(leader.renew_deadline, Duration::from_secs(7));
    assert_eq!(leader.retry_period, Duration::from_secs(1));
    Ok(())
}
