//! Integration tests of the operator against a real kube-apiserver (`LocalControlPlane`) and
//! real nats-servers (`LocalNats`). Devices are simulated by writing `device-info`,
//! `device-state` and `device-heartbeat` from the test, exactly as agents would.
//!
//! The control plane is started once per test binary (on its own thread, so it outlives each
//! test's runtime) with the CRDs installed. Each test gets its own namespace, its own
//! nats-server, its own namespace-scoped operator and unique device and deployment names.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use harmony::local::LocalNats;
use harmony_fleet_contracts::buckets::OPERATOR_STORE;
use harmony_fleet_contracts::commands::{CommandReply, ExecRequest, PingReply};
use harmony_fleet_contracts::device::{AgentVersion, DeviceInfo, Inventory};
use harmony_fleet_contracts::ids::DeviceId;
use harmony_fleet_contracts::notice::{self, DesiredIndex};
use harmony_fleet_contracts::payload::{PodmanV0, ReconcileScore, Service};
use harmony_fleet_contracts::state::{DeploymentState, Phase};
use harmony_fleet_contracts::{ContentHash, keys};
use harmony_fleet_operator::OperatorHandle;
use harmony_fleet_operator::aggregate::Report;
use harmony_fleet_operator::commands::{CommandError, CommandsClient};
use harmony_fleet_operator::config::Config;
use harmony_fleet_operator::crd::{self, Deployment, Device};
use harmony_fleet_operator::http::Readiness;
use harmony_fleet_operator::kv::operator_store::REPORTS_OBJECT;
use harmony_fleet_operator::kv::{FleetKv, ReportsSnapshot, snapshot};
use harmony_fleet_operator::metrics::Metrics;
use jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

#[path = "support/setup.rs"]
mod setup;
mod support;
use support::{eventually, kubeconfig};

// ----- shared control plane -----

// ----- per-test environment -----

struct Env {
    client: kube::Client,
    ns: String,
    tag: String,
    nats: LocalNats,
    nats_client: async_nats::Client,
    kv: FleetKv,
    operator: Option<OperatorHandle>,
}

impl Env {
    async fn new() -> Result<Self> {
        let kubeconfig = kubeconfig()?;
        let client = harmony::local::control_plane::client_from_kubeconfig(&kubeconfig).await?;
        let tag = setup::tag();
        let ns = format!("op-{tag}");
        setup::create_namespaces(&client, &[&ns]).await?;
        let (nats, nats_client, kv) = setup::fleet_nats().await?;
        let mut env = Self {
            client,
            ns,
            tag,
            nats,
            nats_client,
            kv,
            operator: None,
        };
        env.start_operator().await?;
        Ok(env)
    }

    async fn start_operator(&mut self) -> Result<()> {
        self.operator = None;
        let mut config = Config::for_nats(self.nats.url());
        config.namespace = Some(self.ns.clone());
        config.heartbeat_timeout = Duration::from_secs(3);
        config.last_seen.wanted = Duration::from_secs(1);
        let handle = harmony_fleet_operator::start(
            config,
            self.client.clone(),
            self.nats_client.clone(),
            Metrics::new(),
            Readiness::default(),
        )
        .await?;
        let readiness = handle.readiness.clone();
        self.operator = Some(handle);
        eventually("operator converged", || async {
            readiness.is_converged().then_some(())
        })
        .await
    }

    /// `devices` labelled `x=y`, and Deployment `name` (nginx:1) selecting them.
    async fn targeted(&self, devices: &[&DeviceId], name: &str) -> Result<()> {
        for device in devices {
            self.put_info(device, &[("x", "y")]).await?;
        }
        self.apply(deployment(
            name,
            json!({"matchLabels": {"x": "y"}}),
            "nginx:1",
            json!({}),
        ))
        .await?;
        Ok(())
    }

    fn metrics(&self) -> &Metrics {
        &self.operator.as_ref().expect("operator running").metrics
    }

    fn device(&self, n: u32) -> DeviceId {
        DeviceId::new(format!("d{}-{n}", self.tag)).expect("valid device id")
    }

