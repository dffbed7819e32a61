//! [`LocalControlPlane`]: a real Kubernetes control plane on this host — etcd, kube-apiserver and
//! kube-controller-manager — started from the binaries `scripts/install-deps.sh` caches.
//!
//! Like controller-runtime's envtest there is no scheduler and no kubelet (pods never run); the
//! API, CRDs, RBAC, admission, watches, finalizers, namespace deletion and owner-reference
//! garbage collection are the real thing.
//!
//! Layout of the data directory:
//! `pki/` (certificates), `etcd/` (etcd data), `logs/<process>.log`, `kubeconfig`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::local::bins::{self, BinLocator};
use crate::local::certs::{ADMIN_USER, PkiFiles};
use crate::local::data_dir::DataDir;
use crate::local::error::{LocalError, Result};
use crate::local::ports::{self, START_ATTEMPTS};
use crate::local::probe;
use crate::local::process::{LOG_TAIL_LINES, ProcessSpec, SupervisedProcess};

/// Controllers the local kube-controller-manager runs: namespace deletion, owner-reference
/// garbage collection, and the service-account machinery (the `default` service account and the
/// `kube-root-ca.crt` config map are what workloads and the readiness check expect).
pub const CONTROLLERS: &str = "namespace-controller,garbage-collector-controller,\
serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller";

/// Controllers added when a local node runs Pods (adr/0030): workloads, Services' endpoints,
/// Pod garbage collection, the node lifecycle (it lifts the `not-ready` taint a kubelet
/// registers with), and volumes: claims bound to hostPath volumes the controller-manager
/// provisions itself (`--enable-hostpath-provisioner`, class `kubernetes.io/host-path`).
pub const WORKLOAD_CONTROLLERS: &str = "deployment-controller,replicaset-controller,\
statefulset-controller,daemonset-controller,job-controller,endpoints-controller,\
endpointslice-controller,endpointslice-mirroring-controller,disruption-controller,\
pod-garbage-collector-controller,ttl-after-finished-controller,node-lifecycle-controller,\
persistentvolume-binder-controller,persistentvolume-protection-controller,\
persistentvolumeclaim-protection-controller";

/// The service CIDR handed to kube-apiserver (Services get traffic only on a local node).
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.0.0.0/24";

/// The kubeconfig context (and cluster) name of every local control plane.
pub const CONTEXT: &str = "harmony-local";
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to start a [`LocalControlPlane`].
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// Where to put certificates, etcd data, logs and the kubeconfig. `None`: a fresh temporary
    /// directory.
    pub data_dir: Option<PathBuf>,
    /// Keep a caller-given `data_dir` when the control plane stops (temporary ones are always
    /// removed).
    pub keep_data_dir: bool,
    /// Where the upstream binaries are looked up.
    pub bins: BinLocator,
    /// Deadline for each server to become ready (etcd, apiserver, controller-manager).
    pub ready_timeout: Duration,
    /// Start kube-controller-manager (namespace deletion, garbage collection). Without it,
    /// deleted namespaces stay `Terminating` forever.
    pub controller_manager: bool,
    /// Extra kube-apiserver flags (`--name=value`), appended after the harness's own.
    pub extra_apiserver_args: Vec<String>,
    /// Start the servers so they can outlive this process (see
    /// [`LocalControlPlane::detach`]); off for tests, so a crashed run leaves nothing behind.
    pub detached: bool,
    /// The host's address on a local node's link (adr/0030). When set, the apiserver also
    /// listens there and advertises it (the `kubernetes` Service of in-cluster clients), its
    /// certificate names it and the Service's ClusterIP, ServiceAccount admission is on, and
    /// kube-scheduler plus the workload controllers run.
    pub node_access: Option<std::net::Ipv4Addr>,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        ControlPlaneOptions {
            data_dir: None,
            keep_data_dir: false,
            bins: BinLocator::from_env(),
            ready_timeout: Duration::from_secs(90),
            controller_manager: true,
            extra_apiserver_args: Vec::new(),
            detached: false,
            node_access: None,
        }
    }
}

