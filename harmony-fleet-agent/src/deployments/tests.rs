//! Tests of the supervisor and workers with the fake runtime and the fake upgrader.

use super::*;
use crate::runtime::fake::FakeRuntime;
use crate::upgrade::worker::fake::FakeUpgrader;
use bytes::Bytes;
use harmony_fleet_contracts::payload::{PodmanV0, Service};

const IMAGE: &str = "localhost/fleet-demo:v1";

struct Harness {
    supervisor: Supervisor<FakeRuntime>,
    runtime: Arc<FakeRuntime>,
    reports: mpsc::UnboundedReceiver<Report>,
    _dir: tempfile::TempDir,
}

fn harness() -> Harness {
    harness_with(
        Arc::new(crate::upgrade::DisabledUpgrader(
            "self-upgrade is disabled in these tests".into(),
        )),
        true,
    )
}

fn harness_with(upgrader: Arc<dyn Upgrader>, runtime_enabled: bool) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let runtime = Arc::new(FakeRuntime::with_images(&[
        IMAGE,
        "localhost/fleet-demo:v2",
    ]));
    let (tx, reports) = mpsc::unbounded_channel();
    let supervisor = Supervisor::new(
        "dev-1".parse().expect("device"),
        runtime.clone(),
        store.clone(),
        store.load().expect("load"),
        tx,
        WorkerSettings {
            reconcile_interval: Duration::from_secs(3600),
            runtime_enabled,
            metrics: crate::metrics::Metrics::new(),
            upgrader,
        },
        CancellationToken::new(),
    );
    Harness {
        supervisor,
        runtime,
        reports,
        _dir: dir,
    }
}

fn payload(image: &str) -> Bytes {
    let score = ReconcileScore::PodmanV0(PodmanV0::new(vec![Service::new("http", image)]));
    Bytes::from(serde_json::to_vec(&score).expect("json"))
}

fn put(key: &str, revision: u64, value: Bytes) -> KvRecord {
    KvRecord {
        key: key.into(),
        revision,
        operation: KvOperation::Put,
        value,
    }
}

