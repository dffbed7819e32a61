//! Making the runtime match one deployment's desired payload.
//!
//! Two layers: [`plan`] is pure — desired payload + the containers observed for the deployment
//! ⇒ a [`Plan`] (what to keep, start, stop, create, whether init containers run) — and
//! [`reconcile`] executes a plan against a [`ContainerRuntime`] and reports an [`Outcome`].
//!
//! Changes are detected by comparing the payload hash each container carries as a label with
//! the hash of the desired bytes, never by guessing from `podman ps`: any change to the payload
//! (image, env, args, ports, …) gives a new hash, so the old containers are stopped gracefully
//! (their own stop signal, their own grace, then SIGKILL) before the new ones start. Running
//! containers with the desired hash are adopted as they are, which is what makes an agent
//! restart invisible to workloads.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use harmony_fleet_contracts::DeploymentName;
use harmony_fleet_contracts::canonical::ContentHash;
use harmony_fleet_contracts::payload::{
    DEFAULT_GRACE_SECONDS, InitContainer, PodmanV0, PullPolicy, RestartPolicy, Service,
};

use crate::runtime::{
    ContainerRuntime, ContainerSpec, ContainerState, ContainerSummary, LABEL_DEPLOYMENT,
    LABEL_INIT, LABEL_PAYLOAD_HASH, LABEL_SERVICE, LABEL_STOP_GRACE, PortMapping, RuntimeError,
    StopPolicy, VolumeMount,
};

/// A payload accepted for a deployment: what to run and the hash of the bytes it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The payload.
    pub payload: PodmanV0,
    /// SHA-256 of the exact bytes read from KV; labels every container created from it.
    pub hash: ContentHash,
}

/// What has to happen to one deployment's containers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Running containers of the desired revision, adopted as they are: service ⇒ id.
    pub keep: BTreeMap<String, String>,
    /// Stopped containers of the desired revision to start again: service ⇒ id.
    pub start: BTreeMap<String, String>,
    /// Containers to stop gracefully and remove (other revisions, removed services,
    /// duplicates, leftover init containers).
    pub remove: Vec<ContainerSummary>,
    /// Services to create, in payload order.
    pub create: Vec<String>,
    /// Whether the init containers run (in order) before anything is created: only when this
    /// revision has no container yet.
    pub run_init: bool,
}

impl Plan {
    /// Whether executing the plan would change nothing.
    pub fn is_noop(&self) -> bool {
        self.start.is_empty() && self.remove.is_empty() && self.create.is_empty()
    }
}

/// Should a container that exited with `code` be started again?
fn wants_restart(policy: RestartPolicy, code: i32) -> bool {
    match policy {
        RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        RestartPolicy::OnFailure => code != 0,
        RestartPolicy::Never => false,
    }
}

/// Decide what to do. `observed` are the containers labelled with this deployment.
pub fn plan(desired: Option<&Desired>, observed: &[ContainerSummary]) -> Plan {
    let mut plan = Plan::default();
    let Some(desired) = desired else {
        plan.remove = observed.to_vec();
        return plan;
    };
    let services: BTreeMap<&str, &Service> = desired
        .payload
        .services
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let mut revision_seen = false;
    // Running containers first, so a duplicate that runs wins over one that does not.
    let mut ordered: Vec<&ContainerSummary> = observed.iter().collect();
    ordered.sort_by_key(|c| c.state != ContainerState::Running);
    for container in ordered {
        let same_revision = container.label(LABEL_PAYLOAD_HASH) == Some(&*desired.hash.hex());
        revision_seen |= same_revision;
        let is_init = container.label(LABEL_INIT) == Some("true");
        let service = container
            .label(LABEL_SERVICE)
            .and_then(|name| services.get(name).copied());
        let (Some(service), true, false) = (service, same_revision, is_init) else {
            plan.remove.push(container.clone());
            continue;
        };
        if plan.keep.contains_key(&service.name) || plan.start.contains_key(&service.name) {
            plan.remove.push(container.clone());
            continue;
        }
        match container.state {
            ContainerState::Running => {
                plan.keep.insert(service.name.clone(), container.id.clone());
            }
            ContainerState::Exited(code) if !wants_restart(service.restart_policy, code) => {
                // Finished for good (a one-shot service); keep it for its logs and exit code.
                plan.keep.insert(service.name.clone(), container.id.clone());
            }
            ContainerState::Exited(_) | ContainerState::Created | ContainerState::Other => {
                plan.start
                    .insert(service.name.clone(), container.id.clone());
            }
        }
    }
    plan.create = desired
        .payload
        .services
        .iter()
        .filter(|s| !plan.keep.contains_key(&s.name) && !plan.start.contains_key(&s.name))
        .map(|s| s.name.clone())
        .collect();
    plan.run_init =
        !revision_seen && !plan.create.is_empty() && !desired.payload.init_containers.is_empty();
    plan
}