/// A running local control plane; dropping it stops every process and removes its data
/// directory (unless the caller's directory was to be kept).
#[derive(Debug)]
pub struct LocalControlPlane {
    scheduler: Option<SupervisedProcess>,
    controller_manager: Option<SupervisedProcess>,
    apiserver: Option<SupervisedProcess>,
    etcd: Option<SupervisedProcess>,
    pki: PkiFiles,
    kubeconfig: PathBuf,
    api_port: u16,
    etcd_port: u16,
    kubectl: Option<PathBuf>,
    startup_time: Duration,
    // Last: removed only after the processes using it are stopped (see Drop).
    dir: Option<DataDir>,
}

impl LocalControlPlane {
    /// Starts etcd, kube-apiserver and (unless disabled) kube-controller-manager on free
    /// loopback ports, and returns once the API answers `GET /api/v1/namespaces/default` and
    /// the controller-manager has created the `default` service account.
    ///
    /// Fails with [`LocalError::MissingBinary`] before starting anything when a binary is not
    /// installed, and with [`LocalError::NotReady`] (including the log tail) when a server does
    /// not come up.
    pub async fn start(options: ControlPlaneOptions) -> Result<Self> {
        let started = Instant::now();
        let etcd_bin = options.bins.locate(bins::ETCD)?;
        let apiserver_bin = options.bins.locate(bins::KUBE_APISERVER)?;
        let kcm_bin = if options.controller_manager {
            Some(options.bins.locate(bins::KUBE_CONTROLLER_MANAGER)?)
        } else {
            None
        };
        let kubectl = options.bins.locate(bins::KUBECTL).ok();
        let scheduler_bin = match options.node_access {
            Some(_) => Some(options.bins.locate(bins::KUBE_SCHEDULER)?),
            None => None,
        };

        let dir = match &options.data_dir {
            Some(path) => DataDir::given(path, options.keep_data_dir)?,
            None => DataDir::temporary("cp")?,
        };
        let root = dir.path().to_owned();
        let extra_names: Vec<String> = options
            .node_access
            .iter()
            .map(ToString::to_string)
            .chain(options.node_access.iter().flat_map(|_| {
                [
                    KUBERNETES_SERVICE_IP,
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ]
                .map(str::to_owned)
            }))
            .collect();
        let pki = PkiFiles::generate_with_names(&root.join("pki"), &extra_names)?;
        let kubeconfig = root.join("kubeconfig");

        let mut plane = LocalControlPlane {
            scheduler: None,
            controller_manager: None,
            apiserver: None,
            etcd: None,
            pki,
            kubeconfig,
            api_port: 0,
            etcd_port: 0,
            kubectl,
            startup_time: Duration::ZERO,
            dir: Some(dir),
        };

        let (etcd, etcd_port) = start_etcd(&etcd_bin, &root, &options).await?;
        plane.etcd = Some(etcd);
        plane.etcd_port = etcd_port;
        tracing::debug!(
            port = etcd_port,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "etcd ready"
        );

        plane.start_apiserver(&apiserver_bin, &options).await?;
        tracing::debug!(
            port = plane.api_port,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "kube-apiserver ready"
        );

        if let Some(kcm_bin) = kcm_bin {
            plane.start_controller_manager(&kcm_bin, &options).await?;
        }
        if let Some(bin) = scheduler_bin {
            plane.start_scheduler(&bin, &options)?;
        }

        plane.startup_time = started.elapsed();
        tracing::info!(
            api = %plane.api_url(),
            kubeconfig = %plane.kubeconfig.display(),
            startup_ms = plane.startup_time.as_millis() as u64,
            "local control plane ready"
        );
        Ok(plane)
    }

    /// The kubeconfig (admin identity), usable by kubectl, kube-rs and kube-controller-manager.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A new `kube::Client` from the written kubeconfig.
    ///
    /// A client belongs to the tokio runtime it was created on: create one per runtime (per
    /// test), while the control plane itself may be shared.
    pub async fn client(&self) -> Result<Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// `https://127.0.0.1:<port>` of kube-apiserver.
    pub fn api_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// `http://127.0.0.1:<port>` of etcd.
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    /// The generated certificates and keys.
    pub fn pki(&self) -> &PkiFiles {
        &self.pki
    }

