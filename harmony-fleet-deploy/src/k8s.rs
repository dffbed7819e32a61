//! Applying the objects of a cluster install and waiting for the workloads they describe.
//!
//! Every object a Score applies is built by a pure function (so tests and the Helm chart see
//! exactly what a deploy applies) and applied here by server-side apply with one field manager.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use harmony::interpret::{InterpretError, Outcome};
use harmony::scores::{ApplyScope, Change, apply_object};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::ListParams;
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::wait::{self, Poll};

/// Labels every fleet object carries.
pub fn labels(component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), component.to_owned()),
        (
            "app.kubernetes.io/part-of".to_owned(),
            crate::PART_OF.to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            crate::FIELD_MANAGER.to_owned(),
        ),
    ])
}

/// Metadata of a fleet object.
pub fn meta(name: &str, namespace: Option<&str>, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(labels(component)),
        ..ObjectMeta::default()
    }
}

/// Accumulates what a series of applies did.
#[derive(Debug, Default)]
pub struct Applier {
    changed: bool,
    details: Vec<String>,
}

impl Applier {
    /// Applies `object` and records the change.
    pub async fn apply<K>(
        &mut self,
        client: &kube::Client,
        object: &K,
    ) -> Result<(), InterpretError>
    where
        K: Resource + Clone + Debug + Serialize + DeserializeOwned,
        K::DynamicType: Default,
        K::Scope: ApplyScope,
    {
        let applied = apply_object(client, object, crate::FIELD_MANAGER).await?;
        if applied.change != Change::Unchanged {
            self.changed = true;
        }
        self.details
            .push(format!("{} {}", applied.change, applied.description));
        Ok(())
    }

    /// Records an outcome of a nested step.
    pub fn record(&mut self, outcome: &Outcome) {
        self.changed |= outcome.changed();
        self.details.push(outcome.message.clone());
    }

    /// Records a change made outside [`Self::apply`] (e.g. a Secret created once).
    pub fn note(&mut self, detail: impl Into<String>) {
        self.changed = true;
        self.details.push(detail.into());
    }

    /// Whether anything changed so far.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// The outcome: `Success` when anything changed, else `Noop`.
    pub fn outcome(self, message: impl Into<String>) -> Outcome {
        let outcome = if self.changed {
            Outcome::success(message)
        } else {
            Outcome::noop(message)
        };
        outcome.with_details(self.details)
    }
}

/// Why the pods selected by `selector` in `namespace` are not ready, in one line.
async fn pod_report(client: &kube::Client, namespace: &str, selector: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match pods.list(&ListParams::default().labels(selector)).await {
        Ok(list) if list.items.is_empty() => {
            "no pods yet (is a controller-manager with the workload controllers running?)".into()
        }
        Ok(list) => {
            let mut lines = Vec::with_capacity(list.items.len());
            for pod in &list.items {
                let line = pod_line(pod);
                let pending =
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
                if pending {
                    let claims = claims_report(client, namespace, pod).await;
                    lines.push(if claims.is_empty() {
                        line
                    } else {
                        format!("{line} ({claims})")
                    });
                } else {
                    lines.push(line);
                }
            }
            lines.join("; ")
        }
        Err(e) => format!("pods could not be listed: {e}"),
    }
}

/// A pod's name, phase and the message of its first condition that does not hold.
fn pod_line(pod: &Pod) -> String {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Unknown");
    let reason = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.status != "True"))
        .and_then(|c| c.message.clone().or_else(|| c.reason.clone()))
        .unwrap_or_else(|| {
            if pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_none()
            {
                "not scheduled to any node".into()
            } else {
                String::new()
            }
        });
    format!("{name} {phase} {reason}").trim().to_owned()
}

