//! Integration tests of the agent against a real nats-server (with the contract's per-device
//! permissions) and real podman (a private storage per test, images built from busybox).
//!
//! The test plays the operator: it writes `desired-state` with an admin user and reads what the
//! agent reports. The agent runs in-process (`Agent::run`) as the device user, so every subject
//! it touches must be allowed by `device_permissions`.

#[path = "agent/boundary.rs"]
mod boundary;
#[path = "agent/lifecycle.rs"]
mod lifecycle;
#[path = "agent/metrics.rs"]
mod metrics;
#[path = "agent/restart.rs"]
mod restart;
#[path = "agent/self_upgrade.rs"]
mod self_upgrade;
mod support;
#[path = "agent/upgrade.rs"]
mod upgrade;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use harmony_fleet_agent::{Agent, Config};
use harmony_fleet_contracts::buckets;
use harmony_fleet_contracts::commands::{
    CommandReply, ErrorKind, ExecReply, ExecRequest, LogsReply, LogsRequest, PingReply,
};
use harmony_fleet_contracts::payload::{
    InitContainer, PodmanV0, PortMapping, PullPolicy, ReconcileScore, Service, StopPolicy,
    VolumeMount,
};
use harmony_fleet_contracts::{
    ContentHash, DeploymentName, DeploymentState, DesiredIndex, DeviceId, DeviceInfo, Heartbeat,
    Phase, Verb, device_permissions, keys, notice,
};
use support::{NatsServer, PodmanStore, eventually, free_port, http_get};
use tokio_util::sync::CancellationToken;

/// Deadline for anything involving podman (image checks, container start, graceful stop).
const SLOW: Duration = Duration::from_secs(90);

const ADMIN: (&str, &str) = ("admin", "admin-secret");
const DEVICE_PASSWORD: &str = "device-secret";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "harmony_fleet_agent=info".into()),
        )
        .try_init();
}

/// One test's world: a NATS server, a device's podman storage, data dir, and operator access.
struct Fleet {
    nats: NatsServer,
    podman: PodmanStore,
    device: DeviceId,
    data_dir: tempfile::TempDir,
    shared_dir: tempfile::TempDir,
    admin: async_nats::Client,
    desired: kv::Store,
    states: kv::Store,
    infos: kv::Store,
    heartbeats: kv::Store,
    /// The device's desired-state index, as the operator would keep it.
    index: std::sync::Mutex<DesiredIndex>,
}

impl Fleet {
    async fn start(device: &str) -> Result<Self> {
        Self::start_with_devices(device, &[]).await
    }

    /// Like [`Fleet::start`], with more device users (same password, their own templates).
    async fn start_with_devices(device: &str, others: &[&str]) -> Result<Self> {
        init_tracing();
        let device: DeviceId = device.parse()?;
        let mut users = format!(
            "    {{ user: \"{}\", password: \"{}\" }}\n",
            ADMIN.0, ADMIN.1
        );
        for id in std::iter::once(device.as_str()).chain(others.iter().copied()) {
            let id: DeviceId = id.parse()?;
            let permissions = serde_json::to_string(&device_permissions(&id))?;
            users.push_str(&format!(
                "    {{ user: \"{id}\", password: \"{DEVICE_PASSWORD}\", permissions: {permissions} }}\n"
            ));
        }
        let auth = format!("authorization {{\n  users = [\n{users}  ]\n}}\n");
        let nats = NatsServer::start(Some(&auth))?;
        let admin =
            async_nats::ConnectOptions::with_user_and_password(ADMIN.0.into(), ADMIN.1.into())
                .connect(nats.url())
                .await
                .context("admin connects")?;
        let js = jetstream::new(admin.clone());
        let mut stores = Vec::new();
        for spec in buckets::ALL {
            stores.push(create_bucket(&js, &spec).await?);
        }
        let [desired, infos, states, heartbeats]: [kv::Store; 4] = stores
            .try_into()
            .map_err(|_| anyhow::anyhow!("four buckets"))?;
        let podman = PodmanStore::new()?;
        podman.import_demo_image("v1")?;
        podman.import_demo_image("v2")?;
        Ok(Self {
            nats,
            podman,
            device,
            data_dir: tempfile::tempdir()?,
            shared_dir: tempfile::tempdir()?,
            admin,
            desired,
            states,
            infos,
            heartbeats,
            index: Default::default(),
        })
    }