/// Container name of a service: `<deployment>.<service>.<hash12>` (names and services have no
/// dots, so this never collides, and `podman ps` shows which revision runs).
pub fn service_container_name(
    deployment: &DeploymentName,
    service: &str,
    hash: &ContentHash,
) -> String {
    format!("{deployment}.{service}.{}", hash.short())
}

/// Container name of an init container: `<deployment>.<name>.<hash12>.init`.
pub fn init_container_name(deployment: &DeploymentName, name: &str, hash: &ContentHash) -> String {
    format!("{deployment}.{name}.{}.init", hash.short())
}

fn labels(
    deployment: &DeploymentName,
    name: &str,
    desired: &Desired,
    init: bool,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (LABEL_DEPLOYMENT.to_owned(), deployment.to_string()),
        (LABEL_SERVICE.to_owned(), name.to_owned()),
        (LABEL_PAYLOAD_HASH.to_owned(), desired.hash.to_string()),
        (
            LABEL_STOP_GRACE.to_owned(),
            desired.payload.stop_policy.grace_seconds.to_string(),
        ),
    ]);
    if init {
        labels.insert(LABEL_INIT.to_owned(), "true".to_owned());
    }
    labels
}

fn stop_policy(desired: &Desired) -> StopPolicy {
    StopPolicy {
        signal: desired.payload.stop_policy.signal.as_str().to_owned(),
        grace: Duration::from_secs(u64::from(desired.payload.stop_policy.grace_seconds)),
    }
}

fn volumes(volumes: &[harmony_fleet_contracts::payload::VolumeMount]) -> Vec<VolumeMount> {
    volumes
        .iter()
        .map(|v| VolumeMount {
            source: v.source.clone(),
            target: v.target.clone(),
            read_only: v.read_only,
        })
        .collect()
}

/// The container spec of a service.
pub fn service_spec(
    deployment: &DeploymentName,
    service: &Service,
    desired: &Desired,
) -> ContainerSpec {
    ContainerSpec {
        name: service_container_name(deployment, &service.name, &desired.hash),
        image: service.image.clone(),
        command: service.command.clone(),
        args: service.args.clone(),
        env: service.env.clone(),
        ports: service
            .ports
            .iter()
            .map(|p| PortMapping {
                host_ip: p.host_ip.map(|ip| ip.to_string()),
                host_port: u16::try_from(p.host_port).unwrap_or(0),
                container_port: u16::try_from(p.container_port).unwrap_or(0),
                protocol: p.protocol.as_podman().to_owned(),
            })
            .collect(),
        volumes: volumes(&service.volumes),
        labels: labels(deployment, &service.name, desired, false),
        restart: service.restart_policy,
        stop: stop_policy(desired),
    }
}

