//! [`TestNamespace`]: every test works in its own `e2e-<8 hex>` namespace, deleted on drop
//! (through the kube-controller-manager's namespace controller, like in a real cluster).

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use rand::Rng;

/// Prefix of every test namespace; stale ones are pruned at bring-up.
pub const PREFIX: &str = "e2e-";

/// A namespace owned by one test.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    /// A suffix unique to this test (also used for deployment names and ports).
    pub id: String,
    client: kube::Client,
    runtime: tokio::runtime::Handle,
}

impl TestNamespace {
    /// Creates `e2e-<8 hex>`.
    pub async fn create(
        client: kube::Client,
        runtime: tokio::runtime::Handle,
    ) -> anyhow::Result<Self> {
        let id = format!("{:08x}", rand::rng().random::<u32>());
        let name = format!("{PREFIX}{id}");
        let api: Api<Namespace> = Api::all(client.clone());
        api.create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await?;
        Ok(TestNamespace {
            name,
            id,
            client,
            runtime,
        })
    }
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish()
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let name = self.name.clone();
        // Fire and forget on the stack's runtime: the test's own runtime is shutting down.
        self.runtime.spawn(async move {
            let _ = api.delete(&name, &DeleteParams::background()).await;
        });
    }
}

/// Deletes every `e2e-*` namespace (leftovers of runs that did not finish).
pub async fn prune(client: &kube::Client) -> anyhow::Result<usize> {
    let api: Api<Namespace> = Api::all(client.clone());
    let mut pruned = 0;
    for ns in api.list(&ListParams::default()).await?.items {
        if let Some(name) = ns.metadata.name.filter(|n| n.starts_with(PREFIX)) {
            api.delete(&name, &DeleteParams::background()).await?;
            pruned += 1;
        }
    }
    Ok(pruned)
}