    /// The data directory (certificates, etcd data, logs, kubeconfig).
    pub fn data_dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), DataDir::path)
    }

    /// Directory holding one log file per process.
    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir().join("logs")
    }

    /// How long [`LocalControlPlane::start`] took until everything was ready.
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    /// `(name, pid)` of every running process, in start order.
    pub fn pids(&self) -> Vec<(String, u32)> {
        [
            &self.etcd,
            &self.apiserver,
            &self.controller_manager,
            &self.scheduler,
        ]
        .into_iter()
        .flatten()
        .map(|p| (p.name().to_owned(), p.pid()))
        .collect()
    }

    /// A `kubectl` command (the cached one, same version as the apiserver) already pointed at
    /// this control plane's kubeconfig.
    pub fn kubectl(&self) -> Result<tokio::process::Command> {
        let program = match &self.kubectl {
            Some(path) => path.clone(),
            None => BinLocator::from_env().locate(bins::KUBECTL)?,
        };
        let mut command = tokio::process::Command::new(program);
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        Ok(command)
    }

    /// Stops kube-controller-manager, kube-apiserver and etcd (in that order, each SIGTERM
    /// then SIGKILL) and removes the data directory unless it is to be kept.
    pub async fn stop(mut self) {
        for process in [
            &mut self.scheduler,
            &mut self.controller_manager,
            &mut self.apiserver,
            &mut self.etcd,
        ] {
            if let Some(mut p) = process.take() {
                p.stop().await;
            }
        }
        self.dir.take();
    }

    /// Stops supervising the servers and lets them run on, keeping the data directory; returns
    /// `(name, pid)` of each so the caller can record and later stop them. Only a plane started
    /// with [`ControlPlaneOptions::detached`] survives this process's exit.
    pub fn detach(mut self) -> Vec<(String, u32)> {
        let mut detached = Vec::new();
        for process in [
            self.etcd.take(),
            self.apiserver.take(),
            self.controller_manager.take(),
            self.scheduler.take(),
        ]
        .into_iter()
        .flatten()
        {
            detached.push((process.name().to_owned(), process.detach()));
        }
        if let Some(dir) = self.dir.take() {
            dir.keep();
        }
        detached
    }

    async fn start_apiserver(
        &mut self,
        program: &Path,
        options: &ControlPlaneOptions,
    ) -> Result<()> {
        let root = self.data_dir().to_owned();
        let mut last_error = None;
        for attempt in 1..=START_ATTEMPTS {
            let port = ports::free_port()?;
            self.api_port = port;
            write_kubeconfig(&self.kubeconfig, port, &self.pki)?;
            let pki = &self.pki;
            let spec = ProcessSpec::new(
                "kube-apiserver",
                program,
                root.join("logs/kube-apiserver.log"),
            )
            .args([
                format!("--etcd-servers={}", self.etcd_url()),
                format!("--secure-port={port}"),
                format!(
                    "--cert-dir={}",
                    root.join("pki/apiserver-generated").display()
                ),
                format!("--tls-cert-file={}", pki.server_cert.display()),
                format!("--tls-private-key-file={}", pki.server_key.display()),
                format!("--client-ca-file={}", pki.ca_cert.display()),
                format!("--service-account-issuer=https://127.0.0.1:{port}"),
                format!(
                    "--service-account-key-file={}",
                    pki.service_account_pub.display()
                ),
                format!(
                    "--service-account-signing-key-file={}",
                    pki.service_account_key.display()
                ),
                format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
                "--authorization-mode=RBAC".to_owned(),
                "--allow-privileged=true".to_owned(),
                // Parallel tests on 2 cores otherwise get 429s from priority & fairness.
                "--enable-priority-and-fairness=false".to_owned(),
                "--max-requests-inflight=0".to_owned(),
                "--max-mutating-requests-inflight=0".to_owned(),
                // Debian's etcd 3.4.23 predates 3.4.31: no watch progress requests, so
                // WatchList streams would fail.
                "--feature-gates=WatchList=false".to_owned(),
                "--profiling=false".to_owned(),
            ])
            .args(node_apiserver_args(options.node_access))
            .args(options.extra_apiserver_args.iter().cloned())
            .stop_timeout(Duration::from_secs(15))
            .detached(options.detached);
            let mut process = SupervisedProcess::spawn(spec)?;
            let kubeconfig = self.kubeconfig.clone();
            let ready = process
                .wait_ready(options.ready_timeout, PROBE_INTERVAL, || {
                    apiserver_ready(kubeconfig.clone())
                })
                .await;
            match ready {
                Ok(()) => {
                    self.apiserver = Some(process);
                    return Ok(());
                }
                Err(e)
                    if attempt < START_ATTEMPTS
                        && ports::is_addr_in_use(&process.log_tail(LOG_TAIL_LINES)) =>
                {
                    tracing::debug!(port, "kube-apiserver lost its port; retrying on another");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| LocalError::Config("no start attempt was made".into())))
    }

    async fn start_controller_manager(
        &mut self,
        program: &Path,
        options: &ControlPlaneOptions,
    ) -> Result<()> {
        let root = self.data_dir().to_owned();
        let pki = &self.pki;
        let spec = ProcessSpec::new(
            "kube-controller-manager",
            program,
            root.join("logs/kube-controller-manager.log"),
        )
        .args([
            format!("--kubeconfig={}", self.kubeconfig.display()),
            "--leader-elect=false".to_owned(),
            match options.node_access {
                Some(_) => format!("--controllers={CONTROLLERS},{WORKLOAD_CONTROLLERS}"),
                None => format!("--controllers={CONTROLLERS}"),
            },
            format!(
                "--enable-hostpath-provisioner={}",
                options.node_access.is_some()
            ),
            "--use-service-account-credentials=false".to_owned(),
            // Level 2 logs provisioning and binding of volumes and the workload controllers'
            // decisions: what a claim or a pod that never comes needs.
            "--v=2".to_owned(),
            format!(
                "--service-account-private-key-file={}",
                pki.service_account_key.display()
            ),
            format!("--root-ca-file={}", pki.ca_cert.display()),
            // No HTTPS endpoint at all: nothing to bind, no port to pick.
            "--secure-port=0".to_owned(),
            "--feature-gates=WatchListClient=false".to_owned(),
            "--profiling=false".to_owned(),
        ])
        .detached(options.detached);
        let mut process = SupervisedProcess::spawn(spec)?;
        let kubeconfig = self.kubeconfig.clone();
        process
            .wait_ready(options.ready_timeout, PROBE_INTERVAL, || {
                controller_manager_ready(kubeconfig.clone())
            })
            .await?;
        self.controller_manager = Some(process);
        Ok(())
    }
}

