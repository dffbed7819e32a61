//! "Needs attention" tells the truth, with status written by the real operator: the operator
//! runs against a real kube-apiserver (`LocalControlPlane`) and a real nats-server
//! (`LocalNats`); Deployments are applied that it refuses (`InvalidScore`, `NameConflict`),
//! that match no device, whose device reports `Failed`, and whose device goes offline. The
//! dashboard's pages are then rendered through the real router and the real `FleetService`,
//! and every reason and message the operator wrote must be on them.
//!
//! Devices are simulated by writing `device-info`, heartbeats and `device-state` as agents do
//! (the agent itself is tested in harmony-fleet-agent and the e2e suite).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use harmony_fleet_contracts::ids::DeviceId;
use harmony_fleet_contracts::keys;
use harmony_fleet_contracts::payload::{PodmanV0, ReconcileScore, Service};
use harmony_fleet_contracts::state::{DeploymentState, Phase};
use harmony_fleet_operator::config::Config;
use harmony_fleet_operator::crd;
use harmony_fleet_operator::http::Readiness;
use harmony_fleet_operator::metrics::Metrics;
use harmony_fleet_operator::service::real::{RealFleetService, RealOptions};
use harmony_fleet_operator::web::boundary::{AllowedHosts, CsrfToken};
use harmony_fleet_operator::web::{Assets, Auth, Boundary, Sessions, WebState, app};
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tower::ServiceExt;

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/setup.rs"]
mod setup;
mod support;
use fleet::{beat, put_device};
use support::{DEADLINE, eventually, kubeconfig};

/// Heartbeat timeout of the operator and the dashboard: short, so a device goes offline
/// within the test.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(4);
const LISTEN: &str = "127.0.0.1:18081";

async fn apply_deployment(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    site: &str,
    score: serde_json::Value,
) -> Result<()> {
    let body = json!({
        "apiVersion": "fleet.nationtech.io/v1alpha1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "targetSelector": { "matchLabels": { "site": site } },
            "score": score,
        }
    });
    Api::<crd::Deployment>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::apply("dashboard-tests").force(),
            &Patch::Apply(&body),
        )
        .await
        .with_context(|| format!("applying Deployment {namespace}/{name}"))?;
    Ok(())
}

/// The operator's condition of `type_` on a Deployment, once it has one with `reason`.
async fn condition(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    type_: &str,
    reason: &str,
) -> Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let api = Api::<crd::Deployment>::namespaced(client.clone(), namespace);
    eventually(
        &format!("{namespace}/{name}: condition {type_} with reason {reason}"),
        || async {
            let d = api.get(name).await.ok()?;
            d.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == type_ && c.reason == reason)
        },
    )
    .await
}

