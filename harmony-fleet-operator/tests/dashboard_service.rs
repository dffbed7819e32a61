//! Service tests of the real `FleetService` against a real kube-apiserver
//! (`LocalControlPlane`) and a real nats-server (`LocalNats`), with the operator running:
//! devices are simulated by writing `device-info`, heartbeats and `device-state` as agents do.
//!
//! Also the session bridge (live logs, shell) over real NATS, against a responder that
//! speaks the contract's session protocol the way an agent does (the agent's own pty and
//! podman side is tested in harmony-fleet-agent).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use harmony::local::{LocalNats, NatsOptions};
use harmony_fleet_contracts::commands::{CommandReply, Verb};
use harmony_fleet_contracts::ids::DeviceId;
use harmony_fleet_contracts::keys;
use harmony_fleet_contracts::payload::{PodmanV0, ReconcileScore, Service};
use harmony_fleet_contracts::sessions::{
    LogChunk, LogLine, LogsStreamRequest, SessionAck, SessionOpened, ShellChunk, ShellRequest,
};
use harmony_fleet_contracts::state::{DeploymentState, Phase};
use harmony_fleet_operator::OperatorHandle;
use harmony_fleet_operator::config::Config;
use harmony_fleet_operator::crd::{self, Device};
use harmony_fleet_operator::http::Readiness;
use harmony_fleet_operator::metrics::Metrics;
use harmony_fleet_operator::service::real::{RealFleetService, RealOptions};
use harmony_fleet_operator::service::{
    DeploymentRef, DeviceQuery, FleetService, LogEvent, ShellEvent, ShellInput, StatusFilter,
};
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/setup.rs"]
mod setup;
mod support;
use fleet::put_device;
use support::{DEADLINE, eventually, kubeconfig};