    /// What the operator does for one key: write it (`None`: delete it), then the device's
    /// index, then the change notice.
    async fn write_desired(&self, deployment: &str, value: Option<Bytes>) -> Result<()> {
        let name: DeploymentName = deployment.parse()?;
        let index = {
            let mut index = self
                .index
                .lock()
                .map_err(|_| anyhow::anyhow!("index lock"))?;
            match &value {
                Some(bytes) => {
                    index.deployments.insert(name, ContentHash::of_bytes(bytes));
                }
                None => {
                    index.deployments.remove(&name);
                }
            }
            index.to_bytes()
        };
        match value {
            Some(bytes) => self.desired.put(self.key(deployment), bytes).await?,
            None => {
                self.desired.delete(self.key(deployment)).await?;
                0
            }
        };
        self.desired
            .put(notice::index_key(&self.device), Bytes::from(index))
            .await?;
        self.admin
            .publish(notice::notify_subject(&self.device), Bytes::new())
            .await?;
        self.admin.flush().await?;
        Ok(())
    }

    fn config(&self) -> Result<Config> {
        let text = format!(
            r#"
[agent]
device_id = "{device}"
data_dir = "{data}"
heartbeat_interval_secs = 1
reconcile_interval_secs = 3

[nats]
urls = ["{url}"]
reconnect_max_delay_ms = 500

[labels]
site = "plant-3"

[credentials]
type = "toml-shared"
user = "{device}"
password = "{DEVICE_PASSWORD}"

[podman]
root = "{root}"
runroot = "{runroot}"
tmpdir = "{tmpdir}"
containers_conf = "{conf}"
"#,
            device = self.device,
            data = self.data_dir.path().display(),
            url = self.nats.url(),
            root = self.podman.root().display(),
            runroot = self.podman.runroot().display(),
            tmpdir = self.podman.tmpdir().display(),
            conf = support::containers_conf().display(),
        );
        let path = self.data_dir.path().join("agent.toml");
        std::fs::write(&path, text)?;
        Ok(Config::load(&path)?)
    }

    fn start_agent(&self) -> Result<RunningAgent> {
        let config = self.config()?;
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(Agent::new(config).run(shutdown.clone()));
        Ok(RunningAgent {
            shutdown,
            handle: Some(handle),
        })
    }

    fn key(&self, deployment: &str) -> String {
        format!("{}.{deployment}", self.device)
    }

    /// Put a payload; returns its content hash.
    async fn put(&self, deployment: &str, payload: &PodmanV0) -> Result<ContentHash> {
        let bytes = ReconcileScore::PodmanV0(payload.clone()).to_canonical_json()?;
        self.write_desired(deployment, Some(Bytes::from(bytes.clone())))
            .await?;
        Ok(ContentHash::of_bytes(&bytes))
    }

    async fn state(&self, deployment: &str) -> Option<DeploymentState> {
        let name: DeploymentName = deployment.parse().ok()?;
        let entry = self
            .states
            .entry(keys::state_key(&self.device, &name))
            .await
            .ok()??;
        if entry.operation != kv::Operation::Put {
            return None;
        }
        serde_json::from_slice(&entry.value).ok()
    }

    /// Wait until the deployment's state satisfies `check`.
    async fn wait_state(
        &self,
        deployment: &str,
        what: &str,
        check: impl Fn(&DeploymentState) -> bool,
    ) -> Result<DeploymentState> {
        eventually(what, SLOW, || async {
            self.state(deployment).await.filter(|s| check(s))
        })
        .await
    }

    async fn wait_running(&self, deployment: &str, hash: &ContentHash) -> Result<DeploymentState> {
        self.wait_state(
            deployment,
            &format!("{deployment} Running at {}", hash.short()),
            |s| s.phase == Phase::Running && s.is_for(hash),
        )
        .await
    }

