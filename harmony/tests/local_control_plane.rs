//! LocalControlPlane against the real etcd, kube-apiserver and kube-controller-manager: CRDs
//! from Rust types, custom resources (create, patch, watch, server-side apply on status),
//! finalizers, namespace deletion, kubectl with the written kubeconfig, and clean shutdown.
//!
//! One control plane serves the whole binary (a `OnceCell`); each test uses its own namespace
//! and creates its own `kube::Client` (a client belongs to the test's runtime).

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use harmony::local::{ControlPlaneOptions, LocalControlPlane};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::watcher;
use kube::{Api, Client, CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::OnceCell;

const DEADLINE: Duration = Duration::from_secs(60);
const MANAGER: &str = "harmony-local-test";

/// A custom resource defined in Rust; its CRD is generated from this type.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "test.harmony.nationtech.io",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    shortname = "wdg"
)]
struct WidgetSpec {
    size: i32,
    #[serde(default)]
    color: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct WidgetStatus {
    ready: bool,
    observed_size: i32,
}

static CONTROL_PLANE: OnceCell<LocalControlPlane> = OnceCell::const_new();

async fn control_plane() -> &'static LocalControlPlane {
    CONTROL_PLANE
        .get_or_init(|| async {
            let plane = LocalControlPlane::start(ControlPlaneOptions::default())
                .await
                .expect("the local control plane starts (run scripts/install-deps.sh first)");
            eprintln!("local control plane ready in {:?}", plane.startup_time());
            plane
        })
        .await
}

/// A client on this test's runtime, and a fresh namespace for the test.
async fn client_and_namespace(prefix: &str) -> (Client, String) {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let client = control_plane().await.client().await.expect("client");
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .expect("create namespace");
    (client, name)
}

async fn install_widget_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = Widget::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply CRD");
    tokio::time::timeout(
        DEADLINE,
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await
    .expect("CRD established within the deadline")
    .expect("watch CRD");
}

fn widget(name: &str, size: i32) -> Widget {
    Widget::new(name, WidgetSpec { size, color: None })
}

async fn next_event(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<watcher::Event<Widget>>,
) -> watcher::Event<Widget> {
    tokio::time::timeout(DEADLINE, events.recv())
        .await
        .expect("watch event within the deadline")
        .expect("watch open")
}

/// Polls `get_opt` until the object is gone.
async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + DEADLINE;
    while api.get_opt(name).await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "{name} still exists");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn custom_resources_from_a_rust_type_are_created_patched_watched_and_status_applied() {
    let (client, ns) = client_and_namespace("crud").await;
    install_widget_crd(&client).await;
    let widgets: Api<Widget> = Api::namespaced(client.clone(), &ns);

    // The watcher starts before any change, so every change below reaches it.
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let watch = tokio::spawn({
        let widgets = widgets.clone();
        async move {
            let mut stream = watcher(widgets, watcher::Config::default()).boxed();
            while let Some(event) = stream.try_next().await.expect("watch") {
                if events_tx.send(event).is_err() {
                    break;
                }
            }
        }
    });
    // The initial (empty) list completes first.
    loop {
        if matches!(next_event(&mut events).await, watcher::Event::InitDone) {
            break;
        }
    }

    let created = widgets
        .create(&PostParams::default(), &widget("w1", 1))
        .await
        .expect("create");
    assert_eq!(created.spec.size, 1);

    let patched = widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2, "color": "blue"}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(patched.spec.size, 2);
    assert_eq!(patched.spec.color.as_deref(), Some("blue"));

    // Server-side apply on the status subresource, as a controller reports status.
    let status = json!({
        "apiVersion": Widget::api_resource().api_version,
        "kind": "Widget",
        "status": {"ready": true, "observedSize": 2}
    });
    let applied = widgets
        .patch_status(
            "w1",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await
        .expect("apply status");
    assert_eq!(
        applied.status,
        Some(WidgetStatus {
            ready: true,
            observed_size: 2
        })
    );
    // The status subresource does not change the spec, and spec writes ignore status.
    assert_eq!(applied.spec.size, 2);
    let managers: Vec<String> = applied
        .managed_fields()
        .iter()
        .filter(|f| f.subresource.as_deref() == Some("status"))
        .filter_map(|f| f.manager.clone())
        .collect();
    assert_eq!(managers, vec![MANAGER.to_owned()]);

    widgets
        .delete("w1", &DeleteParams::default())
        .await
        .expect("delete");

    // The watcher saw create, patch, status and delete, in order.
    let mut sizes = Vec::new();
    let mut saw_status = false;
    loop {
        match next_event(&mut events).await {
            watcher::Event::Apply(w) => {
                sizes.push(w.spec.size);
                saw_status |= w.status.as_ref().is_some_and(|s| s.ready);
            }
            watcher::Event::Delete(w) => {
                assert_eq!(w.name_any(), "w1");
                break;
            }
            other => panic!("unexpected watch event {other:?}"),
        }
    }
    sizes.dedup();
    assert_eq!(sizes, vec![1, 2]);
    assert!(saw_status, "the watcher saw the status update");
    watch.abort();
}