/// The container spec of an init container.
pub fn init_spec(
    deployment: &DeploymentName,
    init: &InitContainer,
    desired: &Desired,
) -> ContainerSpec {
    ContainerSpec {
        name: init_container_name(deployment, &init.name, &desired.hash),
        image: init.image.clone(),
        command: init.command.clone(),
        args: init.args.clone(),
        env: init.env.clone(),
        ports: Vec::new(),
        volumes: volumes(&init.volumes),
        labels: labels(deployment, &init.name, desired, true),
        restart: RestartPolicy::Never,
        stop: StopPolicy {
            signal: "SIGTERM".to_owned(),
            grace: Duration::from_secs(5),
        },
    }
}

/// How one reconcile ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Every service has a running (or successfully finished) container.
    Running,
    /// Not there yet; a later reconcile will tell.
    Pending,
    /// Something failed; the message is the runtime's own error text.
    Failed(String),
    /// No desired state and no container left.
    Removed,
}

/// Result of [`reconcile`]: the health and the containers of the desired revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Overall health.
    pub health: Health,
    /// Service ⇒ container id, for services whose container exists.
    pub containers: BTreeMap<String, String>,
}

impl Outcome {
    fn failed(message: String, containers: BTreeMap<String, String>) -> Self {
        Self {
            health: Health::Failed(message),
            containers,
        }
    }
}

/// Containers labelled with `deployment`.
async fn observe<R: ContainerRuntime + ?Sized>(
    runtime: &R,
    deployment: &DeploymentName,
) -> Result<Vec<ContainerSummary>, RuntimeError> {
    Ok(runtime
        .list()
        .await?
        .into_iter()
        .filter(|c| c.label(LABEL_DEPLOYMENT) == Some(deployment.as_str()))
        .collect())
}

/// Stop (with the grace the container was created with) and remove.
async fn stop_and_remove<R: ContainerRuntime + ?Sized>(
    runtime: &R,
    container: &ContainerSummary,
) -> Result<(), RuntimeError> {
    let grace = container
        .label(LABEL_STOP_GRACE)
        .and_then(|g| g.parse::<u64>().ok())
        .unwrap_or(u64::from(DEFAULT_GRACE_SECONDS));
    if matches!(
        container.state,
        ContainerState::Running | ContainerState::Other
    ) {
        tracing::info!(container = %container.name, grace, "stopping container");
        runtime
            .stop(&container.id, Duration::from_secs(grace))
            .await?;
    }
    runtime.remove(&container.id).await
}

/// Make sure `image` is present, honouring the pull policy.
async fn ensure_image<R: ContainerRuntime + ?Sized>(
    runtime: &R,
    image: &str,
    policy: PullPolicy,
) -> Result<(), RuntimeError> {
    match policy {
        PullPolicy::Always => runtime.pull(image).await,
        PullPolicy::IfNotPresent => {
            if runtime.image_exists(image).await? {
                Ok(())
            } else {
                tracing::info!(image, "pulling image");
                runtime.pull(image).await
            }
        }
        PullPolicy::Never => {
            if runtime.image_exists(image).await? {
                Ok(())
            } else {
                Err(RuntimeError::ImageMissing {
                    image: image.to_owned(),
                })
            }
        }
    }
}