impl LocalControlPlane {
    /// kube-scheduler (with a local node): no HTTPS endpoint, no leader election. Its readiness
    /// shows when the node's first Pod is bound.
    fn start_scheduler(&mut self, program: &Path, options: &ControlPlaneOptions) -> Result<()> {
        let root = self.data_dir().to_owned();
        let spec = ProcessSpec::new(
            "kube-scheduler",
            program,
            root.join("logs/kube-scheduler.log"),
        )
        .args([
            format!("--kubeconfig={}", self.kubeconfig.display()),
            "--leader-elect=false".to_owned(),
            "--secure-port=0".to_owned(),
            "--feature-gates=WatchListClient=false".to_owned(),
            "--profiling=false".to_owned(),
            // Level 2 says why each pod waits and when it is bound: what a stuck rollout needs.
            "--v=2".to_owned(),
            // A pod set aside as unschedulable waits for an event that may make it fit (its claim
            // bound, a node added); if that event is missed it is tried again only after this
            // long. Upstream's 5 min suits a large cluster; on one local node a retry costs
            // nothing and a StatefulSet's pod waiting minutes for an already bound claim fails
            // the bring-up's deadline. (Deprecated flag, still read by 1.34.)
            "--pod-max-in-unschedulable-pods-duration=20s".to_owned(),
        ])
        .detached(options.detached);
        self.scheduler = Some(SupervisedProcess::spawn(spec)?);
        Ok(())
    }
}