#[tokio::test]
async fn a_finalizer_holds_deletion_until_it_is_removed() {
    let (client, ns) = client_and_namespace("fin").await;
    install_widget_crd(&client).await;
    let widgets: Api<Widget> = Api::namespaced(client, &ns);
    let mut held = widget("held", 1);
    held.metadata.finalizers = Some(vec!["test.harmony.nationtech.io/hold".to_owned()]);
    widgets
        .create(&PostParams::default(), &held)
        .await
        .expect("create");

    widgets
        .delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    let still_there = widgets.get("held").await.expect("held by the finalizer");
    assert!(still_there.metadata.deletion_timestamp.is_some());

    widgets
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("remove finalizer");
    wait_gone(&widgets, "held").await;
}

#[tokio::test]
async fn deleting_a_namespace_completes_and_removes_its_objects() {
    let (client, ns) = client_and_namespace("nsdel").await;
    install_widget_crd(&client).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    config_maps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("cm".into()),
                    ..ObjectMeta::default()
                },
                ..ConfigMap::default()
            },
        )
        .await
        .expect("config map");
    Api::<Widget>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &widget("w", 1))
        .await
        .expect("widget");

    let namespaces: Api<Namespace> = Api::all(client);
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .expect("delete namespace");
    // Only kube-controller-manager's namespace controller can finish this.
    wait_gone(&namespaces, &ns).await;
}

#[tokio::test]
async fn kubectl_works_with_the_written_kubeconfig() {
    let plane = control_plane().await;
    let output = plane
        .kubectl()
        .expect("kubectl is cached")
        .args(["get", "namespaces", "-o", "name"])
        .output()
        .await
        .expect("kubectl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.lines().any(|l| l == "namespace/default"), "{stdout}");

    let version = plane
        .kubectl()
        .expect("kubectl")
        .args(["version", "-o", "json"])
        .output()
        .await
        .expect("kubectl version");
    let version: serde_json::Value = serde_json::from_slice(&version.stdout).expect("version JSON");
    assert_eq!(
        version["serverVersion"]["gitVersion"], version["clientVersion"]["gitVersion"],
        "kubectl and kube-apiserver are the same build"
    );
}

#[tokio::test]
async fn dropping_a_control_plane_stops_every_process_and_removes_its_data_dir() {
    let plane = LocalControlPlane::start(ControlPlaneOptions {
        // Only etcd and the apiserver: this test is about shutdown, not controllers.
        controller_manager: false,
        ..ControlPlaneOptions::default()
    })
    .await
    .expect("start");
    let pids = plane.pids();
    assert_eq!(
        pids.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["etcd", "kube-apiserver"]
    );
    let dir = plane.data_dir().to_owned();
    assert!(dir.join("kubeconfig").is_file());
    drop(plane);
    for (name, pid) in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{name} ({pid}) survived the drop"
        );
    }
    assert!(!dir.exists(), "{} not removed", dir.display());
}

#[tokio::test]
async fn a_kept_data_dir_keeps_cluster_state_across_restarts() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join(".fleet-local");
    let options = ControlPlaneOptions {
        data_dir: Some(dir.clone()),
        keep_data_dir: true,
        controller_manager: false,
        ..ControlPlaneOptions::default()
    };
    let first = LocalControlPlane::start(options.clone())
        .await
        .expect("first start");
    let namespaces: Api<Namespace> = Api::all(first.client().await.expect("client"));
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some("survivor".into()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .expect("create namespace");
    first.stop().await;
    assert!(dir.join("etcd").is_dir(), "kept data dir was removed");

    let second = LocalControlPlane::start(options)
        .await
        .expect("second start");
    let namespaces: Api<Namespace> = Api::all(second.client().await.expect("client"));
    assert!(
        namespaces.get_opt("survivor").await.expect("get").is_some(),
        "state from the first run is gone"
    );
}