/// Bring `deployment` to `desired` (`None`: remove everything) and report how it went.
/// `progress` is called once, before anything is changed, when the plan is not a no-op.
pub async fn reconcile<R: ContainerRuntime + ?Sized>(
    runtime: &R,
    deployment: &DeploymentName,
    desired: Option<&Desired>,
    progress: &(dyn Fn(&Plan) + Sync),
) -> Outcome {
    let observed = match observe(runtime, deployment).await {
        Ok(observed) => observed,
        Err(err) => return Outcome::failed(err.to_string(), BTreeMap::new()),
    };
    let plan = plan(desired, &observed);
    if !plan.is_noop() {
        tracing::info!(
            %deployment,
            keep = plan.keep.len(),
            start = plan.start.len(),
            remove = plan.remove.len(),
            create = plan.create.len(),
            run_init = plan.run_init,
            "reconciling"
        );
        progress(&plan);
    }
    let mut containers = plan.keep.clone();

    // 1. Old revisions and removed services go first: graceful stops, in parallel, so a
    //    replacement can bind the same ports.
    let stops = plan.remove.iter().map(|c| stop_and_remove(runtime, c));
    let results = futures::future::join_all(stops).await;
    if let Some(err) = results.into_iter().find_map(Result::err) {
        return Outcome::failed(err.to_string(), containers);
    }
    let Some(desired) = desired else {
        return Outcome {
            health: Health::Removed,
            containers,
        };
    };
    let services: BTreeMap<&str, &Service> = desired
        .payload
        .services
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();

    // 2. Images, each once, with the policy of its first user.
    let mut checked = BTreeSet::new();
    let mut images: Vec<(&str, PullPolicy)> = Vec::new();
    if plan.run_init {
        images.extend(
            desired
                .payload
                .init_containers
                .iter()
                .map(|i| (i.image.as_str(), i.pull_policy)),
        );
    }
    images.extend(
        plan.create
            .iter()
            .filter_map(|name| services.get(name.as_str()))
            .map(|s| (s.image.as_str(), s.pull_policy)),
    );
    for (image, policy) in images {
        if checked.insert(image)
            && let Err(err) = ensure_image(runtime, image, policy).await
        {
            return Outcome::failed(err.to_string(), containers);
        }
    }

    // 3. Init containers, in order, each to completion within its timeout.
    if plan.run_init {
        for init in &desired.payload.init_containers {
            let spec = init_spec(deployment, init, desired);
            let timeout = Duration::from_secs(u64::from(init.timeout_seconds));
            tracing::info!(%deployment, init = %init.name, "running init container");
            match runtime.run_to_completion(&spec, timeout).await {
                Ok(done) if done.exit_code == 0 => {}
                Ok(done) => {
                    let mut message = format!(
                        "init container {} exited with code {}",
                        init.name, done.exit_code
                    );
                    if !done.output_tail.is_empty() {
                        message.push_str(": ");
                        message.push_str(&done.output_tail);
                    }
                    return Outcome::failed(message, containers);
                }
                Err(RuntimeError::Timeout { .. }) => {
                    return Outcome::failed(
                        format!(
                            "init container {} did not finish within {}s; it was killed",
                            init.name, init.timeout_seconds
                        ),
                        containers,
                    );
                }
                Err(err) => {
                    return Outcome::failed(
                        format!("init container {}: {err}", init.name),
                        containers,
                    );
                }
            }
        }
    }

    // 4. Stopped containers of this revision start again; missing services are created.
    for (service, id) in &plan.start {
        if let Err(err) = runtime.start(id).await {
            return Outcome::failed(format!("service {service}: {err}"), containers);
        }
        containers.insert(service.clone(), id.clone());
    }
    for name in &plan.create {
        let Some(service) = services.get(name.as_str()) else {
            continue;
        };
        match runtime
            .run(&service_spec(deployment, service, desired))
            .await
        {
            Ok(id) => {
                containers.insert(name.clone(), id);
            }
            Err(err) => return Outcome::failed(format!("service {name}: {err}"), containers),
        }
    }
    if plan.is_noop() {
        return assess(desired, &observed, containers);
    }

    // 5. Look again: a process may have exited right after it started.
    match observe(runtime, deployment).await {
        Ok(now) => assess(desired, &now, containers),
        Err(err) => Outcome::failed(err.to_string(), containers),
    }
}