    fn deployment_name(&self, base: &str) -> String {
        format!("{base}-{}", self.tag)
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn put_info(&self, device: &DeviceId, labels: &[(&str, &str)]) -> Result<()> {
        let info = DeviceInfo {
            device_id: device.clone(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            inventory: Inventory {
                hostname: device.to_string(),
                arch: "aarch64".into(),
                os: "linux".into(),
                os_release: None,
                kernel_version: None,
                cpu_count: 4,
                memory_bytes: 8 << 30,
            },
            agent_version: AgentVersion::new("0.1.0")?,
            boot_time: None,
            observed_at: Timestamp::now(),
        };
        self.kv
            .info
            .put(keys::info_key(device), serde_json::to_vec(&info)?.into())
            .await?;
        Ok(())
    }

    async fn put_state(
        &self,
        device: &DeviceId,
        deployment: &str,
        phase: Phase,
        hash: &ContentHash,
        error: Option<&str>,
    ) -> Result<()> {
        let mut state = DeploymentState::new(phase, Timestamp::now());
        state.payload_hash = Some(*hash);
        if let Some(e) = error {
            state.set_last_error(e);
        }
        let key = keys::state_key(device, &deployment.parse()?);
        self.kv
            .state
            .put(key, serde_json::to_vec(&state)?.into())
            .await?;
        Ok(())
    }

    /// Waits until `key` is present in `desired-state` (or absent, with `present = false`).
    async fn wait_key(&self, key: &str, present: bool) -> Result<()> {
        let what = format!(
            "desired-state key {key} {}",
            if present { "written" } else { "removed" }
        );
        eventually(&what, || async {
            (self.desired().await.ok()?.contains_key(key) == present).then_some(())
        })
        .await
    }

    /// Every `desired-state` key of this test's devices, with its value.
    async fn desired(&self) -> Result<BTreeMap<String, bytes::Bytes>> {
        let mut out = BTreeMap::new();
        let mut keys = self.kv.desired.keys().await?;
        let prefix = format!("d{}-", self.tag);
        while let Some(key) = keys.next().await {
            let key = key?;
            // Only deployment keys; the per-device indexes are checked on their own.
            if !key.starts_with(&prefix) || notice::is_index_key(&key) {
                continue;
            }
            if let Some(value) = self.kv.desired.get(&key).await? {
                out.insert(key, value);
            }
        }
        Ok(out)
    }

    async fn apply(&self, body: Value) -> Result<Deployment> {
        let name = body["metadata"]["name"]
            .as_str()
            .context("metadata.name")?
            .to_owned();
        let mut body = body;
        body["apiVersion"] = json!("fleet.nationtech.io/v1alpha1");
        body["kind"] = json!("Deployment");
        Ok(self
            .deployments()
            .patch(
                &name,
                &PatchParams::apply("operator-tests").force(),
                &Patch::Apply(&body),
            )
            .await?)
    }

    async fn status(&self, name: &str) -> Option<crd::DeploymentStatus> {
        self.deployments().get(name).await.ok()?.status
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.operator = None;
    }
}

fn score(image: &str) -> ReconcileScore {
    ReconcileScore::PodmanV0(PodmanV0::new(vec![Service::new("web", image)]))
}

fn deployment(name: &str, selector: Value, image: &str, rollout: Value) -> Value {
    json!({
        "metadata": { "name": name },
        "spec": {
            "targetSelector": selector,
            "score": serde_json::to_value(score(image)).expect("score serialises"),
            "rollout": rollout,
        }
    })
}

fn key(device: &DeviceId, deployment: &str) -> String {
    format!("{device}.{deployment}")
}

fn condition(status: &crd::DeploymentStatus, kind: &str) -> Option<(String, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

// ----- tests -----

#[tokio::test]
async fn applied_deployment_writes_keys_for_exactly_the_matching_devices() -> Result<()> {
    let env = Env::new().await?;
    let (a, b, c) = (env.device(1), env.device(2), env.device(3));
    env.put_info(&a, &[("site", "plant-3")]).await?;
    env.put_info(&b, &[("site", "plant-4")]).await?;
    env.put_info(&c, &[("site", "plant-3"), ("ring", "canary")])
        .await?;
    let mut notices = env
        .nats_client
        .subscribe(notice::notify_subject(&a))
        .await?;
    env.nats_client.flush().await?;
    let name = env.deployment_name("web");
    env.apply(deployment(
        &name,
        json!({"matchLabels": {"site": "plant-3"}}),
        "nginx:1",
        json!({}),
    ))
    .await?;
    let expected = score("nginx:1").to_canonical_json()?;
    // The device is told, after its index names the new key with the payload's hash.
    tokio::time::timeout(Duration::from_secs(30), notices.next())
        .await
        .context("a change notice for the first device within 30 s")?
        .context("notice subscription open")?;
    let index = env
        .kv
        .desired
        .get(notice::index_key(&a))
        .await?
        .context("index written before the notice")?;
    let index = DesiredIndex::from_bytes(&index)?;
    assert_eq!(
        index.deployments.get(name.as_str()),
        Some(&ContentHash::of_bytes(&expected))
    );
    let keys = eventually("keys of the two plant-3 devices", || async {
        let keys = env.desired().await.ok()?;
        (keys.len() == 2).then_some(keys)
    })
    .await?;
    assert_eq!(
        keys.keys().cloned().collect::<Vec<_>>(),
        vec![key(&a, &name), key(&c, &name)]
    );
    for value in keys.values() {
        assert_eq!(value.as_ref(), expected.as_slice(), "canonical bytes");
    }
    // The finalizer is in place.
    let d = env.deployments().get(&name).await?;
    assert!(
        d.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == crd::FINALIZER)
    );
    Ok(())
}

#[tokio::test]
async fn relabelled_device_moves_its_keys() -> Result<()> {
    let env = Env::new().await?;
    let a = env.device(1);
    env.put_info(&a, &[("site", "plant-3")]).await?;
    let p3 = env.deployment_name("p3");
    let p4 = env.deployment_name("p4");
    env.apply(deployment(
        &p3,
        json!({"matchLabels": {"site": "plant-3"}}),
        "nginx:1",
        json!({}),
    ))
    .await?;
    env.apply(deployment(
        &p4,
        json!({"matchExpressions": [{"key": "site", "operator": "In", "values": ["plant-4"]}]}),
        "nginx:1",
        json!({}),
    ))
    .await?;
    eventually("key of p3", || async {
        let keys = env.desired().await.ok()?;
        (keys.keys().collect::<Vec<_>>() == vec![&key(&a, &p3)]).then_some(())
    })
    .await?;
    env.put_info(&a, &[("site", "plant-4")]).await?;
    eventually("key moved to p4", || async {
        let keys = env.desired().await.ok()?;
        (keys.keys().collect::<Vec<_>>() == vec![&key(&a, &p4)]).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn deleted_deployment_releases_its_keys_and_finalizer() -> Result<()> {
    let env = Env::new().await?;
    let (a, b) = (env.device(1), env.device(2));
    env.put_info(&a, &[]).await?;
    env.put_info(&b, &[]).await?;
    let name = env.deployment_name("gone");
    env.apply(deployment(&name, json!({}), "nginx:1", json!({})))
        .await?;
    eventually("keys of both devices", || async {
        (env.desired().await.ok()?.len() == 2).then_some(())
    })
    .await?;
    eventually("finalizer added", || async {
        let d = env.deployments().get(&name).await.ok()?;
        d.metadata
            .finalizers?
            .iter()
            .any(|f| f == crd::FINALIZER)
            .then_some(())
    })
    .await?;
    env.deployments()
        .delete(&name, &DeleteParams::default())
        .await?;
    eventually("resource gone", || async {
        env.deployments()
            .get_opt(&name)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    assert!(
        env.desired().await?.is_empty(),
        "keys deleted before the finalizer was released"
    );
    Ok(())
}

#[tokio::test]
async fn device_states_roll_up_into_status_and_conditions() -> Result<()> {
    let env = Env::new().await?;
    let devices: Vec<DeviceId> = (1..=3).map(|n| env.device(n)).collect();
    for d in &devices {
        env.put_info(d, &[("app", "web")]).await?;
    }
    let name = env.deployment_name("agg");
    env.apply(deployment(
        &name,
        json!({"matchLabels": {"app": "web"}}),
        "nginx:1",
        json!({}),
    ))
    .await?;
    let hash = score("nginx:1").content_hash()?;
    eventually("matched 3 pending 3", || async {
        let s = env.status(&name).await?;
        (s.aggregate.matched_device_count == 3 && s.aggregate.pending == 3).then_some(())
    })
    .await?;
    env.put_state(&devices[0], &name, Phase::Running, &hash, None)
        .await?;
    env.put_state(&devices[1], &name, Phase::Running, &hash, None)
        .await?;
    env.put_state(
        &devices[2],
        &name,
        Phase::Failed,
        &hash,
        Some("image pull failed"),
    )
    .await?;
    let status = eventually("2 succeeded, 1 failed", || async {
        let s = env.status(&name).await?;
        (s.aggregate.succeeded == 2 && s.aggregate.failed == 1).then_some(s)
    })
    .await?;
    assert_eq!(status.aggregate.pending, 0);
    assert_eq!(
        status.aggregate.last_error.as_deref(),
        Some(format!("{}: image pull failed", devices[2]).as_str())
    );
    assert_eq!(status.failing_devices.len(), 1);
    assert_eq!(
        condition(&status, "Degraded"),
        Some(("True".into(), "DevicesFailing".into()))
    );
    assert_eq!(
        condition(&status, "Ready").map(|c| c.0),
        Some("False".into())
    );
    // Default policy: the first failure pauses the rollout.
    assert_eq!(
        condition(&status, "Paused"),
        Some(("True".into(), "FailureCriteriaExceeded".into()))
    );
    assert!(status.observed_generation.is_some());

    env.put_state(&devices[2], &name, Phase::Running, &hash, None)
        .await?;
    // A new revision is not blocked by the paused one; once all succeed it is Ready.
    env.apply(deployment(
        &name,
        json!({"matchLabels": {"app": "web"}}),
        "nginx:2",
        json!({}),
    ))
    .await?;
    let hash2 = score("nginx:2").content_hash()?;
    eventually("keys at nginx:2", || async {
        let keys = env.desired().await.ok()?;
        let want = score("nginx:2").to_canonical_json().ok()?;
        keys.values()
            .all(|v| v.as_ref() == want.as_slice())
            .then_some(())
    })
    .await?;
    for d in &devices {
        env.put_state(d, &name, Phase::Running, &hash2, None)
            .await?;
    }
    let status = eventually("Ready", || async {
        let s = env.status(&name).await?;
        (condition(&s, "Ready")?.0 == "True").then_some(s)
    })
    .await?;
    assert_eq!(
        condition(&status, "Progressing").map(|c| c.0),
        Some("False".into())
    );
    assert_eq!(
        condition(&status, "Degraded").map(|c| c.0),
        Some("False".into())
    );
    assert_eq!(
        status.rollout.map(|r| r.phase),
        Some(crd::deployment::RolloutPhase::Complete)
    );
    Ok(())
}

/// Installs revision 1 on `n` devices (all succeed), then applies revision 2 with `rollout`.
async fn upgraded(
    env: &Env,
    name: &str,
    n: u32,
    rollout: Value,
) -> Result<(Vec<DeviceId>, ContentHash, ContentHash)> {
    let devices: Vec<DeviceId> = (1..=n).map(|i| env.device(i)).collect();
    for d in &devices {
        env.put_info(d, &[("app", "batch")]).await?;
    }
    env.apply(deployment(
        name,
        json!({"matchLabels": {"app": "batch"}}),
        "app:1",
        rollout.clone(),
    ))
    .await?;
    let v1 = score("app:1").content_hash()?;
    eventually("v1 everywhere", || async {
        (env.desired().await.ok()?.len() == n as usize).then_some(())
    })
    .await?;
    for d in &devices {
        env.put_state(d, name, Phase::Running, &v1, None).await?;
    }
    eventually("v1 complete", || async {
        let s = env.status(name).await?;
        (s.rollout?.phase == crd::deployment::RolloutPhase::Complete).then_some(())
    })
    .await?;
    env.apply(deployment(
        name,
        json!({"matchLabels": {"app": "batch"}}),
        "app:2",
        rollout,
    ))
    .await?;
    Ok((devices, v1, score("app:2").content_hash()?))
}

async fn holding(env: &Env, bytes: &[u8]) -> Result<Vec<String>> {
    Ok(env
        .desired()
        .await?
        .into_iter()
        .filter(|(_, v)| v.as_ref() == bytes)
        .map(|(k, _)| k)
        .collect())
}

#[tokio::test]
async fn batches_pause_past_the_failure_criteria() -> Result<()> {
    let env = Env::new().await?;
    let name = env.deployment_name("pause");
    let rollout = json!({
        "strategy": "Batches",
        "batches": [{"count": 2}, {"percent": 50}],
        "minCompleted": 2,
        "maxFailedPercent": 40,
    });
    let (_, _, v2) = upgraded(&env, &name, 6, rollout).await?;
    let v2_bytes = score("app:2").to_canonical_json()?;
    let first = eventually("first batch of 2 on v2", || async {
        let keys = holding(&env, &v2_bytes).await.ok()?;
        (keys.len() == 2).then_some(keys)
    })
    .await?;
    // One succeeds, one fails: 50% > 40% once 2 completed.
    let devices: Vec<DeviceId> = first
        .iter()
        .map(|k| k.split('.').next().expect("device").parse().expect("id"))
        .collect();
    env.put_state(&devices[0], &name, Phase::Running, &v2, None)
        .await?;
    env.put_state(&devices[1], &name, Phase::Failed, &v2, Some("crash loop"))
        .await?;
    let status = eventually("Paused", || async {
        let s = env.status(&name).await?;
        (condition(&s, "Paused")?.0 == "True").then_some(s)
    })
    .await?;
    let rollout = status.rollout.context("rollout status")?;
    assert_eq!(rollout.phase, crd::deployment::RolloutPhase::Paused);
    assert!(
        rollout
            .reason
            .unwrap_or_default()
            .contains("maxFailedPercent 40%")
    );
    // Nothing more was released: the pausing step ran before the status was written.
    assert_eq!(rollout.updated, 2);
    assert_eq!(holding(&env, &v2_bytes).await?.len(), 2);
    // `kubectl describe fleetdep` tells the story as Events on the Deployment.
    let reasons = eventually("the rollout's Events", || async {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(env.client.clone(), &env.ns);
        let list = events
            .list(&kube::api::ListParams::default().fields(&format!("regarding.name={name}")))
            .await
            .ok()?;
        let reasons: Vec<(String, String)> = list
            .items
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.type_.unwrap_or_default()))
            .collect();
        reasons
            .iter()
            .any(|(r, _)| r == "RolloutPaused")
            .then_some(reasons)
    })
    .await?;
    for expected in ["RolloutStarted", "BatchStarted", "RolloutComplete"] {
        assert!(
            reasons.iter().any(|(r, _)| r == expected),
            "{expected} missing: {reasons:?}"
        );
    }
    assert!(
        reasons.contains(&("RolloutPaused".to_owned(), "Warning".to_owned())),
        "{reasons:?}"
    );
    Ok(())
}

#[tokio::test]
async fn batches_roll_back_past_the_failure_criteria() -> Result<()> {
    let env = Env::new().await?;
    let name = env.deployment_name("back");
    let rollout = json!({
        "strategy": "Batches",
        "batches": [{"count": 1}],
        "onFailure": "RollBack",
    });
    let (_, _, v2) = upgraded(&env, &name, 3, rollout).await?;
    let v1_bytes = score("app:1").to_canonical_json()?;
    let v2_bytes = score("app:2").to_canonical_json()?;
    let canary = eventually("canary on v2", || async {
        let keys = holding(&env, &v2_bytes).await.ok()?;
        (keys.len() == 1).then(|| keys[0].clone())
    })
    .await?;
    let device: DeviceId = canary.split('.').next().context("device")?.parse()?;
    env.put_state(&device, &name, Phase::Failed, &v2, Some("exit 1"))
        .await?;
    eventually("every device back on v1", || async {
        (holding(&env, &v1_bytes).await.ok()?.len() == 3).then_some(())
    })
    .await?;
    let status = eventually("RolledBack", || async {
        let s = env.status(&name).await?;
        (s.rollout.as_ref()?.phase == crd::deployment::RolloutPhase::RolledBack).then_some(s)
    })
    .await?;
    assert_eq!(
        condition(&status, "Degraded"),
        Some(("True".into(), "RolledBack".into()))
    );
    Ok(())
}

#[tokio::test]
async fn restart_rewrites_nothing_and_collects_orphans() -> Result<()> {
    let mut env = Env::new().await?;
    let (a, b) = (env.device(1), env.device(2));
    let name = env.deployment_name("keep");
    env.targeted(&[&a, &b], &name).await?;
    let before = eventually("two keys", || async {
        let keys = env.desired().await.ok()?;
        (keys.len() == 2).then_some(keys)
    })
    .await?;
    let revisions_before: Vec<u64> = {
        let mut r = Vec::new();
        for k in before.keys() {
            r.push(env.kv.desired.entry(k).await?.context("entry")?.revision);
        }
        r
    };
    // Stop the operator; meanwhile a key of a deployment that no longer exists appears.
    env.operator = None;
    let orphan = key(&a, &env.deployment_name("ghost"));
    env.kv
        .desired
        .put(&orphan, bytes::Bytes::from_static(b"{}"))
        .await?;
    env.start_operator().await?;
    let after = env.desired().await?;
    assert!(
        !after.contains_key(&orphan),
        "orphaned key collected at cold start"
    );
    assert_eq!(after, before, "same keys, same bytes");
    let mut revisions_after = Vec::new();
    for k in after.keys() {
        revisions_after.push(env.kv.desired.entry(k).await?.context("entry")?.revision);
    }
    assert_eq!(revisions_after, revisions_before, "no key was rewritten");
    assert_eq!(env.metrics().kv_writes_ok(), 1, "only the orphan delete");
    Ok(())
}

#[tokio::test]
async fn restart_from_the_checkpoint_reads_the_indexes_and_the_keys_after_it() -> Result<()> {
    let mut env = Env::new().await?;
    let (a, b) = (env.device(1), env.device(2));
    let name = env.deployment_name("keep");
    env.targeted(&[&a, &b], &name).await?;
    let wanted = bytes::Bytes::from(score("nginx:1").to_canonical_json()?);
    // Once both keys and both indexes are acknowledged, a checkpoint after them.
    let checkpoint = eventually("a checkpoint after the keys and indexes", || async {
        let entry = env.kv.desired.entry(notice::CHECKPOINT_KEY).await.ok()??;
        let mut newest = 0;
        for k in [key(&a, &name), key(&b, &name), a.to_string(), b.to_string()] {
            newest = newest.max(env.kv.desired.entry(&k).await.ok()??.revision);
        }
        (entry.revision > newest).then_some(entry)
    })
    .await?;
    env.operator = None;

    // A key no index names, then the same checkpoint again: to a read from the checkpoint it
    // is one of the keys before it, which the indexes account for.
    let hidden = key(&a, &env.deployment_name("hidden"));
    env.kv
        .desired
        .put(&hidden, bytes::Bytes::from_static(b"{}"))
        .await?;
    env.kv
        .desired
        .put(notice::CHECKPOINT_KEY, checkpoint.value.clone())
        .await?;
    // After it: an orphan, and b's key changed as by a crash between a key and its index.
    let orphan = key(&a, &env.deployment_name("ghost"));
    env.kv
        .desired
        .put(&orphan, bytes::Bytes::from_static(b"{}"))
        .await?;
    let stale = bytes::Bytes::from(score("nginx:0").to_canonical_json()?);
    env.kv.desired.put(key(&b, &name), stale).await?;

    env.start_operator().await?;
    let after = env.desired().await?;
    assert!(
        !after.contains_key(&orphan),
        "keys after the checkpoint are read"
    );
    assert_eq!(
        after.get(&key(&b, &name)),
        Some(&wanted),
        "b's key written back"
    );
    assert_eq!(after.get(&key(&a, &name)), Some(&wanted));
    assert!(
        after.contains_key(&hidden),
        "a key before the checkpoint that no index names is not read"
    );
    assert_eq!(
        env.metrics().kv_writes_ok(),
        2,
        "the orphan's delete and b's key; the indexes already say what they hold"
    );

    // Without a checkpoint the whole bucket is read: the hidden key is collected too.
    env.operator = None;
    env.kv.desired.delete(notice::CHECKPOINT_KEY).await?;
    env.start_operator().await?;
    let full = env.desired().await?;
    assert!(!full.contains_key(&hidden), "a full read collects it");
    assert_eq!(full.get(&key(&a, &name)), Some(&wanted));
    eventually("a new checkpoint", || async {
        let entry = env.kv.desired.entry(notice::CHECKPOINT_KEY).await.ok()??;
        (entry.operation == async_nats::jetstream::kv::Operation::Put).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_stopping_operator_writes_what_it_decided_then_a_checkpoint() -> Result<()> {
    let mut env = Env::new().await?;
    let devices: Vec<DeviceId> = (1..=20).map(|i| env.device(i)).collect();
    let name = env.deployment_name("drain");
    env.targeted(&devices.iter().collect::<Vec<_>>(), &name)
        .await?;
    // Stopped as soon as one key is there: the rest, the indexes and the checkpoint after
    // them are written on the way out.
    eventually("a first key", || async {
        (!env.desired().await.ok()?.is_empty()).then_some(())
    })
    .await?;
    env.operator.take().context("running")?.shutdown().await;
    assert_eq!(env.desired().await?.len(), devices.len());
    let checkpoint = env
        .kv
        .desired
        .entry(notice::CHECKPOINT_KEY)
        .await?
        .context("a checkpoint")?;
    for device in &devices {
        let index = env
            .kv
            .desired
            .entry(notice::index_key(device))
            .await?
            .context("an index")?;
        assert!(
            index.revision < checkpoint.revision,
            "{device}'s index before the checkpoint"
        );
        let listed = DesiredIndex::from_bytes(&index.value)?;
        assert_eq!(listed.deployments.len(), 1, "{device}: {listed:?}");
    }
    Ok(())
}

/// The reports snapshot in the operator's store, decoded.
async fn reports_snapshot(
    store: &async_nats::jetstream::object_store::ObjectStore,
) -> Result<ReportsSnapshot> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    store
        .get(REPORTS_OBJECT)
        .await?
        .read_to_end(&mut bytes)
        .await?;
    Ok(snapshot::decode(&bytes)?)
}

/// `Some` once `name`'s status counts `[succeeded, failed, pending]` devices.
async fn counted(env: &Env, name: &str, [succeeded, failed, pending]: [u64; 3]) -> Option<()> {
    let s = env.status(name).await?.aggregate;
    (s.succeeded == succeeded && s.failed == failed && s.pending == pending).then_some(())
}

/// `snapshot` without the reports of `device`, encoded with the same mark.
fn without(snapshot: &ReportsSnapshot, device: &DeviceId) -> Vec<u8> {
    let reports = snapshot.groups.iter().flat_map(|(name, reports)| {
        reports.iter().filter_map(move |r| {
            let d = &snapshot.devices[r.device as usize];
            (d != device).then(|| {
                let report = Report {
                    rev: &snapshot.revisions[r.rev as usize],
                    outcome: r.outcome,
                    error: r.detail.as_ref().and_then(|d| d.error.clone()),
                    at: r.detail.as_ref().and_then(|d| d.at),
                };
                (name, d, report)
            })
        })
    });
    snapshot::encode(snapshot.mark, reports)
}

#[tokio::test]
async fn restart_reads_the_reports_snapshot_and_the_reports_after_it() -> Result<()> {
    let mut env = Env::new().await?;
    let (a, b, c) = (env.device(1), env.device(2), env.device(3));
    let name = env.deployment_name("snap");
    env.targeted(&[&a, &b, &c], &name).await?;
    let hash = score("nginx:1").content_hash()?;
    env.put_state(&a, &name, Phase::Running, &hash, None)
        .await?;
    env.put_state(&b, &name, Phase::Running, &hash, None)
        .await?;
    env.put_state(&c, &name, Phase::Failed, &hash, Some("pull failed"))
        .await?;
    eventually("2 succeeded, 1 failed", || counted(&env, &name, [2, 1, 0])).await?;

    // Stopping saves every report read, up to the last message of device-state.
    env.operator.take().context("running")?.shutdown().await;
    let store = async_nats::jetstream::new(env.nats_client.clone())
        .get_object_store(OPERATOR_STORE)
        .await?;
    let saved = reports_snapshot(&store).await?;
    let last = env.kv.state.stream.get_info().await?.state.last_sequence;
    assert_eq!(saved.mark.seq, last);
    assert_eq!(saved.len(), 3);

    // The same snapshot without a's report: to a start from it, a's report is one of the
    // messages before it, which the snapshot accounts for. After it, c recovers (one message
    // after the snapshot, of three in the bucket: less than half, so it is read).
    store
        .put(REPORTS_OBJECT, &mut without(&saved, &a).as_slice())
        .await?;
    env.put_state(&c, &name, Phase::Running, &hash, None)
        .await?;
    env.start_operator().await?;
    eventually("b and c succeeded, a not known", || {
        counted(&env, &name, [2, 0, 1])
    })
    .await?;

    // Without the snapshot every report is read, and a new snapshot follows. (Stopped first:
    // a stopping operator saves what it holds, a's report still unknown.)
    env.operator.take().context("running")?.shutdown().await;
    store.delete(REPORTS_OBJECT).await?;
    env.start_operator().await?;
    eventually("all 3 succeeded", || counted(&env, &name, [3, 0, 0])).await?;
    let last = env.kv.state.stream.get_info().await?.state.last_sequence;
    let fresh = eventually("a snapshot after the full read", || async {
        reports_snapshot(&store).await.ok()
    })
    .await?;
    assert_eq!((fresh.mark.seq, fresh.len()), (last, 3));
    Ok(())
}

#[tokio::test]
async fn malformed_deployments_are_rejected_naming_the_field() -> Result<()> {
    let env = Env::new().await?;
    let ok_score = serde_json::to_value(score("nginx:1"))?;
    let cases = [
        (
            "missing-selector",
            json!({"score": ok_score}),
            "targetSelector",
        ),
        (
            "bad-operator",
            json!({"targetSelector": {"matchExpressions": [{"key": "a", "operator": "Maybe"}]}, "score": ok_score}),
            "operator",
        ),
        (
            "in-no-values",
            json!({"targetSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}, "score": ok_score}),
            "values",
        ),
        (
            "bad-strategy",
            json!({"targetSelector": {}, "score": ok_score, "rollout": {"strategy": "Yolo"}}),
            "strategy",
        ),
        (
            "batches-over-100",
            json!({"targetSelector": {}, "score": ok_score, "rollout": {"strategy": "Batches", "batches": [{"percent": 60}, {"percent": 50}]}}),
            "batches",
        ),
        (
            "threshold-range",
            json!({"targetSelector": {}, "score": ok_score, "rollout": {"successThreshold": 150}}),
            "successThreshold",
        ),
        (
            "score-without-services",
            json!({"targetSelector": {}, "score": {"type": "PodmanV0", "data": {}}}),
            "score.data.services",
        ),
        (
            "bad-score-type",
            json!({"targetSelector": {}, "score": {"type": "DockerV9", "data": {}}}),
            "score.type",
        ),
    ];
    for (name, spec, field) in cases {
        let err = env
            .apply(json!({"metadata": {"name": name}, "spec": spec}))
            .await
            .expect_err(name);
        let message = format!("{err:#}");
        eprintln!("{name}: {message}");
        assert!(
            message.contains(field),
            "{name}: `{message}` should name `{field}`"
        );
    }
    let err = env
        .apply(json!({"metadata": {"name": "has.dot"}, "spec": {"targetSelector": {}, "score": ok_score}}))
        .await
        .expect_err("dotted name");
    assert!(format!("{err:#}").contains("metadata.name"), "{err:#}");
    Ok(())
}

#[tokio::test]
async fn devices_become_resources_with_liveness() -> Result<()> {
    let env = Env::new().await?;
    let a = env.device(1);
    env.put_info(&a, &[("site", "plant-3")]).await?;
    let devices: Api<Device> = Api::all(env.client.clone());
    let device = eventually("Device resource", || async {
        devices.get_opt(a.as_str()).await.ok()?
    })
    .await?;
    assert_eq!(
        device
            .metadata
            .labels
            .unwrap_or_default()
            .get("site")
            .map(String::as_str),
        Some("plant-3")
    );
    assert_eq!(device.spec.inventory.cpu_count, 4);
    env.kv
        .heartbeat
        .put(keys::heartbeat_key(&a), bytes::Bytes::from_static(b"{}"))
        .await?;
    eventually("online with agent version", || async {
        let s = devices.get(a.as_str()).await.ok()?.status?;
        (s.online && s.agent_version.as_deref() == Some("0.1.0") && s.last_heartbeat.is_some())
            .then_some(())
    })
    .await?;
    // No more heartbeats: offline after the 3 s timeout.
    eventually("offline", || async {
        let s = devices.get(a.as_str()).await.ok()?.status?;
        (!s.online).then_some(())
    })
    .await?;
    // …and `kubectl describe fleetdev` says so (Events of cluster-scoped objects live in
    // `default`).
    eventually("a DeviceOffline Event", || async {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(env.client.clone(), "default");
        let list = events
            .list(&kube::api::ListParams::default().fields(&format!("regarding.name={a}")))
            .await
            .ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("DeviceOffline")
                    && e.type_.as_deref() == Some("Warning")
            })
            .then_some(())
    })
    .await?;
    // The device deletes its own info: it cannot remove its resource (only an admin can).
    let before = devices.get(a.as_str()).await?;
    env.kv.info.delete(keys::info_key(&a)).await?;
    eventually("info deletion seen", || async {
        env.kv
            .info
            .get(keys::info_key(&a))
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    // A later change proves the operator processed the deletion: label another device.
    let b = env.device(2);
    env.put_info(&b, &[("site", "plant-9")]).await?;
    eventually("second device applied", || async {
        devices.get_opt(b.as_str()).await.ok()?.map(|_| ())
    })
    .await?;
    let after = devices.get(a.as_str()).await?;
    assert_eq!(
        after.metadata.uid, before.metadata.uid,
        "the Device is kept"
    );
    assert!(!after.status.map(|s| s.online).unwrap_or(true));
    Ok(())
}

#[tokio::test]
async fn commands_tell_offline_from_bad_replies() -> Result<()> {
    let env = Env::new().await?;
    let client = CommandsClient::new(env.nats_client.clone()).with_timeout(Duration::from_secs(2));
    let offline = env.device(1);
    let err = client.ping(&offline).await.expect_err("nobody answers");
    assert!(matches!(err, CommandError::DeviceOffline { .. }), "{err}");

    // A fake agent: answers ping properly, exec with garbage.
    let online = env.device(2);
    let mut sub = env
        .nats_client
        .subscribe(keys::command_serve_pattern(&online))
        .await?;
    let responder = env.nats_client.clone();
    let device = online.clone();
    let task = tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let Some(reply) = msg.reply else { continue };
            let body = if msg.subject.ends_with(".ping") {
                serde_json::to_vec(&CommandReply::Result(PingReply {
                    device_id: device.clone(),
                    agent_version: AgentVersion::new("0.1.0").expect("version"),
                    uptime_seconds: 5,
                }))
                .expect("encode")
            } else {
                b"not json".to_vec()
            };
            let _ = responder.publish(reply, body.into()).await;
        }
    });
    env.nats_client.flush().await?;
    let pong = client.ping(&online).await?;
    assert_eq!(pong.device_id, online);
    let err = client
        .exec(&online, &ExecRequest::new("true"))
        .await
        .expect_err("garbage reply");
    assert!(matches!(err, CommandError::BadReply { .. }), "{err}");
    task.abort();
    Ok(())
}

/// A label patch as `kubectl label` sends it (another field manager than the operator's).
async fn kubectl_label(devices: &Api<Device>, device: &DeviceId, labels: Value) -> Result<()> {
    let params = PatchParams {
        field_manager: Some("kubectl-label".into()),
        ..PatchParams::default()
    };
    devices
        .patch(
            device.as_str(),
            &params,
            &Patch::Merge(json!({"metadata": {"labels": labels}})),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn targeting_follows_labels_people_set_and_ignores_protected_ones_a_device_claims()
-> Result<()> {
    let env = Env::new().await?;
    let a = env.device(1);
    env.put_info(
        &a,
        &[("site", "lab"), ("fleet.nationtech.io/zone", "vault")],
    )
    .await?;
    let devices: Api<Device> = Api::all(env.client.clone());
    // The claim is refused, and the Device says so.
    let condition = eventually("LabelsAccepted=False on the Device", || async {
        let status = devices.get_opt(a.as_str()).await.ok()??.status?;
        status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "LabelsAccepted" && c.status == "False")
    })
    .await?;
    assert_eq!(condition.reason, "ProtectedPrefix");
    assert!(
        condition.message.contains("fleet.nationtech.io/zone"),
        "{}",
        condition.message
    );
    let vault = env.deployment_name("vault");
    let plant = env.deployment_name("plant");
    env.apply(deployment(
        &vault,
        json!({"matchLabels": {"fleet.nationtech.io/zone": "vault"}}),
        "nginx:1",
        json!({}),
    ))
    .await?;
    env.apply(deployment(
        &plant,
        json!({"matchLabels": {"site": "plant-3"}}),
        "nginx:1",
        json!({}),
    ))
    .await?;
    let status_of = |name: String| {
        let api = env.deployments();
        async move { api.get(&name).await.ok()?.status }
    };
    eventually("both deployments reconciled, neither matching", || async {
        let (v, p) = (
            status_of(vault.clone()).await?,
            status_of(plant.clone()).await?,
        );
        (v.observed_generation.is_some()
            && p.observed_generation.is_some()
            && v.aggregate.matched_device_count == 0
            && p.aggregate.matched_device_count == 0)
            .then_some(())
    })
    .await?;
    assert!(
        env.desired().await?.is_empty(),
        "a claimed protected label targets nothing"
    );

    // A person labels the Device: that label wins over the reported one.
    kubectl_label(&devices, &a, json!({"site": "plant-3"})).await?;
    env.wait_key(&key(&a, &plant), true).await?;
    // The device reports again (same site=lab): the person's label stays, so does the key.
    env.put_info(&a, &[("site", "lab"), ("ring", "1")]).await?;
    eventually("the reported ring label applied", || async {
        let labels = devices.get(a.as_str()).await.ok()?.metadata.labels?;
        (labels.get("ring").map(String::as_str) == Some("1")).then_some(labels)
    })
    .await
    .and_then(|labels| {
        (labels.get("site").map(String::as_str) == Some("plant-3"))
            .then_some(())
            .context("the operator overwrote the person's site label")
    })?;
    assert!(env.desired().await?.contains_key(&key(&a, &plant)));

    // Protected labels are for people to set: then they target.
    kubectl_label(&devices, &a, json!({"fleet.nationtech.io/zone": "vault"})).await?;
    env.wait_key(&key(&a, &vault), true).await?;

    // Removing the person's site label: the reported site=lab targets again.
    kubectl_label(&devices, &a, json!({"site": null})).await?;
    env.wait_key(&key(&a, &plant), false).await?;
    // The key goes as soon as the person's label does; the reported value is
    // applied by the operator's next pass, so wait for it rather than race it.
    eventually("the reported site=lab applied again", || async {
        let labels = devices.get(a.as_str()).await.ok()?.metadata.labels?;
        (labels.get("site").map(String::as_str) == Some("lab")).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn reports_for_deployments_not_assigned_to_the_device_are_removed() -> Result<()> {
    let env = Env::new().await?;
    let a = env.device(1);
    env.put_info(&a, &[("site", "plant-3")]).await?;
    let name = env.deployment_name("web");
    env.apply(deployment(
        &name,
        json!({"matchLabels": {"site": "plant-3"}}),
        "nginx:1",
        json!({}),
    ))
    .await?;
    let hash = ContentHash::of_bytes(&score("nginx:1").to_canonical_json()?);
    env.wait_key(&key(&a, &name), true).await?;
    // Its real report stays; a report under a made-up deployment name is deleted.
    env.put_state(&a, &name, Phase::Running, &hash, None)
        .await?;
    let made_up = env.deployment_name("made-up");
    env.put_state(&a, &made_up, Phase::Running, &hash, None)
        .await?;
    let stray = keys::state_key(&a, &made_up.parse()?);
    eventually("the made-up report removed", || async {
        env.kv.state.get(&stray).await.ok()?.is_none().then_some(())
    })
    .await?;
    let kept = env
        .kv
        .state
        .get(keys::state_key(&a, &name.parse()?))
        .await?;
    assert!(kept.is_some(), "the assigned deployment's report is kept");
    Ok(())
}