/// The ClusterIP of the `kubernetes` Service (first address of [`SERVICE_CLUSTER_IP_RANGE`]).
pub const KUBERNETES_SERVICE_IP: &str = "10.0.0.1";

/// The apiserver flags that differ with a local node: without one it stays on loopback (these
/// hosts have no default route to derive an address from, and the `kubernetes` endpoints
/// reconciler rejects a loopback address); with one it listens everywhere on this host and
/// advertises the node link's host address, and Pods get service-account tokens.
fn node_apiserver_args(node_access: Option<std::net::Ipv4Addr>) -> Vec<String> {
    match node_access {
        None => vec![
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            "--endpoint-reconciler-type=none".to_owned(),
            // As envtest: no token controller is needed for pods that never run.
            "--disable-admission-plugins=ServiceAccount".to_owned(),
        ],
        Some(host) => vec![
            "--bind-address=0.0.0.0".to_owned(),
            format!("--advertise-address={host}"),
            // The node's name resolves nowhere: logs and exec go to its InternalIP.
            "--kubelet-preferred-address-types=InternalIP".to_owned(),
        ],
    }
}

impl Drop for LocalControlPlane {
    fn drop(&mut self) {
        for process in [
            &mut self.scheduler,
            &mut self.controller_manager,
            &mut self.apiserver,
            &mut self.etcd,
        ] {
            if let Some(mut p) = process.take() {
                p.stop_blocking();
            }
        }
        self.dir.take();
    }
}

/// A `kube::Client` for `kubeconfig`'s current context (rustls).
pub async fn client_from_kubeconfig(kubeconfig: &Path) -> Result<Client> {
    let bad = |message: String| LocalError::Kubeconfig {
        path: kubeconfig.to_owned(),
        message,
    };
    let parsed = Kubeconfig::read_from(kubeconfig).map_err(|e| bad(e.to_string()))?;
    let config = Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    Client::try_from(config).map_err(|e| bad(e.to_string()))
}

async fn start_etcd(
    program: &Path,
    root: &Path,
    options: &ControlPlaneOptions,
) -> Result<(SupervisedProcess, u16)> {
    let timeout = options.ready_timeout;
    let data = root.join("etcd");
    let mut last_error = None;
    for attempt in 1..=START_ATTEMPTS {
        let picked = ports::free_ports(2)?;
        let (client, peer) = (picked[0], picked[1]);
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let spec = ProcessSpec::new("etcd", program, root.join("logs/etcd.log"))
            .args([
                "--name=default".to_owned(),
                format!("--data-dir={}", data.display()),
                // Real ports: etcd's gateway dials the client URL literally, so `:0` breaks it.
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                // Throw-away data: durability buys nothing and costs seconds on slow disks.
                "--unsafe-no-fsync".to_owned(),
                "--logger=zap".to_owned(),
                "--log-level=warn".to_owned(),
            ])
            .detached(options.detached);
        let mut process = SupervisedProcess::spawn(spec)?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], client));
        let ready = process
            .wait_ready(timeout, Duration::from_millis(100), || async move {
                let response = probe::http_get(addr, "/health", PROBE_TIMEOUT).await?;
                if response.status == 200 && response.body.contains("true") {
                    Ok(())
                } else {
                    Err(format!(
                        "/health answered {}: {}",
                        response.status, response.body
                    ))
                }
            })
            .await;
        match ready {
            Ok(()) => return Ok((process, client)),
            Err(e)
                if attempt < START_ATTEMPTS
                    && ports::is_addr_in_use(&process.log_tail(LOG_TAIL_LINES)) =>
            {
                tracing::debug!(client, peer, "etcd lost its port; retrying on another");
                drop(process);
                // A half-initialised member would remember the lost peer URL.
                let _ = std::fs::remove_dir_all(&data);
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| LocalError::Config("no start attempt was made".into())))
}