#[tokio::test]
async fn real_service_shows_the_fleet_and_blacklisting_removes_desired_state() -> Result<()> {
    let client = harmony::local::control_plane::client_from_kubeconfig(&kubeconfig()?).await?;
    let tag = setup::tag();
    let ns = format!("web-{tag}");
    setup::create_namespaces(&client, &[&ns]).await?;
    let (nats, nats_client, kv) = setup::fleet_nats().await?;
    let mut config = Config::for_nats(nats.url());
    config.namespace = Some(ns.clone());
    let operator: OperatorHandle = harmony_fleet_operator::start(
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

    let site = format!("s{tag}");
    let d1 = DeviceId::new(format!("d{tag}-1"))?;
    let d2 = DeviceId::new(format!("d{tag}-2"))?;
    put_device(&kv, &d1, &site).await?;
    put_device(&kv, &d2, &site).await?;
    let name = format!("app-{tag}");
    let score = ReconcileScore::PodmanV0(PodmanV0::new(vec![Service::new(
        "web",
        "localhost/demo:v1",
    )]));
    let body = json!({
        "apiVersion": "fleet.nationtech.io/v1alpha1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "targetSelector": { "matchLabels": { "site": site } },
            "score": serde_json::to_value(&score)?,
        }
    });
    Api::<crd::Deployment>::namespaced(client.clone(), &ns)
        .patch(
            &name,
            &PatchParams::apply("dashboard-tests").force(),
            &Patch::Apply(&body),
        )
        .await?;
    let key1 = format!("{d1}.{name}");
    let key2 = format!("{d2}.{name}");
    for key in [&key1, &key2] {
        eventually(&format!("desired-state key {key}"), || async {
            kv.desired.get(key).await.ok()?.map(|_| ())
        })
        .await?;
    }
    // d2 reports a failure of exactly the revision it was given (as its agent would).
    let given = kv.desired.get(&key2).await?.context("d2's desired state")?;
    let mut state = DeploymentState::new(Phase::Failed, Timestamp::now());
    state.payload_hash = Some(harmony_fleet_contracts::ContentHash::of_bytes(&given));
    state.set_last_error("image localhost/demo:v1 not found");
    kv.state
        .put(
            keys::state_key(&d2, &name.parse()?),
            serde_json::to_vec(&state)?.into(),
        )
        .await?;
    // The operator created the Device resources from device-info.
    let devices: Api<Device> = Api::all(client.clone());
    for d in [&d1, &d2] {
        eventually(&format!("Device {d}"), || async {
            devices.get(d.as_str()).await.ok().map(|_| ())
        })
        .await?;
    }

    let service = RealFleetService::start(
        nats_client.clone(),
        client.clone(),
        RealOptions {
            namespace: Some(ns.clone()),
            heartbeat_timeout: Duration::from_secs(90),
        },
    )
    .await?;
    tokio::time::timeout(DEADLINE, service.wait_ready())
        .await
        .context("service ready")??;

    let query = DeviceQuery {
        labels: harmony_fleet_operator::service::device_list::parse_selector(&format!(
            "site={site}"
        ))?,
        ..DeviceQuery::default()
    };
    let page = service.list_devices(&query).await?;
    assert_eq!(
        page.devices
            .iter()
            .map(|d| d.id.clone())
            .collect::<Vec<_>>(),
        [d1.clone(), d2.clone()]
    );
    assert!(page.devices.iter().all(|d| d.online && !d.blacklisted));
    let failing = eventually("d2 reported failing", || async {
        let q = DeviceQuery {
            status: Some(StatusFilter::Failing),
            ..query.clone()
        };
        let page = service.list_devices(&q).await.ok()?;
        (page.devices.len() == 1).then_some(page)
    })
    .await?;
    assert_eq!(failing.devices[0].id, d2);
    let detail = service.device(&d2).await?;
    assert_eq!(detail.deployments.len(), 1);
    assert_eq!(detail.deployments[0].services, ["web"]);

    let id = DeploymentRef {
        namespace: ns.clone(),
        name: name.clone(),
    };
    let deployment = eventually("deployment status with a failure", || async {
        let d = service.deployment(&id).await.ok()?;
        (d.summary.failed == 1).then_some(d)
    })
    .await?;
    assert_eq!(deployment.summary.matched, 2);
    assert_eq!(deployment.waves.len(), 1);
    assert_eq!(deployment.devices.len(), 2);
    assert_eq!(deployment.summary.images, ["localhost/demo:v1"]);
    let overview = service.overview().await?;
    let listed = overview
        .attention
        .iter()
        .find(|d| d.id == id)
        .context("the failing deployment needs attention")?;
    assert!(
        listed
            .attention
            .iter()
            .any(|a| a.reason == "DevicesFailing"),
        "{:?}",
        listed.attention
    );

    // Blacklist: the annotation is written, the operator removes the device's key.
    let row = service.set_blacklisted(&d1, true).await?;
    assert!(row.blacklisted);
    eventually("blacklisted device's key deleted", || async {
        kv.desired.get(&key1).await.ok()?.is_none().then_some(())
    })
    .await?;
    assert!(
        kv.desired.get(&key2).await?.is_some(),
        "other device keeps its key"
    );
    eventually("blacklisted device shown as such", || async {
        let page = service
            .list_devices(&DeviceQuery {
                status: Some(StatusFilter::Blacklisted),
                ..query.clone()
            })
            .await
            .ok()?;
        (page.devices.len() == 1 && page.devices[0].id == d1).then_some(())
    })
    .await?;
    // A new device-info of the blacklisted device does not bring its key back: a device
    // written after it gets its key, so the operator has seen both (the watch is ordered).
    put_device(&kv, &d1, &site).await?;
    let d3 = DeviceId::new(format!("d{tag}-3"))?;
    put_device(&kv, &d3, &site).await?;
    let key3 = format!("{d3}.{name}");
    eventually("a later device's key", || async {
        kv.desired.get(&key3).await.ok()?.map(|_| ())
    })
    .await?;
    assert!(kv.desired.get(&key1).await?.is_none());

    // The audit trail: an Event on the Device names who did what.
    service
        .audit(harmony_fleet_operator::service::AuditEntry::now(
            "ops",
            d1.clone(),
            harmony_fleet_operator::service::AuditAction::Blacklisted,
        ))
        .await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(client.clone());
    eventually("the audit Event on the Device", || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(d1.as_str())
                    && e.reason.as_deref() == Some("Blacklisted")
                    && e.note.as_deref() == Some("ops blacklisted the device")
                    && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Device")
            })
            .map(|_| ())
    })
    .await?;
    // The operator's own Event says what blacklisting did (whoever set it, kubectl included).
    eventually("the operator's Blacklisted Event on the Device", || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(d1.as_str())
                    && e.reason.as_deref() == Some("Blacklisted")
                    && e.reporting_controller.as_deref() == Some("harmony-fleet-operator")
                    && e.type_.as_deref() == Some("Warning")
            })
            .map(|_| ())
    })
    .await?;

    // Released: the key comes back.
    let row = service.set_blacklisted(&d1, false).await?;
    assert!(!row.blacklisted);
    eventually("released device's key back", || async {
        kv.desired.get(&key1).await.ok()?.map(|_| ())
    })
    .await?;
    let missing = service
        .set_blacklisted(&DeviceId::new(format!("d{tag}-9"))?, true)
        .await
        .expect_err("unknown device");
    assert!(missing.to_string().contains("not found"), "{missing}");
    drop(operator);
    Ok(())
}