async fn next_state(h: &mut Harness, phase: Phase) -> DeploymentState {
    loop {
        let report = tokio::time::timeout(Duration::from_secs(5), h.reports.recv())
            .await
            .expect("a report within 5s")
            .expect("reports open");
        match report {
            Report::State { state, .. } | Report::Removed { state, .. } if state.phase == phase => {
                return state;
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn put_then_delete_runs_then_removes() {
    let mut h = harness();
    h.supervisor
        .handle(WatchEvent::Change(put("dev-1.web", 5, payload(IMAGE))))
        .await;
    let running = next_state(&mut h, Phase::Running).await;
    assert_eq!(running.desired_revision, Some(5));
    assert_eq!(h.runtime.containers().len(), 1);
    h.supervisor
        .handle(WatchEvent::Change(KvRecord {
            key: "dev-1.web".into(),
            revision: 6,
            operation: KvOperation::Delete,
            value: Bytes::new(),
        }))
        .await;
    next_state(&mut h, Phase::Removed).await;
    assert!(h.runtime.containers().is_empty());
}

#[tokio::test]
async fn older_revision_is_never_applied() {
    let mut h = harness();
    h.supervisor
        .handle(WatchEvent::Change(put(
            "dev-1.web",
            9,
            payload("localhost/fleet-demo:v2"),
        )))
        .await;
    next_state(&mut h, Phase::Running).await;
    h.supervisor
        .handle(WatchEvent::Change(put("dev-1.web", 4, payload(IMAGE))))
        .await;
    assert_eq!(
        h.supervisor
            .held()
            .deployments
            .values()
            .next()
            .map(|e| e.revision),
        Some(9)
    );
    // Same revision again (a replay after reconnect) changes nothing either.
    h.supervisor
        .handle(WatchEvent::Snapshot(vec![put(
            "dev-1.web",
            9,
            payload("localhost/fleet-demo:v2"),
        )]))
        .await;
    let containers = h.runtime.containers();
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].image, "localhost/fleet-demo:v2");
}

#[tokio::test]
async fn malformed_value_reports_failed_and_keeps_what_runs() {
    let mut h = harness();
    h.supervisor
        .handle(WatchEvent::Change(put("dev-1.web", 1, payload(IMAGE))))
        .await;
    let running = next_state(&mut h, Phase::Running).await;
    h.supervisor
        .handle(WatchEvent::Change(put(
            "dev-1.web",
            2,
            Bytes::from_static(b"{not json"),
        )))
        .await;
    let failed = next_state(&mut h, Phase::Failed).await;
    assert!(
        failed
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("cannot be decoded")),
        "{failed:?}"
    );
    assert_eq!(failed.payload_hash, None);
    assert_eq!(failed.container_ids, running.container_ids);
    assert_eq!(h.runtime.containers().len(), 1);
}

#[tokio::test]
async fn snapshot_removes_deployments_that_vanished() {
    let mut h = harness();
    h.supervisor
        .handle(WatchEvent::Change(put("dev-1.web", 1, payload(IMAGE))))
        .await;
    next_state(&mut h, Phase::Running).await;
    h.supervisor.handle(WatchEvent::Snapshot(Vec::new())).await;
    next_state(&mut h, Phase::Removed).await;
    assert!(h.runtime.containers().is_empty());
}

/// What a blacklisted device's agent does (identity::stop_workloads): everything is
/// removed, and once the blacklist is lifted the listing's record — possibly the very
/// revision held before — applies again.
#[tokio::test]
async fn an_empty_rebase_removes_everything_and_the_same_revision_applies_again() {
    let mut h = harness();
    h.supervisor
        .handle(WatchEvent::Snapshot(vec![put(
            "dev-1.web",
            3,
            payload(IMAGE),
        )]))
        .await;
    next_state(&mut h, Phase::Running).await;
    h.supervisor.handle(WatchEvent::Rebased(Vec::new())).await;
    next_state(&mut h, Phase::Removed).await;
    assert!(h.runtime.containers().is_empty());
    h.supervisor
        .handle(WatchEvent::Snapshot(vec![put(
            "dev-1.web",
            3,
            payload(IMAGE),
        )]))
        .await;
    next_state(&mut h, Phase::Running).await;
    assert_eq!(h.runtime.containers().len(), 1);
}

#[tokio::test]
async fn held_state_is_persisted_and_restored() {
    let mut h = harness();
    h.supervisor
        .handle(WatchEvent::Change(put("dev-1.web", 3, payload(IMAGE))))
        .await;
    next_state(&mut h, Phase::Running).await;
    let reloaded = h.supervisor.store.load().expect("load");
    assert_eq!(reloaded, *h.supervisor.held());
    assert_eq!(
        reloaded.deployments.values().next().map(|e| e.revision),
        Some(3)
    );
}

#[tokio::test]
async fn keys_of_other_devices_and_malformed_keys_are_ignored() {
    let mut h = harness();
    h.supervisor
        .handle(WatchEvent::Change(put("dev-2.web", 1, payload(IMAGE))))
        .await;
    h.supervisor
        .handle(WatchEvent::Change(put("dev-1.a.b", 2, payload(IMAGE))))
        .await;
    assert!(h.supervisor.held().deployments.is_empty());
    assert!(h.runtime.containers().is_empty());
}

fn agent_payload(sha: &str) -> Bytes {
    let score = ReconcileScore::AgentV0(AgentV0 {
        version: "0.1.1".into(),
        binaries: BTreeMap::from([(std::env::consts::ARCH.into(), sha.into())]),
        heartbeat_deadline_seconds: 60,
    });
    Bytes::from(serde_json::to_vec(&score).expect("json"))
}

#[tokio::test]
async fn an_agent_build_is_installed_even_with_the_runtime_disabled() {
    let fake = Arc::new(FakeUpgrader::new(&"aa".repeat(32)));
    let mut h = harness_with(fake.clone(), false);
    let wanted = "bb".repeat(32);
    h.supervisor
        .handle(WatchEvent::Change(put(
            "dev-1.agent",
            1,
            agent_payload(&wanted),
        )))
        .await;
    let pending = next_state(&mut h, Phase::Pending).await;
    assert_eq!(pending.desired_revision, Some(1));
    assert_eq!(pending.last_error, None);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !fake.calls().iter().any(|c| c == "restart") {
        assert!(
            std::time::Instant::now() < deadline,
            "no restart within 5 s: {:?}",
            fake.calls()
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        fake.calls(),
        [
            format!("fetch {wanted}"),
            format!("self-test /staged-{wanted} 0.1.1"),
            format!("swap {wanted}"),
            "restart".to_owned()
        ]
    );
    assert!(h.runtime.containers().is_empty());
}

#[tokio::test]
async fn an_agent_build_reports_running_failed_with_its_step_and_removed() {
    let own = "aa".repeat(32);
    let fake = Arc::new(FakeUpgrader::new(&own));
    let mut h = harness_with(fake.clone(), true);
    h.supervisor
        .handle(WatchEvent::Change(put(
            "dev-1.agent",
            1,
            agent_payload(&own),
        )))
        .await;
    let running = next_state(&mut h, Phase::Running).await;
    assert_eq!(running.last_error, None);
    assert!(running.payload_hash.is_some());
    if let Ok(mut error) = fake.fetch_error.lock() {
        *error = Some("no answer (timed out)".into());
    }
    h.supervisor
        .handle(WatchEvent::Change(put(
            "dev-1.agent",
            2,
            agent_payload(&"bb".repeat(32)),
        )))
        .await;
    let failed = next_state(&mut h, Phase::Failed).await;
    let error = failed.last_error.unwrap_or_default();
    assert!(error.starts_with("fetch of agent build bbbb"), "{error}");
    h.supervisor
        .handle(WatchEvent::Change(KvRecord {
            key: "dev-1.agent".into(),
            revision: 3,
            operation: KvOperation::Delete,
            value: Bytes::new(),
        }))
        .await;
    next_state(&mut h, Phase::Removed).await;
    assert!(!fake.calls().iter().any(|c| c.starts_with("swap")));
}

#[test]
fn retry_delay_grows_and_is_capped() {
    let interval = Duration::from_secs(30);
    assert_eq!(retry_delay(1, interval), Duration::from_secs(2));
    assert_eq!(retry_delay(3, interval), Duration::from_secs(8));
    assert_eq!(retry_delay(30, interval), MAX_RETRY_DELAY);
}