/// `/readyz` answers `ok` and the `default` namespace exists.
async fn apiserver_ready(kubeconfig: PathBuf) -> std::result::Result<(), String> {
    let client = client_from_kubeconfig(&kubeconfig)
        .await
        .map_err(|e| e.to_string())?;
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let readyz = tokio::time::timeout(PROBE_TIMEOUT, client.request_text(request))
        .await
        .map_err(|_| "/readyz: no answer".to_owned())?
        .map_err(|e| format!("/readyz: {e}"))?;
    if readyz.trim() != "ok" {
        return Err(format!("/readyz answered {readyz:?}"));
    }
    tokio::time::timeout(PROBE_TIMEOUT, Api::<Namespace>::all(client).get("default"))
        .await
        .map_err(|_| "GET namespace default: no answer".to_owned())?
        .map_err(|e| format!("GET namespace default: {e}"))?;
    Ok(())
}

/// The controller-manager's service-account controller has created `default/default`: its
/// informers are synced and its controllers run.
async fn controller_manager_ready(kubeconfig: PathBuf) -> std::result::Result<(), String> {
    let client = client_from_kubeconfig(&kubeconfig)
        .await
        .map_err(|e| e.to_string())?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client, "default");
    match tokio::time::timeout(PROBE_TIMEOUT, accounts.get_opt("default")).await {
        Ok(Ok(Some(_))) => Ok(()),
        Ok(Ok(None)) => Err("service account default/default not created yet".to_owned()),
        Ok(Err(e)) => Err(format!("GET serviceaccount default/default: {e}")),
        Err(_) => Err("GET serviceaccount default/default: no answer".to_owned()),
    }
}

/// Writes a kubeconfig whose files are referenced by absolute path (read by kubectl, kube-rs
/// and the controller-manager alike).
fn write_kubeconfig(path: &Path, port: u16, pki: &PkiFiles) -> Result<()> {
    let q = |p: &Path| serde_json::Value::from(p.display().to_string()).to_string();
    let text = format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: {CONTEXT}\n  \
           cluster:\n    \
             server: https://127.0.0.1:{port}\n    \
             certificate-authority: {ca}\n\
         users:\n\
         - name: {ADMIN_USER}\n  \
           user:\n    \
             client-certificate: {cert}\n    \
             client-key: {key}\n\
         contexts:\n\
         - name: {CONTEXT}\n  \
           context:\n    \
             cluster: {CONTEXT}\n    \
             user: {ADMIN_USER}\n    \
             namespace: default\n\
         current-context: {CONTEXT}\n",
        ca = q(&pki.ca_cert),
        cert = q(&pki.admin_cert),
        key = q(&pki.admin_key),
    );
    std::fs::write(path, text)
        .map_err(|e| LocalError::io(format!("writing the kubeconfig {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_kubeconfig_parses_with_kube_rs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = PkiFiles::generate(&dir.path().join("pki")).expect("pki");
        let path = dir.path().join("kubeconfig");
        write_kubeconfig(&path, 6443, &pki).expect("write");
        let parsed = Kubeconfig::read_from(&path).expect("parse");
        assert_eq!(parsed.current_context.as_deref(), Some(CONTEXT));
        let cluster = parsed.clusters[0].cluster.as_ref().expect("cluster");
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(
            cluster.certificate_authority.as_deref(),
            Some(pki.ca_cert.to_str().expect("utf-8"))
        );
    }

    #[test]
    fn missing_binary_fails_before_anything_starts() {
        let empty = tempfile::tempdir().expect("tempdir");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let err = runtime
            .block_on(LocalControlPlane::start(ControlPlaneOptions {
                bins: BinLocator::in_dir(empty.path()),
                ..ControlPlaneOptions::default()
            }))
            .expect_err("no binaries");
        assert!(
            matches!(err, LocalError::MissingBinary { ref name, .. } if name == "etcd"),
            "{err}"
        );
        assert!(err.to_string().contains("scripts/install-deps.sh"));
    }
}
