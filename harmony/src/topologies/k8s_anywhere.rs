//! [`K8sAnywhereTopology`]: any reachable Kubernetes cluster.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::OnceCell;
use tracing::debug;

use crate::capability::K8sClient;
use crate::interpret::{BoxError, InterpretError, Outcome};
use crate::topology::Topology;

const NAME: &str = "K8sAnywhereTopology";

/// An existing Kubernetes cluster, wherever it runs (cloud, on-prem, a local control plane).
///
/// Constructors are cheap and do no I/O; the client is built on first use (in
/// [`ensure_ready`](Topology::ensure_ready) or [`k8s_client`](K8sClient::k8s_client)) and then
/// shared. Offers the [`K8sClient`] capability.
pub struct K8sAnywhereTopology {
    source: Source,
    client: OnceCell<kube::Client>,
}

enum Source {
    /// `KUBECONFIG`, `~/.kube/config`, then the in-cluster service account (`Config::infer`).
    Infer,
    /// One kubeconfig file, its current context.
    Kubeconfig(PathBuf),
    /// A client built by the caller.
    Client,
}

impl fmt::Debug for K8sAnywhereTopology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(NAME)
            .field("source", &self.source_description())
            .field("connected", &self.client.initialized())
            .finish()
    }
}

impl Default for K8sAnywhereTopology {
    fn default() -> Self {
        Self::from_env()
    }
}

impl K8sAnywhereTopology {
    /// How long `ensure_ready` waits for the API server to answer its version request.
    pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

    /// The cluster named by the environment, as `kubectl` finds it: `KUBECONFIG`, else
    /// `~/.kube/config`, else the in-cluster service account.
    pub fn from_env() -> Self {
        Self {
            source: Source::Infer,
            client: OnceCell::new(),
        }
    }

    /// The cluster of the current context in the kubeconfig file at `path` (e.g. the file a
    /// local control plane writes). `KUBECONFIG` is ignored.
    pub fn from_kubeconfig(path: impl Into<PathBuf>) -> Self {
        Self {
            source: Source::Kubeconfig(path.into()),
            client: OnceCell::new(),
        }
    }

    /// The cluster `client` talks to.
    pub fn from_client(client: kube::Client) -> Self {
        Self {
            source: Source::Client,
            client: OnceCell::new_with(Some(client)),
        }
    }

    fn source_description(&self) -> String {
        match &self.source {
            Source::Infer => match std::env::var_os("KUBECONFIG") {
                Some(path) => format!("KUBECONFIG={}", path.to_string_lossy()),
                None => "KUBECONFIG unset (~/.kube/config or in-cluster)".to_string(),
            },
            Source::Kubeconfig(path) => format!("kubeconfig {}", path.display()),
            Source::Client => "a client given by the caller".to_string(),
        }
    }

    fn not_ready(&self, reason: String, source: Option<BoxError>) -> InterpretError {
        InterpretError::TopologyNotReady {
            topology: NAME.to_string(),
            reason,
            source,
        }
    }

    async fn client(&self) -> Result<&kube::Client, InterpretError> {
        self.client
            .get_or_try_init(|| async {
                let config = match &self.source {
                    Source::Infer => kube::Config::infer().await.map_err(|err| {
                        self.not_ready(
                            format!(
                                "no usable Kubernetes configuration ({}); set KUBECONFIG to a \
                                 kubeconfig file of a running cluster, or run inside a cluster \
                                 with a service account",
                                self.source_description()
                            ),
                            Some(Box::new(err)),
                        )
                    })?,
                    Source::Kubeconfig(path) => self.config_from_file(path).await?,
                    Source::Client => {
                        return Err(self
                            .not_ready("the caller-provided client is missing".to_string(), None));
                    }
                };
                debug!(cluster_url = %config.cluster_url, "building Kubernetes client");
                kube::Client::try_from(config).map_err(|err| {
                    self.not_ready(
                        format!(
                            "cannot build a Kubernetes client from {}; check its TLS and \
                             credential settings",
                            self.source_description()
                        ),
                        Some(Box::new(err)),
                    )
                })
            })
            .await
    }

    async fn config_from_file(&self, path: &Path) -> Result<kube::Config, InterpretError> {
        let kubeconfig = Kubeconfig::read_from(path).map_err(|err| {
            self.not_ready(
                format!(
                    "cannot read kubeconfig {}; check the file exists and is valid YAML",
                    path.display()
                ),
                Some(Box::new(err)),
            )
        })?;
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|err| {
                self.not_ready(
                    format!(
                        "kubeconfig {} has no usable current context; check current-context, \
                         its cluster and user entries",
                        path.display()
                    ),
                    Some(Box::new(err)),
                )
            })
    }
}

#[async_trait]
impl Topology for K8sAnywhereTopology {
    fn name(&self) -> &str {
        NAME
    }

    /// Builds the client and checks that the API server answers a version request within
    /// [`K8sAnywhereTopology::READY_TIMEOUT`].
    async fn ensure_ready(&self) -> Result<Outcome, InterpretError> {
        let client = self.client().await?;
        let version = tokio::time::timeout(Self::READY_TIMEOUT, client.apiserver_version())
            .await
            .map_err(|_elapsed| {
                self.not_ready(
                    format!(
                        "the API server ({}) did not answer within {:?}; check the \
                         cluster is running and reachable (`kubectl version`)",
                        self.source_description(),
                        Self::READY_TIMEOUT,
                    ),
                    None,
                )
            })?
            .map_err(|err| {
                self.not_ready(
                    format!(
                        "the API server ({}) refused the version request; check the cluster is \
                         running and KUBECONFIG points at it (`kubectl version`)",
                        self.source_description()
                    ),
                    Some(Box::new(err)),
                )
            })?;
        Ok(Outcome::noop(format!(
            "Kubernetes {} answers ({})",
            version.git_version,
            self.source_description()
        )))
    }
}

#[async_trait]
impl K8sClient for K8sAnywhereTopology {
    async fn k8s_client(&self) -> Result<kube::Client, InterpretError> {
        self.client().await.cloned().map_err(|err| match err {
            InterpretError::TopologyNotReady { reason, source, .. } => {
                InterpretError::CapabilityUnavailable {
                    capability: "K8sClient",
                    topology: NAME.to_string(),
                    reason,
                    source,
                }
            }
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_kubeconfig_file_is_not_ready_and_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nope.kubeconfig");
        let topology = K8sAnywhereTopology::from_kubeconfig(&path);
        let err = topology.ensure_ready().await.expect_err("no such file");
        assert!(matches!(err, InterpretError::TopologyNotReady { .. }));
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unreachable_api_server_is_not_ready_and_names_the_kubeconfig() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kubeconfig");
        // Port 1 on loopback: nothing listens there, so the connection is refused at once.
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{name: k, cluster: {server: 'http://127.0.0.1:1'}}]\n\
             users: [{name: u, user: {}}]\n\
             contexts: [{name: c, context: {cluster: k, user: u}}]\n",
        )
        .expect("write kubeconfig");
        let topology = K8sAnywhereTopology::from_kubeconfig(&path);
        let err = topology.ensure_ready().await.expect_err("nothing listens");
        let message = err.to_string();
        assert!(message.contains("kubectl version"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    #[tokio::test]
    async fn capability_error_names_k8s_client() {
        let topology = K8sAnywhereTopology::from_kubeconfig("/nonexistent/kubeconfig");
        let Err(err) = topology.k8s_client().await else {
            panic!("a missing kubeconfig must not give a client");
        };
        assert!(
            matches!(
                err,
                InterpretError::CapabilityUnavailable {
                    capability: "K8sClient",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