    /// Containers of the device as `(id, name, state)`.
    fn containers(&self) -> Result<Vec<(String, String, String)>> {
        Ok(self
            .podman
            .containers()?
            .into_iter()
            .map(|c| {
                (
                    c["Id"].as_str().unwrap_or_default().to_owned(),
                    c["Names"][0].as_str().unwrap_or_default().to_owned(),
                    c["State"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    async fn request<T: serde::de::DeserializeOwned>(
        &self,
        verb: Verb,
        body: &impl serde::Serialize,
    ) -> Result<std::result::Result<T, harmony_fleet_contracts::CommandError>> {
        let subject = keys::command_subject(&self.device, verb);
        let payload = Bytes::from(serde_json::to_vec(body)?);
        let reply = tokio::time::timeout(
            Duration::from_secs(30),
            self.admin.request(subject, payload),
        )
        .await
        .context("command reply within 30s")??;
        let reply: CommandReply<T> = serde_json::from_slice(&reply.payload)?;
        Ok(reply.into_result())
    }
}

/// Creates a fleet bucket as its contract spec says (what FleetNatsScore does in production).
async fn create_bucket(js: &jetstream::Context, spec: &buckets::BucketSpec) -> Result<kv::Store> {
    js.create_key_value(kv::Config {
        bucket: spec.name.to_owned(),
        description: spec.description.to_owned(),
        history: spec.history,
        max_value_size: spec.max_value_size,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating bucket {}", spec.name))
}

/// The agent running in this process; stopped (and aborted if need be) on drop.
struct RunningAgent {
    shutdown: CancellationToken,
    handle: Option<
        tokio::task::JoinHandle<Result<harmony_fleet_agent::Exit, harmony_fleet_agent::Error>>,
    >,
}

impl RunningAgent {
    async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(20), handle)
                .await
                .context("agent stops within 20s")???;
        }
        Ok(())
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// The demo web service: busybox httpd serving the image tag on 8080, published on
/// `host_port`; on SIGTERM it writes `/data/stopped-<tag>` and exits 0 (a graceful stop).
fn web(tag: &str, host_port: u16, shared: &std::path::Path) -> PodmanV0 {
    let mut service = Service::new("http", format!("localhost/fleet-demo:{tag}"));
    service.command = vec!["/bin/sh".into(), "-c".into()];
    service.args = vec![
        "trap 'echo stopped > /data/stopped-$TAG; exit 0' TERM; echo serving $TAG; \
         httpd -f -p 8080 -h /www & wait"
            .into(),
    ];
    service.env = BTreeMap::from([("TAG".to_owned(), tag.to_owned())]);
    service.ports = vec![PortMapping {
        host_port: u32::from(host_port),
        container_port: 8080,
        protocol: Default::default(),
        host_ip: None,
    }];
    service.volumes = vec![VolumeMount {
        source: shared.display().to_string(),
        target: "/data".into(),
        read_only: false,
    }];
    service.pull_policy = PullPolicy::Never;
    let mut payload = PodmanV0::new(vec![service]);
    payload.stop_policy = StopPolicy {
        grace_seconds: 20,
        ..StopPolicy::default()
    };
    payload
}

async fn wait_http(port: u16, body: &str) -> Result<()> {
    eventually(
        &format!("http :{port} to answer {body:?}"),
        SLOW,
        || async {
            http_get(port)
                .await
                .filter(|b| b.trim() == body)
                .map(|_| ())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_state_runs_serves_http_and_reports_running_info_and_heartbeat() -> Result<()> {
    let fleet = Fleet::start("dev-run").await?;
    let agent = fleet.start_agent()?;
    let port = free_port();
    let hash = fleet
        .put("web", &web("v1", port, fleet.shared_dir.path()))
        .await?;
    let state = fleet.wait_running("web", &hash).await?;
    wait_http(port, "v1").await?;
    let containers = fleet.containers()?;
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(state.container_ids["http"], containers[0].0);
    assert!(state.desired_revision.is_some());

    let info = eventually("device-info", SLOW, || async {
        let entry = fleet
            .infos
            .get(keys::info_key(&fleet.device))
            .await
            .ok()??;
        serde_json::from_slice::<DeviceInfo>(&entry).ok()
    })
    .await?;
    assert_eq!(info.device_id, fleet.device);
    assert_eq!(info.labels["site"], "plant-3");
    assert!(info.inventory.cpu_count >= 1 && info.inventory.memory_bytes > 0);

    let first = eventually("a heartbeat", SLOW, || async {
        let entry = fleet
            .heartbeats
            .entry(keys::heartbeat_key(&fleet.device))
            .await
            .ok()??;
        assert!(entry.value.len() < 96);
        serde_json::from_slice::<Heartbeat>(&entry.value)
            .ok()
            .map(|h| (entry.revision, h))
    })
    .await?;
    eventually("a newer heartbeat", Duration::from_secs(10), || async {
        let entry = fleet
            .heartbeats
            .entry(keys::heartbeat_key(&fleet.device))
            .await
            .ok()??;
        (entry.revision > first.0).then_some(())
    })
    .await?;
    agent.stop().await?;
    // Stopping the agent never stops workloads.
    wait_http(port, "v1").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_change_stops_old_container_gracefully_and_runs_exactly_one_new() -> Result<()> {
    let fleet = Fleet::start("dev-update").await?;
    let _agent = fleet.start_agent()?;
    let port = free_port();
    let shared = fleet.shared_dir.path();
    let v1 = fleet.put("web", &web("v1", port, shared)).await?;
    let old = fleet.wait_running("web", &v1).await?;
    wait_http(port, "v1").await?;

    let v2 = fleet.put("web", &web("v2", port, shared)).await?;
    let new = fleet.wait_running("web", &v2).await?;
    wait_http(port, "v2").await?;
    assert_ne!(old.container_ids["http"], new.container_ids["http"]);
    let marker = std::fs::read_to_string(shared.join("stopped-v1"))
        .context("the v1 container handled SIGTERM (graceful stop)")?;
    assert_eq!(marker.trim(), "stopped");
    let containers = fleet.containers()?;
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0].0, new.container_ids["http"]);

    // An env-only change is a new payload too: the container is replaced.
    let mut v2_env = web("v2", port, shared);
    v2_env.services[0].env.insert("MODE".into(), "fast".into());
    let v3 = fleet.put("web", &v2_env).await?;
    let newer = fleet.wait_running("web", &v3).await?;
    assert_ne!(newer.container_ids["http"], new.container_ids["http"]);
    assert_eq!(fleet.containers()?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_desired_state_removes_containers_and_state_key() -> Result<()> {
    let fleet = Fleet::start("dev-delete").await?;
    let _agent = fleet.start_agent()?;
    let port = free_port();
    let hash = fleet
        .put("web", &web("v1", port, fleet.shared_dir.path()))
        .await?;
    fleet.wait_running("web", &hash).await?;
    fleet.write_desired("web", None).await?;
    eventually("containers gone", SLOW, || async {
        fleet.containers().ok().filter(Vec::is_empty).map(|_| ())
    })
    .await?;
    eventually("state key deleted", SLOW, || async {
        let entry = fleet
            .states
            .entry(format!("state.{}.web", fleet.device))
            .await
            .ok()?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => None,
            _ => Some(()),
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_adopts_running_containers_with_the_same_ids() -> Result<()> {
    let fleet = Fleet::start("dev-adopt").await?;
    let agent = fleet.start_agent()?;
    let port = free_port();
    let hash = fleet
        .put("web", &web("v1", port, fleet.shared_dir.path()))
        .await?;
    let before = fleet.wait_running("web", &hash).await?;
    let containers_before = fleet.containers()?;
    // Kill it: no graceful shutdown.
    drop(agent);
    // Remove the report, so the next Running is the new agent's.
    fleet
        .states
        .delete(format!("state.{}.web", fleet.device))
        .await?;

    let _agent = fleet.start_agent()?;
    let after = fleet.wait_running("web", &hash).await?;
    assert_eq!(after.container_ids, before.container_ids);
    assert_eq!(fleet.containers()?, containers_before);
    wait_http(port, "v1").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_restart_restores_from_disk_then_resyncs_both_ways() -> Result<()> {
    let mut fleet = Fleet::start("dev-offline").await?;
    let agent = fleet.start_agent()?;
    let port = free_port();
    let shared = fleet.shared_dir.path().to_owned();
    let v1 = fleet.put("web", &web("v1", port, &shared)).await?;
    fleet.wait_running("web", &v1).await?;
    agent.stop().await?;

    // While the agent is down a newer version is published; then NATS goes away and the
    // device "reboots" (its containers are gone).
    let v2 = fleet.put("web", &web("v2", port, &shared)).await?;
    fleet.nats.stop();
    fleet
        .podman
        .podman(&["rm", "--all", "--force", "--time", "0"])?;

    let _agent = fleet.start_agent()?;
    wait_http(port, "v1")
        .await
        .context("v1 restored from disk with NATS down")?;

    fleet.nats.resume()?;
    let state = fleet
        .wait_running("web", &v2)
        .await
        .context("v2 applied after reconnect")?;
    wait_http(port, "v2").await?;
    assert_eq!(fleet.containers()?.len(), 1);
    assert_eq!(
        state.container_ids["http"],
        fleet.containers()?[0].0,
        "the published state names the container that runs"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_nats_server_restart() -> Result<()> {
    let mut fleet = Fleet::start("dev-natsrestart").await?;
    let _agent = fleet.start_agent()?;
    let port = free_port();
    let shared = fleet.shared_dir.path().to_owned();
    let v1 = fleet.put("web", &web("v1", port, &shared)).await?;
    fleet.wait_running("web", &v1).await?;

    fleet.nats.stop();
    fleet.nats.resume()?;
    // The admin client reconnects by itself; the agent must have re-created its watch.
    let v2 = eventually("put after restart", SLOW, || async {
        fleet.put("web", &web("v2", port, &shared)).await.ok()
    })
    .await?;
    fleet.wait_running("web", &v2).await?;
    wait_http(port, "v2").await?;

    // And the state written before the restart was not replayed over the new one.
    let containers = fleet.containers()?;
    assert_eq!(containers.len(), 1, "{containers:?}");

    // Later changes arrive through the re-created watch.
    let mut v3 = web("v2", port, &shared);
    v3.services[0]
        .env
        .insert("MODE".into(), "after-restart".into());
    let v3 = fleet.put("web", &v3).await?;
    fleet.wait_running("web", &v3).await?;
    assert_eq!(fleet.containers()?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_report_failed_with_the_reason() -> Result<()> {
    let fleet = Fleet::start("dev-badimage").await?;
    let _agent = fleet.start_agent()?;

    let mut never = PodmanV0::new(vec![Service::new("app", "localhost/absent:v1")]);
    never.services[0].pull_policy = PullPolicy::Never;
    fleet.put("never", &never).await?;
    let failed = fleet
        .wait_state("never", "never: Failed", |s| s.phase == Phase::Failed)
        .await?;
    let reason = failed.last_error.unwrap_or_default();
    assert!(
        reason.contains("localhost/absent:v1") && reason.contains("Never"),
        "{reason}"
    );

    let pulled = PodmanV0::new(vec![Service::new("app", "localhost/absent:v2")]);
    fleet.put("pulled", &pulled).await?;
    let failed = fleet
        .wait_state("pulled", "pulled: Failed", |s| s.phase == Phase::Failed)
        .await?;
    let reason = failed.last_error.unwrap_or_default();
    assert!(
        reason.contains("podman") && reason.contains("localhost/absent:v2"),
        "{reason}"
    );
    assert!(fleet.containers()?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_values_are_reported_failed_and_the_agent_keeps_working() -> Result<()> {
    let fleet = Fleet::start("dev-malformed").await?;
    let _agent = fleet.start_agent()?;
    fleet
        .write_desired(
            "broken",
            Some(Bytes::from_static(b"{\"type\":\"PodmanV0\"")),
        )
        .await?;
    fleet
        .write_desired(
            "wrong",
            Some(Bytes::from_static(
                b"{\"type\":\"PodmanV0\",\"data\":{\"services\":[]}}",
            )),
        )
        .await?;
    let broken = fleet
        .wait_state("broken", "broken: Failed", |s| s.phase == Phase::Failed)
        .await?;
    assert!(
        broken
            .last_error
            .unwrap_or_default()
            .contains("cannot be decoded")
    );
    let wrong = fleet
        .wait_state("wrong", "wrong: Failed", |s| s.phase == Phase::Failed)
        .await?;
    assert!(wrong.last_error.unwrap_or_default().contains("services"));

    let port = free_port();
    let hash = fleet
        .put("good", &web("v1", port, fleet.shared_dir.path()))
        .await?;
    fleet.wait_running("good", &hash).await?;
    wait_http(port, "v1").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_round_trip_over_nats() -> Result<()> {
    let fleet = Fleet::start("dev-commands").await?;
    let _agent = fleet.start_agent()?;

    let pong: PingReply = eventually("ping answered", SLOW, || async {
        fleet
            .request::<PingReply>(Verb::Ping, &serde_json::json!({}))
            .await
            .ok()?
            .ok()
    })
    .await?;
    assert_eq!(pong.device_id, fleet.device);

    let out: ExecReply = fleet
        .request(
            Verb::Exec,
            &ExecRequest::new("echo hello; echo oops >&2; exit 4"),
        )
        .await??;
    assert_eq!(
        (out.exit_code, out.stdout.as_str(), out.stderr.as_str()),
        (Some(4), "hello\n", "oops\n")
    );

    let mut big = ExecRequest::new("yes | head -c 200000");
    big.max_output_bytes = Some(1000);
    let out: ExecReply = fleet.request(Verb::Exec, &big).await??;
    assert!(
        out.truncated && out.stdout.len() == 1000,
        "{}",
        out.stdout.len()
    );

    let mut slow = ExecRequest::new("sleep 20");
    slow.deadline_ms = Some(500);
    let out: ExecReply = fleet.request(Verb::Exec, &slow).await??;
    assert!(out.timed_out && out.exit_code.is_none());

    let port = free_port();
    let hash = fleet
        .put("web", &web("v1", port, fleet.shared_dir.path()))
        .await?;
    fleet.wait_running("web", &hash).await?;
    let mut request = LogsRequest::new("web".parse()?);
    request.tail_lines = Some(5);
    let logs: LogsReply = eventually("the service's first log line", SLOW, || async {
        let logs: LogsReply = fleet.request(Verb::Logs, &request).await.ok()?.ok()?;
        logs.services
            .iter()
            .any(|s| s.lines.iter().any(|l| l.contains("serving v1")))
            .then_some(logs)
    })
    .await?;
    assert_eq!(logs.services.len(), 1);
    assert_eq!(logs.services[0].service, "http");

    let missing = fleet
        .request::<LogsReply>(Verb::Logs, &LogsRequest::new("nope".parse()?))
        .await?;
    assert_eq!(missing.map_err(|e| e.kind), Err(ErrorKind::NotFound));

    // Live log tail: a session of long polls over the device's own command subject.
    use harmony_fleet_contracts::sessions::{
        LogChunk, LogsStreamRequest, SessionAck, SessionOpened, ShellChunk, ShellRequest,
    };
    let opened: SessionOpened = fleet
        .request(
            Verb::LogsStream,
            &LogsStreamRequest::Open {
                deployment: "web".parse()?,
                service: None,
                tail_lines: Some(5),
            },
        )
        .await??;
    let poll = LogsStreamRequest::Poll {
        session: opened.session.clone(),
        wait_ms: Some(1000),
    };
    eventually("a followed log line", SLOW, || async {
        let chunk: LogChunk = fleet.request(Verb::LogsStream, &poll).await.ok()?.ok()?;
        chunk
            .lines
            .iter()
            .any(|l| l.service == "http" && l.line.contains("serving v1"))
            .then_some(())
    })
    .await?;
    let _: SessionAck = fleet
        .request(
            Verb::LogsStream,
            &LogsStreamRequest::Close {
                session: opened.session.clone(),
            },
        )
        .await??;
    let gone = fleet.request::<LogChunk>(Verb::LogsStream, &poll).await?;
    assert_eq!(gone.map_err(|e| e.kind), Err(ErrorKind::NotFound));

    // Shell: a pty on the device; typed input comes back as output.
    let opened: SessionOpened = fleet
        .request(Verb::Shell, &ShellRequest::Open { cols: 80, rows: 24 })
        .await??;
    let _: SessionAck = fleet
        .request(
            Verb::Shell,
            &ShellRequest::Input {
                session: opened.session.clone(),
                data: "echo h''i\n".into(),
            },
        )
        .await??;
    let poll = ShellRequest::Poll {
        session: opened.session.clone(),
        wait_ms: Some(1000),
    };
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + SLOW;
    while !seen.contains("hi\r\n") {
        assert!(
            std::time::Instant::now() < deadline,
            "no `hi` from the shell within {SLOW:?}: {seen:?}"
        );
        let chunk: ShellChunk = fleet.request(Verb::Shell, &poll).await??;
        seen.push_str(&chunk.data);
    }
    let _: SessionAck = fleet
        .request(
            Verb::Shell,
            &ShellRequest::Close {
                session: opened.session,
            },
        )
        .await??;
    Ok(())
}

#[test]
fn check_config_accepts_valid_and_rejects_unknown_keys() -> Result<()> {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_fleet-agent"));
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[agent]\ndevice_id = \"pi-1\"\ndata_dir = \"/tmp/x\"\n[nats]\nurls = [\"nats://127.0.0.1:1\"]\n",
    )?;
    let output = std::process::Command::new(&binary)
        .args(["check-config"])
        .arg(&good)
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[agent]\ndevice_id = \"pi-1\"\ndata_dir = \"/tmp/x\"\nheartbeat = 3\n[nats]\nurls = [\"nats://127.0.0.1:1\"]\n",
    )?;
    let output = std::process::Command::new(&binary)
        .env("FLEET_AGENT_CONFIG", &bad)
        .arg("check-config")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() || !stderr.contains("heartbeat") {
        bail!("unknown key not rejected: {stderr}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_in_order_to_completion_and_time_out() -> Result<()> {
    let fleet = Fleet::start("dev-init").await?;
    let _agent = fleet.start_agent()?;
    let shared = fleet.shared_dir.path();
    let volume = VolumeMount {
        source: shared.display().to_string(),
        target: "/data".into(),
        read_only: false,
    };
    let init = |name: &str, script: &str| {
        let mut init = InitContainer::new(name, "localhost/fleet-demo:v1");
        init.command = vec!["/bin/sh".into(), "-c".into(), script.into()];
        init.volumes = vec![volume.clone()];
        init.pull_policy = PullPolicy::Never;
        init
    };
    let mut payload = web("v1", free_port(), shared);
    payload.init_containers = vec![
        init("first", "echo first >> /data/order"),
        init("second", "echo second >> /data/order"),
    ];
    let hash = fleet.put("web", &payload).await?;
    fleet.wait_running("web", &hash).await?;
    assert_eq!(
        std::fs::read_to_string(shared.join("order"))?,
        "first\nsecond\n"
    );
    // Init containers are removed once done: only the service remains.
    assert_eq!(fleet.containers()?.len(), 1);

    let mut stuck = init("stuck", "sleep 60");
    stuck.timeout_seconds = 1;
    let mut payload = web("v2", free_port(), shared);
    payload.init_containers = vec![stuck];
    fleet.put("slow", &payload).await?;
    let failed = fleet
        .wait_state("slow", "slow: Failed", |s| s.phase == Phase::Failed)
        .await?;
    let reason = failed.last_error.unwrap_or_default();
    assert!(
        reason.contains("stuck") && reason.contains("1s"),
        "{reason}"
    );
    Ok(())
}

/// The built binary, killed on drop.
struct AgentProcess(std::process::Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn vm_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Footprint of the `fleet-agent` binary with 10 running deployments: prints idle RSS.
/// Run against the release build with
/// `FLEET_AGENT_BIN=target/release/fleet-agent cargo test -p harmony-fleet-agent --test agent
/// -- --ignored --nocapture footprint`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check; run on demand"]
async fn footprint_of_the_binary_with_ten_deployments() -> Result<()> {
    let fleet = Fleet::start("dev-footprint").await?;
    fleet.config()?;
    let binary = std::env::var_os("FLEET_AGENT_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_fleet-agent")),
        PathBuf::from,
    );
    let log = std::fs::File::create(fleet.data_dir.path().join("agent.log"))?;
    let child = std::process::Command::new(&binary)
        .arg("--config")
        .arg(fleet.data_dir.path().join("agent.toml"))
        .env("RUST_LOG", "warn")
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut agent = AgentProcess(child);
    let pid = agent.0.id();
    let mut hashes = Vec::new();
    for i in 0..10 {
        let mut service = Service::new("sleeper", "localhost/fleet-demo:v1");
        service.command = vec!["/bin/sleep".into(), "1000000".into()];
        service.pull_policy = PullPolicy::Never;
        let mut payload = PodmanV0::new(vec![service]);
        payload.stop_policy.grace_seconds = 1;
        hashes.push((
            format!("app-{i}"),
            fleet.put(&format!("app-{i}"), &payload).await?,
        ));
    }
    for (name, hash) in &hashes {
        fleet.wait_running(name, hash).await?;
    }
    let after_rollout = vm_kib(pid, "VmRSS:").unwrap_or(0);
    // A measurement window, not synchronisation: let heartbeats and periodic reconciles run.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let idle = vm_kib(pid, "VmRSS:").unwrap_or(0);
    let peak = vm_kib(pid, "VmHWM:").unwrap_or(0);
    let size = std::fs::metadata(&binary)?.len();
    println!(
        "footprint: binary {} ({size} bytes), RSS after rollout {after_rollout} KiB, \
         idle {idle} KiB, peak {peak} KiB, with 10 deployments",
        binary.display()
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = eventually("agent exits on SIGTERM", Duration::from_secs(20), || {
        let status = agent.0.try_wait().ok().flatten();
        async move { status }
    })
    .await?;
    assert!(status.success(), "agent exit status {status}");
    // Workloads outlive the agent.
    assert_eq!(fleet.containers()?.len(), 10);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_disconnected_converge_on_reconnect() -> Result<()> {
    let fleet = Fleet::start("dev-missed").await?;
    let agent = fleet.start_agent()?;
    let (web_port, api_port, old_port) = (free_port(), free_port(), free_port());
    let shared = fleet.shared_dir.path().to_owned();
    let v1 = fleet.put("web", &web("v1", web_port, &shared)).await?;
    let old = fleet.put("old", &web("v1", old_port, &shared)).await?;
    fleet.wait_running("web", &v1).await?;
    fleet.wait_running("old", &old).await?;
    agent.stop().await?;

    // Three changes, each with its notice, while nobody listens: an update, a new
    // deployment, a removal.
    let v2 = fleet.put("web", &web("v2", web_port, &shared)).await?;
    let api = fleet.put("api", &web("v1", api_port, &shared)).await?;
    fleet.write_desired("old", None).await?;

    let _agent = fleet.start_agent()?;
    fleet.wait_running("web", &v2).await?;
    fleet.wait_running("api", &api).await?;
    wait_http(web_port, "v2").await?;
    wait_http(api_port, "v1").await?;
    eventually("old removed", SLOW, || async {
        fleet.containers().ok().filter(|c| c.len() == 2).map(|_| ())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_desired_state_stream_is_followed_despite_lower_revisions() -> Result<()> {
    let mut fleet = Fleet::start("dev-recreated").await?;
    let _agent = fleet.start_agent()?;
    let port = free_port();
    let shared = fleet.shared_dir.path().to_owned();
    // Push the revisions up, so the recreated stream's are lower than every held one.
    let mut last = fleet.put("web", &web("v1", port, &shared)).await?;
    for n in 0..5 {
        let mut payload = web("v1", port, &shared);
        payload.services[0].env.insert("N".into(), n.to_string());
        last = fleet.put("web", &payload).await?;
    }
    fleet.wait_running("web", &last).await?;

    // An admin deletes and recreates the bucket; the operator writes v2 into it.
    let js = jetstream::new(fleet.admin.clone());
    js.delete_key_value(buckets::DESIRED_STATE).await?;
    fleet.desired = create_bucket(&js, &buckets::DESIRED_STATE_SPEC).await?;
    let v2 = fleet.put("web", &web("v2", port, &shared)).await?;
    fleet.wait_running("web", &v2).await?;
    wait_http(port, "v2").await?;
    Ok(())
}