/// For a pending pod: each claim it mounts, its phase and, when not bound, the latest event
/// about it (a failed provisioning names its cause there). A bound claim under a pod still
/// reported as waiting for it says the scheduler has not looked again yet.
async fn claims_report(client: &kube::Client, namespace: &str, pod: &Pod) -> String {
    let claims: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.as_str())
        .collect();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let mut parts = Vec::with_capacity(claims.len());
    for claim in claims {
        let part = match api.get_opt(claim).await {
            Ok(Some(pvc)) => {
                let phase = pvc
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .unwrap_or("Unknown");
                let class = pvc
                    .spec
                    .as_ref()
                    .and_then(|s| s.storage_class_name.as_deref())
                    .unwrap_or("no storage class");
                if phase == "Bound" {
                    format!("claim {claim} Bound")
                } else {
                    let event = latest_event(client, namespace, "PersistentVolumeClaim", claim)
                        .await
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default();
                    format!("claim {claim} {phase}, class {class}{event}")
                }
            }
            Ok(None) => format!("claim {claim} does not exist"),
            Err(e) => format!("claim {claim} could not be read: {e}"),
        };
        parts.push(part);
    }
    parts.join(", ")
}

/// The message of the most recent event about `kind`/`name`, if any can be read.
async fn latest_event(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
) -> Option<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let fields = format!("involvedObject.kind={kind},involvedObject.name={name}");
    let events = api
        .list(&ListParams::default().fields(&fields))
        .await
        .ok()?;
    events
        .items
        .into_iter()
        .max_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0))
        .and_then(|e| {
            let message = e.message?;
            Some(match e.reason {
                Some(reason) => format!("{reason} {message}"),
                None => message,
            })
        })
}

/// Waits until the StatefulSet has `replicas` ready pods.
pub async fn wait_statefulset_ready(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    replicas: i32,
    selector: &str,
    deadline: Duration,
) -> Result<(), InterpretError> {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    wait::until(
        &format!("StatefulSet {namespace}/{name} to have {replicas} ready replica(s)"),
        deadline,
        || async {
            match api.get_opt(name).await {
                Ok(Some(set)) => {
                    let status = set.status.unwrap_or_default();
                    let ready = status.ready_replicas.unwrap_or(0);
                    let updated = status.updated_replicas.unwrap_or(0);
                    // A changed template rolls the pods one at a time: until the last one runs
                    // the new revision, some server still runs the old configuration.
                    let rolled = status.update_revision.is_none()
                        || status.current_revision == status.update_revision;
                    if ready >= replicas && updated >= replicas && rolled {
                        Poll::Ready(())
                    } else {
                        Poll::Pending(format!(
                            "{ready}/{replicas} ready, {updated} on the new revision; pods: {}",
                            pod_report(client, namespace, selector).await
                        ))
                    }
                }
                Ok(None) => Poll::Pending("the StatefulSet does not exist".into()),
                Err(e) => Poll::Pending(e.to_string()),
            }
        },
    )
    .await
}

/// Waits until the Deployment has all its replicas available.
pub async fn wait_deployment_available(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    selector: &str,
    deadline: Duration,
) -> Result<(), InterpretError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    wait::until(
        &format!("Deployment {namespace}/{name} to be available"),
        deadline,
        || async {
            match api.get_opt(name).await {
                Ok(Some(deployment)) => {
                    let wanted = deployment.spec.and_then(|s| s.replicas).unwrap_or(1);
                    let available = deployment
                        .status
                        .and_then(|s| s.available_replicas)
                        .unwrap_or(0);
                    if available >= wanted {
                        Poll::Ready(())
                    } else {
                        Poll::Pending(format!(
                            "{available}/{wanted} available; pods: {}",
                            pod_report(client, namespace, selector).await
                        ))
                    }
                }
                Ok(None) => Poll::Pending("the Deployment does not exist".into()),
                Err(e) => Poll::Pending(e.to_string()),
            }
        },
    )
    .await
}

/// A label selector string for `labels(component)`'s name label.
pub fn selector(component: &str) -> String {
    format!("app.kubernetes.io/name={component}")
}