/// What maud writes for `text` in an element.
fn escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn render(router: &axum::Router, path: &str) -> Result<String> {
    let request = Request::get(path)
        .header(header::HOST, LISTEN)
        .body(Body::empty())?;
    let response = router.clone().oneshot(request).await?;
    anyhow::ensure!(
        response.status() == StatusCode::OK,
        "{path}: {}",
        response.status()
    );
    let bytes = axum::body::to_bytes(response.into_body(), 8 << 20).await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn overview_and_deployments_show_the_reasons_and_messages_the_operator_wrote() -> Result<()> {
    let client = harmony::local::control_plane::client_from_kubeconfig(&kubeconfig()?).await?;
    let tag = setup::tag();
    let (ns_a, ns_b) = (format!("att-a-{tag}"), format!("att-b-{tag}"));
    setup::create_namespaces(&client, &[&ns_a, &ns_b]).await?;
    let (nats, nats_client, kv) = setup::fleet_nats().await?;
    let mut config = Config::for_nats(nats.url());
    config.heartbeat_timeout = HEARTBEAT_TIMEOUT;
    let operator = harmony_fleet_operator::start(
        config,
        client.clone(),
        nats_client.clone(),
        Metrics::new(),
        Readiness::default(),
    )
    .await?;
    let readiness = operator.readiness.clone();
    eventually("operator converged", || async {
        readiness.is_converged().then_some(())
    })
    .await?;

    // Three devices of one site; d1 and d2 keep beating, d3 falls silent (goes offline).
    let site = format!("s{tag}");
    let [d1, d2, d3] = [1, 2, 3].map(|i| DeviceId::new(format!("a{tag}-{i}")));
    let (d1, d2, d3) = (d1?, d2?, d3?);
    for d in [&d1, &d2, &d3] {
        put_device(&kv, d, &site).await?;
    }
    let beating = {
        let (kv, d1, d2) = (kv.clone(), d1.clone(), d2.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                for d in [&d1, &d2] {
                    if let Err(e) = beat(&kv, d).await {
                        eprintln!("heartbeat of {d}: {e:#}");
                    }
                }
            }
        })
    };

    let good = serde_json::to_value(ReconcileScore::PodmanV0(PodmanV0::new(vec![Service::new(
        "web",
        "localhost/demo:v1",
    )])))?;
    let empty = serde_json::to_value(ReconcileScore::PodmanV0(PodmanV0::new(Vec::new())))?;
    let app = format!("app-{tag}");
    let bad = format!("bad-{tag}");
    let lonely = format!("none-{tag}");
    apply_deployment(&client, &ns_a, &app, &site, good.clone()).await?;
    apply_deployment(&client, &ns_a, &bad, &site, empty).await?;
    apply_deployment(
        &client,
        &ns_a,
        &lonely,
        &format!("nowhere-{tag}"),
        good.clone(),
    )
    .await?;
    // The name is taken by ns_a once the operator serves it; then ns_b claims it too.
    for d in [&d1, &d2, &d3] {
        let key = format!("{d}.{app}");
        eventually(&format!("desired-state key {key}"), || async {
            kv.desired.get(&key).await.ok()?.map(|_| ())
        })
        .await?;
    }
    apply_deployment(&client, &ns_b, &app, &site, good).await?;

    // d2 reports a failure of exactly the revision it was given, as its agent would.
    let key2 = format!("{d2}.{app}");
    let given = kv.desired.get(&key2).await?.context("d2's desired state")?;
    let mut state = DeploymentState::new(Phase::Failed, Timestamp::now());
    state.payload_hash = Some(harmony_fleet_contracts::ContentHash::of_bytes(&given));
    state.set_last_error("image localhost/demo:v1 not found");
    kv.state
        .put(
            keys::state_key(&d2, &app.parse()?),
            serde_json::to_vec(&state)?.into(),
        )
        .await?;

    // What the operator wrote: these are the words the dashboard must show.
    let invalid = condition(&client, &ns_a, &bad, "Ready", "InvalidScore").await?;
    let conflict = condition(&client, &ns_b, &app, "Ready", "NameConflict").await?;
    let nothing = condition(&client, &ns_a, &lonely, "Ready", "NoMatchingDevices").await?;
    let degraded = condition(&client, &ns_a, &app, "Degraded", "DevicesFailing").await?;
    assert!(
        invalid.message.contains("spec.score is invalid"),
        "{invalid:?}"
    );
    assert!(conflict.message.contains(&ns_a), "{conflict:?}");
    eventually("the operator counts d3 offline", || async {
        let d = Api::<crd::Deployment>::namespaced(client.clone(), &ns_a)
            .get(&app)
            .await
            .ok()?;
        (d.status?.aggregate.offline == 1).then_some(())
    })
    .await?;

    let service = RealFleetService::start(
        nats_client.clone(),
        client.clone(),
        RealOptions {
            namespace: None,
            heartbeat_timeout: HEARTBEAT_TIMEOUT,
        },
    )
    .await?;
    tokio::time::timeout(DEADLINE, service.wait_ready())
        .await
        .context("service ready")??;
    let router = app_router(service)?;

    let overview = eventually("the overview shows what the operator wrote", || async {
        let body = render(&router, "/").await.ok()?;
        body.contains(&escaped(&degraded.message)).then_some(body)
    })
    .await?;
    assert!(!overview.contains("Nothing needs attention"));
    let deployments = render(&router, "/deployments").await?;
    assert!(
        !deployments.contains("no status yet"),
        "refused Deployments say why"
    );
    for (page, body) in [("overview", &overview), ("deployments", &deployments)] {
        for (reason, message) in [
            ("InvalidScore", invalid.message.as_str()),
            ("NameConflict", conflict.message.as_str()),
            ("NoMatchingDevices", nothing.message.as_str()),
            ("DevicesFailing", degraded.message.as_str()),
            ("DevicesOffline", "1 of 3 matched devices are offline"),
        ] {
            assert!(
                body.contains(&format!(r#"data-attention="{reason}""#)),
                "{page} misses reason {reason}"
            );
            assert!(
                body.contains(&escaped(message)),
                "{page} misses the message of {reason}: {message}"
            );
        }
        assert!(
            body.contains("image localhost/demo:v1 not found"),
            "{page} names the failing device's error"
        );
    }
    // The overview lists each Deployment by namespace and name.
    for (ns, name) in [
        (&ns_a, &bad),
        (&ns_b, &app),
        (&ns_a, &lonely),
        (&ns_a, &app),
    ] {
        assert!(
            overview.contains(&format!(r#"data-deployment="{ns}/{name}""#)),
            "overview misses {ns}/{name}"
        );
    }
    // The offline device is on the overview too, and the devices page filters it.
    assert!(overview.contains(&format!(r#"href="/devices/{d3}""#)));
    let offline = render(
        &router,
        &format!("/devices?status=offline&label=site%3D{site}"),
    )
    .await?;
    assert_eq!(offline.matches(r#"<tr id="device-"#).count(), 1);
    assert!(offline.contains(&format!(r#"<tr id="device-{d3}""#)));

    beating.abort();
    drop(operator);
    Ok(())
}

fn app_router(service: RealFleetService) -> Result<axum::Router> {
    Ok(app(WebState {
        service: Arc::new(service),
        assets: Assets::new(None, false),
        auth: Auth::Open,
        boundary: Boundary {
            hosts: AllowedHosts::new(LISTEN.parse()?, &[])?,
            csrf: CsrfToken::new("attention-test"),
        },
        sessions: Sessions::default(),
    }))
}