/// Health of the desired revision from what the runtime shows.
fn assess(
    desired: &Desired,
    observed: &[ContainerSummary],
    containers: BTreeMap<String, String>,
) -> Outcome {
    for service in &desired.payload.services {
        let Some(id) = containers.get(&service.name) else {
            return Outcome {
                health: Health::Pending,
                containers,
            };
        };
        let state = observed.iter().find(|c| &c.id == id).map(|c| c.state);
        match state {
            Some(ContainerState::Running) => {}
            Some(ContainerState::Exited(0)) if !wants_restart(service.restart_policy, 0) => {}
            Some(ContainerState::Exited(code)) => {
                return Outcome::failed(
                    format!("service {} exited with code {code}", service.name),
                    containers,
                );
            }
            Some(ContainerState::Created | ContainerState::Other) | None => {
                return Outcome {
                    health: Health::Pending,
                    containers,
                };
            }
        }
    }
    Outcome {
        health: Health::Running,
        containers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;
    use harmony_fleet_contracts::payload::{ReconcileScore, StopPolicy as WireStop};

    const IMAGE_V1: &str = "localhost/fleet-demo:v1";
    const IMAGE_V2: &str = "localhost/fleet-demo:v2";

    fn deployment() -> DeploymentName {
        "web".parse().expect("deployment name")
    }

    fn desired(payload: PodmanV0) -> Desired {
        let bytes = serde_json::to_vec(&ReconcileScore::PodmanV0(payload.clone())).expect("json");
        Desired {
            payload,
            hash: ContentHash::of_bytes(&bytes),
        }
    }

    fn one_service(image: &str) -> Desired {
        desired(PodmanV0::new(vec![Service::new("http", image)]))
    }

    fn running(rt: &FakeRuntime) -> Vec<ContainerSummary> {
        rt.containers()
            .into_iter()
            .filter(|c| c.state == ContainerState::Running)
            .collect()
    }

    #[tokio::test]
    async fn fresh_deployment_creates_its_services_and_runs() {
        let rt = FakeRuntime::with_images(&[IMAGE_V1]);
        let want = one_service(IMAGE_V1);
        let outcome = reconcile(&rt, &deployment(), Some(&want), &|_| {}).await;
        assert_eq!(outcome.health, Health::Running);
        let containers = rt.containers();
        assert_eq!(containers.len(), 1);
        assert_eq!(outcome.containers["http"], containers[0].id);
        assert_eq!(
            containers[0].name,
            format!("web.http.{}", want.hash.short())
        );
        assert_eq!(
            containers[0].label(LABEL_PAYLOAD_HASH),
            Some(&*want.hash.hex())
        );
    }

    #[tokio::test]
    async fn second_reconcile_adopts_without_touching_anything() {
        let rt = FakeRuntime::with_images(&[IMAGE_V1]);
        let want = one_service(IMAGE_V1);
        let first = reconcile(&rt, &deployment(), Some(&want), &|_| {}).await;
        rt.clear_calls();
        let second = reconcile(&rt, &deployment(), Some(&want), &|_| {}).await;
        assert_eq!(second, first);
        assert!(rt.calls().is_empty(), "{:?}", rt.calls());
    }

    #[tokio::test]
    async fn changed_image_stops_old_gracefully_before_starting_new() {
        let rt = FakeRuntime::with_images(&[IMAGE_V1, IMAGE_V2]);
        let mut v1 = PodmanV0::new(vec![Service::new("http", IMAGE_V1)]);
        v1.stop_policy = WireStop {
            grace_seconds: 7,
            ..WireStop::default()
        };
        let old = reconcile(&rt, &deployment(), Some(&desired(v1)), &|_| {}).await;
        rt.clear_calls();
        let new = reconcile(&rt, &deployment(), Some(&one_service(IMAGE_V2)), &|_| {}).await;
        assert_eq!(new.health, Health::Running);
        let calls = rt.calls();
        let old_id = &old.containers["http"];
        assert_eq!(calls[0], format!("stop {old_id} 7"), "{calls:?}");
        assert_eq!(calls[1], format!("remove {old_id}"));
        assert!(calls[2].starts_with("run web.http."));
        let all = rt.containers();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].image, IMAGE_V2);
    }

    #[tokio::test]
    async fn env_only_change_replaces_the_container() {
        let rt = FakeRuntime::with_images(&[IMAGE_V1]);
        let v1 = one_service(IMAGE_V1);
        let mut changed = PodmanV0::new(vec![Service::new("http", IMAGE_V1)]);
        changed.services[0].env.insert("MODE".into(), "fast".into());
        let v2 = desired(changed);
        assert_ne!(v1.hash, v2.hash);
        let old = reconcile(&rt, &deployment(), Some(&v1), &|_| {}).await;
        let new = reconcile(&rt, &deployment(), Some(&v2), &|_| {}).await;
        assert_ne!(old.containers["http"], new.containers["http"]);
        assert_eq!(rt.containers().len(), 1);
    }

    #[tokio::test]
    async fn removed_service_is_stopped_and_others_kept() {
        let rt = FakeRuntime::with_images(&[IMAGE_V1]);
        let both = desired(PodmanV0::new(vec![
            Service::new("http", IMAGE_V1),
            Service::new("worker", IMAGE_V1),
        ]));
        reconcile(&rt, &deployment(), Some(&both), &|_| {}).await;
        assert_eq!(running(&rt).len(), 2);
        let only_http = one_service(IMAGE_V1);
        let outcome = reconcile(&rt, &deployment(), Some(&only_http), &|_| {}).await;
        assert_eq!(outcome.health, Health::Running);
        let left = rt.containers();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].label(LABEL_SERVICE), Some("http"));
    }

    #[tokio::test]
    async fn removal_deletes_every_container_of_the_deployment_only() {
        let rt = FakeRuntime::with_images(&[IMAGE_V1]);
        reconcile(&rt, &deployment(), Some(&one_service(IMAGE_V1)), &|_| {}).await;
        let other: DeploymentName = "other".parse().expect("name");
        reconcile(&rt, &other, Some(&one_service(IMAGE_V1)), &|_| {}).await;
        let outcome = reconcile(&rt, &deployment(), None, &|_| {}).await;
        assert_eq!(outcome.health, Health::Removed);
        let left = rt.containers();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].label(LABEL_DEPLOYMENT), Some("other"));
    }

    #[tokio::test]
    async fn never_pull_policy_with_missing_image_fails_naming_it() {
        let rt = FakeRuntime::with_images(&[]);
        let mut payload = PodmanV0::new(vec![Service::new("http", "localhost/absent:v9")]);
        payload.services[0].pull_policy = PullPolicy::Never;
        let outcome = reconcile(&rt, &deployment(), Some(&desired(payload)), &|_| {}).await;
        let Health::Failed(message) = outcome.health else {
            panic!("expected Failed, got {:?}", outcome.health);
        };
        assert!(message.contains("localhost/absent:v9"), "{message}");
        assert!(message.contains("Never"), "{message}");
        assert!(rt.calls().iter().all(|c| !c.starts_with("pull")));
    }

    #[tokio::test]
    async fn if_not_present_pulls_only_missing_images() {
        let rt = FakeRuntime::with_images(&[IMAGE_V1]);
        rt.allow_pull(IMAGE_V2);
        let payload = PodmanV0::new(vec![
            Service::new("a", IMAGE_V1),
            Service::new("b", IMAGE_V2),
        ]);
        let outcome = reconcile(&rt, &deployment(), Some(&desired(payload)), &|_| {}).await;
        assert_eq!(outcome.health, Health::Running);
        let pulls: Vec<_> = rt
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("pull"))
            .collect();
        assert_eq!(pulls, [format!("pull {IMAGE_V2}")]);
    }

    #[tokio::test]
    async fn failed_pull_reports_the_runtime_error() {
        let rt = FakeRuntime::with_images(&[]);
        let outcome = reconcile(
            &rt,
            &deployment(),
            Some(&one_service("localhost/nope:v1")),
            &|_| {},
        )
        .await;
        let Health::Failed(message) = outcome.health else {
            panic!("expected Failed");
        };
        assert!(message.contains("localhost/nope:v1"), "{message}");
    }

    #[tokio::test]
    async fn init_containers_run_in_order_before_services_and_only_once() {
        let rt = FakeRuntime::with_images(&[IMAGE_V1]);
        let mut payload = PodmanV0::new(vec![Service::new("http", IMAGE_V1)]);
        payload.init_containers = vec![
            InitContainer::new("migrate", IMAGE_V1),
            InitContainer::new("seed", IMAGE_V1),
        ];
        let want = desired(payload);
        reconcile(&rt, &deployment(), Some(&want), &|_| {}).await;
        let calls = rt.calls();
        let order: Vec<&str> = calls
            .iter()
            .map(|c| c.split(' ').next().unwrap_or_default())
            .collect();
        assert_eq!(order, ["init", "init", "run"], "{calls:?}");
        assert!(calls[0].contains(".migrate."));
        assert!(calls[1].contains(".seed."));
        rt.clear_calls();
        // A crashed service is restarted without running the init containers again.
        let id = rt.containers()[0].id.clone();
        rt.exit(&id, 1);
        let outcome = reconcile(&rt, &deployment(), Some(&want), &|_| {}).await;
        assert_eq!(outcome.health, Health::Running);
        assert_eq!(rt.calls(), [format!("start {id}")]);
    }

    #[tokio::test]
    async fn failing_init_container_stops_the_rollout() {
        let rt = FakeRuntime::with_images(&[IMAGE_V1]);
        rt.set_init_exit("web.migrate.", 2);
        let mut payload = PodmanV0::new(vec![Service::new("http", IMAGE_V1)]);
        payload.init_containers = vec![
            InitContainer::new("migrate", IMAGE_V1),
            InitContainer::new("seed", IMAGE_V1),
        ];
        let outcome = reconcile(&rt, &deployment(), Some(&desired(payload)), &|_| {}).await;
        let Health::Failed(message) = outcome.health else {
            panic!("expected Failed");
        };
        assert!(
            message.contains("migrate") && message.contains("code 2"),
            "{message}"
        );
        assert!(rt.containers().is_empty());
        assert_eq!(rt.calls().len(), 1, "seed must not run: {:?}", rt.calls());
    }

    #[test]
    fn plan_removes_duplicates_keeping_the_running_one() {
        let want = one_service(IMAGE_V1);
        let labels = labels(&deployment(), "http", &want, false);
        let make = |id: &str, state| ContainerSummary {
            id: id.into(),
            name: id.into(),
            image: IMAGE_V1.into(),
            state,
            labels: labels.clone(),
        };
        let observed = [
            make("exited", ContainerState::Exited(1)),
            make("running", ContainerState::Running),
        ];
        let plan = plan(Some(&want), &observed);
        assert_eq!(plan.keep["http"], "running");
        assert_eq!(plan.remove.len(), 1);
        assert_eq!(plan.remove[0].id, "exited");
        assert!(plan.create.is_empty() && !plan.run_init);
    }

    #[test]
    fn plan_keeps_finished_one_shot_services() {
        let mut payload = PodmanV0::new(vec![Service::new("job", IMAGE_V1)]);
        payload.services[0].restart_policy = RestartPolicy::Never;
        let want = desired(payload);
        let observed = [ContainerSummary {
            id: "done".into(),
            name: "done".into(),
            image: IMAGE_V1.into(),
            state: ContainerState::Exited(0),
            labels: labels(&deployment(), "job", &want, false),
        }];
        let plan = plan(Some(&want), &observed);
        assert!(plan.is_noop());
        assert_eq!(
            assess(&want, &observed, plan.keep.clone()).health,
            Health::Running
        );
    }
}