/// A responder that serves `logs-stream` and `shell` for `device` like an agent: the log tail
/// emits a line per poll, the shell echoes input back and ends on `exit`.
async fn fake_agent(
    client: async_nats::Client,
    device: DeviceId,
) -> Result<tokio::task::JoinHandle<Vec<String>>> {
    let mut sub = client
        .subscribe(keys::command_serve_pattern(&device))
        .await?;
    Ok(tokio::spawn(async move {
        let mut ops = Vec::new();
        let mut polls = 0u32;
        let mut pending = String::new();
        let mut exited = false;
        while let Some(msg) = sub.next().await {
            let Some(reply) = msg.reply.clone() else {
                continue;
            };
            let verb = msg
                .subject
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_owned();
            let body: Vec<u8> = if verb == Verb::LogsStream.as_str() {
                match serde_json::from_slice::<LogsStreamRequest>(&msg.payload) {
                    Ok(LogsStreamRequest::Open { .. }) => {
                        ops.push("logs:open".to_owned());
                        serde_json::to_vec(&CommandReply::Result(SessionOpened {
                            session: "l1".parse().expect("id"),
                        }))
                    }
                    Ok(LogsStreamRequest::Poll { .. }) => {
                        polls += 1;
                        serde_json::to_vec(&CommandReply::Result(LogChunk {
                            lines: vec![LogLine {
                                service: "web".into(),
                                line: format!("line {polls}"),
                            }],
                            ..LogChunk::default()
                        }))
                    }
                    Ok(LogsStreamRequest::Close { .. }) => {
                        ops.push("logs:close".to_owned());
                        serde_json::to_vec(&CommandReply::Result(SessionAck {}))
                    }
                    Err(e) => panic!("bad logs-stream request: {e}"),
                }
            } else {
                match serde_json::from_slice::<ShellRequest>(&msg.payload) {
                    Ok(ShellRequest::Open { cols, rows }) => {
                        ops.push(format!("shell:open {cols}x{rows}"));
                        serde_json::to_vec(&CommandReply::Result(SessionOpened {
                            session: "s1".parse().expect("id"),
                        }))
                    }
                    Ok(ShellRequest::Input { data, .. }) => {
                        ops.push(format!("shell:input {data:?}"));
                        if data.contains("exit") {
                            exited = true;
                        } else {
                            pending.push_str(&data);
                        }
                        serde_json::to_vec(&CommandReply::Result(SessionAck {}))
                    }
                    Ok(ShellRequest::Resize { cols, rows, .. }) => {
                        ops.push(format!("shell:resize {cols}x{rows}"));
                        serde_json::to_vec(&CommandReply::Result(SessionAck {}))
                    }
                    Ok(ShellRequest::Poll { .. }) => {
                        // Answer at once when there is output, else after a short wait, like
                        // the agent's long poll.
                        if pending.is_empty() && !exited {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        let chunk = ShellChunk {
                            data: std::mem::take(&mut pending),
                            ended: exited,
                            exit_code: exited.then_some(0),
                            ..ShellChunk::default()
                        };
                        serde_json::to_vec(&CommandReply::Result(chunk))
                    }
                    Ok(ShellRequest::Close { .. }) => {
                        ops.push("shell:close".to_owned());
                        serde_json::to_vec(&CommandReply::Result(SessionAck {}))
                    }
                    Err(e) => panic!("bad shell request: {e}"),
                }
            }
            .expect("encodes");
            let _ = client.publish(reply, body.into()).await;
            if ops.last().is_some_and(|op| op == "logs:close") {
                return ops;
            }
        }
        ops
    }))
}

#[tokio::test]
async fn sessions_bridge_logs_and_shell_over_nats_and_close_on_drop() -> Result<()> {
    let nats = LocalNats::start(NatsOptions::default()).await?;
    let client = async_nats::connect(nats.url()).await?;
    let device = DeviceId::new(format!("d{}-s", setup::tag()))?;
    let agent = fake_agent(client.clone(), device.clone()).await?;
    let commands = harmony_fleet_operator::commands::CommandsClient::new(client.clone());

    let mut shell = harmony_fleet_operator::service::bridge::open_shell(
        commands.clone(),
        device.clone(),
        80,
        24,
    )
    .await?;
    shell
        .input
        .send(ShellInput::Resize {
            cols: 100,
            rows: 30,
        })
        .await?;
    shell
        .input
        .send(ShellInput::Data("echo hi\r".into()))
        .await?;
    let mut seen = String::new();
    while !seen.contains("echo hi") {
        match tokio::time::timeout(DEADLINE, shell.output.recv()).await? {
            Some(ShellEvent::Output(text)) => seen.push_str(&text),
            other => bail!("unexpected shell event {other:?}"),
        }
    }
    shell.input.send(ShellInput::Data("exit\r".into())).await?;
    let end = loop {
        match tokio::time::timeout(DEADLINE, shell.output.recv()).await? {
            Some(ShellEvent::Output(_)) => continue,
            other => break other,
        }
    };
    assert_eq!(end, Some(ShellEvent::Exited(Some(0))));

    let mut logs = harmony_fleet_operator::service::bridge::stream_logs(
        commands,
        device.clone(),
        "web".parse()?,
    )
    .await?;
    for n in 1..=3 {
        let event = tokio::time::timeout(DEADLINE, logs.next()).await?;
        assert_eq!(
            event,
            Some(LogEvent::Line {
                service: "web".into(),
                line: format!("line {n}"),
            })
        );
    }
    drop(logs);
    let ops = tokio::time::timeout(DEADLINE, agent).await??;
    assert_eq!(ops.first().map(String::as_str), Some("shell:open 80x24"));
    assert!(ops.contains(&"shell:resize 100x30".to_owned()), "{ops:?}");
    assert!(ops.contains(&"logs:open".to_owned()), "{ops:?}");
    assert_eq!(
        ops.last().map(String::as_str),
        Some("logs:close"),
        "dropping the stream closes the session"
    );
    Ok(())
}

#[tokio::test]
async fn offline_devices_are_reported_as_offline() -> Result<()> {
    let nats = LocalNats::start(NatsOptions::default()).await?;
    let client = async_nats::connect(nats.url()).await?;
    let commands = harmony_fleet_operator::commands::CommandsClient::new(client);
    let device = DeviceId::new(format!("d{}-off", setup::tag()))?;
    let err = harmony_fleet_operator::service::bridge::open_shell(commands, device, 80, 24)
        .await
        .expect_err("nobody answers");
    let err = harmony_fleet_operator::service::ServiceError::from(err);
    assert!(
        matches!(
            err,
            harmony_fleet_operator::service::ServiceError::Offline { .. }
        ),
        "{err}"
    );
    Ok(())
}
