//! The identity service: one task serving [`ENROLL_SUBJECT`] and [`RENEW_ALL`], watching
//! `Device` resources, and keeping the fleet account's revocations in step ([`decide`]).
//!
//! A pending enrollment request is held (its reply subject kept) until an admin approves the
//! key or [`IdentityOptions::hold`] passes, so approval reaches the device in one watch event
//! rather than a polling period; a request that times out is answered `Pending` and the
//! device asks again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::Subject;
use futures::StreamExt;
use harmony_fleet_contracts::bootstrap_token::DEFAULT_NAMESPACE;
use harmony_fleet_contracts::identity::{
    DEFAULT_CREDENTIAL_LIFETIME, ENROLL_SUBJECT, EnrollReply, EnrollRequest, IDENTITY_PREFIX,
    RENEW_ALL, RenewRequest,
};
use harmony_fleet_contracts::ids::DeviceId;
use harmony_fleet_contracts::trust::{FleetSigner, SignerSeeds};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::time::Instant;

use super::account;
use super::decide::{self, Decision, DeviceRecord};
use super::{CREDENTIAL_FINALIZER, FIELD_MANAGER};
use crate::crd::GROUP;
use crate::crd::device::{BLACKLIST_ANNOTATION, Device, Enrollment, EnrollmentPhase, Inventory};
use crate::error::{Error, Result};

pub mod tokens;

/// How the identity service runs.
#[derive(Clone)]
pub struct IdentityOptions {
    /// The fleet operator's signing keys.
    pub signer: Arc<FleetSigner>,
    /// Lifetime of issued device credentials.
    pub lifetime: Duration,
    /// How long a pending enrollment request is held before it is answered `Pending`.
    pub hold: Duration,
    /// Where the bootstrap token Secrets are (adr/0020).
    pub token_namespace: String,
}

impl IdentityOptions {
    /// Defaults: 30-day credentials, requests held 20 s.
    pub fn new(signer: Arc<FleetSigner>) -> Self {
        Self {
            signer,
            lifetime: DEFAULT_CREDENTIAL_LIFETIME,
            hold: Duration::from_secs(20),
            token_namespace: DEFAULT_NAMESPACE.to_owned(),
        }
    }
}

/// A running identity service; stops when dropped.
pub struct IdentityService {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for IdentityService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl IdentityService {
    /// Starts the service `config` asks for: reads the signer file, connects the system user.
    pub async fn from_config(
        config: &crate::config::IdentityConfig,
        nats_config: &crate::config::NatsConfig,
        nats: async_nats::Client,
        kube: kube::Client,
    ) -> Result<Self> {
        let text = std::fs::read_to_string(&config.signer).map_err(|e| {
            Error::Config(format!(
                "reading the identity signer file {} (--identity-signer): {e}",
                config.signer.display()
            ))
        })?;
        let seeds: SignerSeeds = serde_json::from_str(&text).map_err(|e| {
            Error::Config(format!(
                "identity signer file {} (--identity-signer) is not the JSON harmony-fleet-deploy writes: {e}",
                config.signer.display()
            ))
        })?;
        let signer = FleetSigner::from_seeds(&seeds)
            .map_err(|e| Error::credential("loading --identity-signer", e))?;
        let system = crate::kv::connect(&crate::config::NatsConfig {
            urls: nats_config.urls.clone(),
            credentials: None,
            creds_file: Some(config.system_creds.clone()),
            ca_file: nats_config.ca_file.clone(),
        })
        .await?;
        let options = IdentityOptions {
            lifetime: config.lifetime,
            token_namespace: config.token_namespace.clone(),
            ..IdentityOptions::new(Arc::new(signer))
        };
        Self::start(nats, system, kube, options).await
    }

    /// Subscribes (so requests sent after this returns are served), reads the fleet account's
    /// current revocations from the resolver, and starts the service.
    ///
    /// `nats`: the operator's connection (fleet account); `system`: a system-account user
    /// allowed to look up and update account claims.
    pub async fn start(
        nats: async_nats::Client,
        system: async_nats::Client,
        kube: kube::Client,
        options: IdentityOptions,
    ) -> Result<Self> {
        let enroll = nats
            .queue_subscribe(ENROLL_SUBJECT, "fleet-identity".into())
            .await
            .map_err(|e| Error::nats(format!("subscribing to {ENROLL_SUBJECT}"), e))?;
        let renew = nats
            .queue_subscribe(RENEW_ALL, "fleet-identity".into())
            .await
            .map_err(|e| Error::nats(format!("subscribing to {RENEW_ALL}"), e))?;
        nats.flush()
            .await
            .map_err(|e| Error::nats("flushing identity subscriptions", e))?;
        let revocations = account::revocations(&system, options.signer.fleet_account()).await?;
        let state = State {
            nats,
            system,
            devices: Api::all(kube.clone()),
            secrets: Api::namespaced(kube, &options.token_namespace),
            options,
            records: HashMap::new(),
            enrollments: HashMap::new(),
            held: HashMap::new(),
            revocations,
            listing: false,
            deleted_while_listing: Vec::new(),
        };
        let task = tokio::spawn(state.run(enroll, renew));
        Ok(Self { task })
    }
}

struct Held {
    reply: Subject,
    key: String,
    until: Instant,
}

struct State {
    nats: async_nats::Client,
    system: async_nats::Client,
    devices: Api<Device>,
    secrets: Api<Secret>,
    options: IdentityOptions,
    records: HashMap<String, DeviceRecord>,
    enrollments: HashMap<String, Enrollment>,
    held: HashMap<String, Held>,
    revocations: BTreeMap<String, i64>,
    /// Between the watch's `Init` and `InitDone`: revocations are reconciled once at the end
    /// of the listing, not once per listed `Device` (which is quadratic in the fleet).
    listing: bool,
    /// `Device`s being deleted seen during the listing, released after its reconcile.
    deleted_while_listing: Vec<Device>,
}

fn now() -> i64 {
    Timestamp::now().as_second()
}

fn record_of(device: &Device) -> DeviceRecord {
    let enrollment = device.status.as_ref().and_then(|s| s.enrollment.as_ref());
    DeviceRecord {
        approved_key: device.spec.public_key.clone(),
        requested_key: enrollment.and_then(|e| e.requested_key.clone()),
        issued: enrollment.and_then(|e| Some((e.issued_key.clone()?, e.issued_at?))),
        blacklisted: device
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(BLACKLIST_ANNOTATION))
            .is_some_and(|v| v == "true"),
        deleting: device.metadata.deletion_timestamp.is_some(),
    }
}

impl State {
    async fn run(mut self, mut enroll: async_nats::Subscriber, mut renew: async_nats::Subscriber) {
        let mut events = std::pin::pin!(
            watcher(self.devices.clone(), watcher::Config::default()).default_backoff()
        );
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                Some(message) = enroll.next() => self.on_enroll(message).await,
                Some(message) = renew.next() => self.on_renew(message).await,
                Some(event) = events.next() => match event {
                    Ok(event) => self.on_device_event(event).await,
                    Err(e) => tracing::warn!(error = %e, "Device watch (identity) error; retrying with backoff"),
                },
                _ = sweep.tick() => self.release_expired_holds().await,
                else => return,
            }
        }
    }

    async fn reply(&self, to: Option<&Subject>, reply: &EnrollReply) {
        let Some(to) = to else { return };
        match serde_json::to_vec(reply) {
            Ok(body) => {
                if let Err(e) = self.nats.publish(to.clone(), body.into()).await {
                    tracing::warn!(error = %e, "replying to an identity request failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "serialising an identity reply"),
        }
    }

    async fn on_enroll(&mut self, message: async_nats::Message) {
        let request: EnrollRequest = match serde_json::from_slice(&message.payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "malformed enrollment request refused");
                let reason = format!(
                    "malformed enrollment request: {e}; expected the JSON EnrollRequest harmony-fleet-agent sends"
                );
                self.reply(message.reply.as_ref(), &EnrollReply::refused(reason))
                    .await;
                return;
            }
        };
        let name = request.device_id.to_string();
        let decision = decide::enroll(&request, self.records.get(&name), now());
        tracing::info!(device = %name, key = %request.public_key, decision = ?decision_name(&decision), "enrollment request");
        match decision {
            Decision::Issue { key } => {
                let reply = self.issue(&request.device_id, &key).await;
                self.reply(message.reply.as_ref(), &reply).await;
            }
            Decision::RecordPending { key } => {
                if let Err(e) = self.record_pending(&request, &key).await {
                    tracing::warn!(device = %name, error = %e, "recording a pending enrollment failed");
                    let reason = format!("the operator could not record the request: {e}");
                    self.reply(
                        message.reply.as_ref(),
                        &EnrollReply::Pending { message: reason },
                    )
                    .await;
                    return;
                }
                if !self.try_token(&request, &key, message.reply.as_ref()).await {
                    self.hold(name, message.reply, key);
                }
            }
            Decision::Hold => {
                let key = request.public_key.clone();
                if !self.try_token(&request, &key, message.reply.as_ref()).await {
                    self.hold(name, message.reply, key);
                }
            }
            Decision::Refuse {
                reason,
                report,
                blacklisted,
            } => {
                tracing::warn!(device = %name, %reason, blacklisted, "enrollment refused");
                if report {
                    self.report_refusal(&name, &reason).await;
                }
                self.reply(
                    message.reply.as_ref(),
                    &EnrollReply::Refused {
                        reason,
                        blacklisted,
                    },
                )
                .await;
            }
        }
    }

    fn hold(&mut self, device: String, reply: Option<Subject>, key: String) {
        let Some(reply) = reply else { return };
        self.held.insert(
            device,
            Held {
                reply,
                key,
                until: Instant::now() + self.options.hold,
            },
        );
    }

    async fn on_renew(&mut self, message: async_nats::Message) {
        let device = message
            .subject
            .strip_prefix(&format!("{IDENTITY_PREFIX}."))
            .and_then(|rest| rest.strip_suffix(".renew"))
            .and_then(|id| id.parse::<DeviceId>().ok());
        let Some(device) = device else {
            return;
        };
        let name = device.to_string();
        let decision = match serde_json::from_slice::<RenewRequest>(&message.payload) {
            Ok(request) => decide::renew(&name, &request.public_key, self.records.get(&name)),
            Err(e) => Decision::Refuse {
                reason: format!(
                    "malformed renewal request: {e}; expected {{\"publicKey\": \"U…\"}}"
                ),
                report: false,
                blacklisted: false,
            },
        };
        let reply = match decision {
            Decision::Issue { key } => self.issue(&device, &key).await,
            Decision::Refuse {
                reason,
                report,
                blacklisted,
            } => {
                tracing::warn!(device = %name, %reason, blacklisted, "renewal refused");
                if report {
                    self.report_refusal(&name, &reason).await;
                }
                EnrollReply::Refused {
                    reason,
                    blacklisted,
                }
            }
            Decision::RecordPending { .. } | Decision::Hold => {
                EnrollReply::refused("renewal needs an approved key")
            }
        };
        self.reply(message.reply.as_ref(), &reply).await;
    }

    /// Signs a credential for `key`, records it on the `Device` (finalizer, status) and
    /// returns the reply. The status is written first: a credential the revocation logic does
    /// not know of is never handed out.
    async fn issue(&mut self, device: &DeviceId, key: &str) -> EnrollReply {
        let name = device.to_string();
        let issued_at = now();
        let token =
            match self
                .options
                .signer
                .device_jwt(device, key, issued_at, self.options.lifetime)
            {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(device = %name, error = %e, "signing a device credential");
                    return EnrollReply::Pending {
                        message: format!("the operator could not sign a credential: {e}"),
                    };
                }
            };
        let lifetime = i64::try_from(self.options.lifetime.as_secs()).unwrap_or(i64::MAX);
        let expires_at = Timestamp::from_second(issued_at.saturating_add(lifetime))
            .map(|t| t.to_string())
            .ok();
        let enrollment = Enrollment {
            phase: EnrollmentPhase::Enrolled,
            requested_key: None,
            requested_at: None,
            issued_key: Some(key.to_owned()),
            issued_at: Some(issued_at),
            expires_at,
            last_refusal: None,
        };
        let finalizer = json!({
            "apiVersion": format!("{GROUP}/v1alpha1"),
            "kind": "Device",
            "metadata": { "name": name, "finalizers": [CREDENTIAL_FINALIZER] },
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        if let Err(e) = self
            .devices
            .patch(&name, &params, &Patch::Apply(finalizer))
            .await
        {
            tracing::warn!(device = %name, error = %e, "adding the credential finalizer failed");
            return EnrollReply::Pending {
                message: format!("the operator could not record the credential: {e}"),
            };
        }
        if let Err(e) = self.write_enrollment(&name, enrollment.clone()).await {
            tracing::warn!(device = %name, error = %e, "recording an issued credential failed");
            return EnrollReply::Pending {
                message: format!("the operator could not record the credential: {e}"),
            };
        }
        let record = self.records.entry(name.clone()).or_default();
        record.issued = Some((key.to_owned(), issued_at));
        record.requested_key = None;
        tracing::info!(device = %name, key, "credential issued");
        EnrollReply::Issued { jwt: token }
    }

    async fn record_pending(&mut self, request: &EnrollRequest, key: &str) -> Result<()> {
        let name = request.device_id.to_string();
        if !self.records.contains_key(&name) {
            // A new device: create its `Device`, inventory from the request.
            let body = json!({
                "apiVersion": format!("{GROUP}/v1alpha1"),
                "kind": "Device",
                "metadata": { "name": name },
                "spec": { "inventory": Inventory::from(&request.inventory) },
            });
            self.devices
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER),
                    &Patch::Apply(body),
                )
                .await
                .map_err(|e| Error::kube(format!("creating Device {name}"), e))?;
        }
        let mut enrollment = self.enrollments.get(&name).cloned().unwrap_or_default();
        enrollment.phase = EnrollmentPhase::Pending;
        enrollment.requested_key = Some(key.to_owned());
        enrollment.requested_at = Some(Timestamp::now().to_string());
        self.write_enrollment(&name, enrollment).await?;
        self.records.entry(name).or_default().requested_key = Some(key.to_owned());
        Ok(())
    }

    async fn report_refusal(&mut self, name: &str, reason: &str) {
        if !self.records.contains_key(name) {
            return;
        }
        let mut enrollment = self.enrollments.get(name).cloned().unwrap_or_default();
        enrollment.last_refusal = Some(format!("{}: {reason}", Timestamp::now()));
        if let Err(e) = self.write_enrollment(name, enrollment).await {
            tracing::warn!(device = name, error = %e, "recording a refusal failed");
        }
    }

    /// Applies the whole `status.enrollment` (server-side apply removes fields this manager
    /// owned and left out).
    async fn write_enrollment(&mut self, name: &str, enrollment: Enrollment) -> Result<()> {
        let body = json!({
            "apiVersion": format!("{GROUP}/v1alpha1"),
            "kind": "Device",
            "status": { "enrollment": enrollment },
        });
        self.devices
            .patch_status(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
            .map_err(|e| Error::kube(format!("writing status.enrollment of Device {name}"), e))?;
        self.enrollments.insert(name.to_owned(), enrollment);
        Ok(())
    }

    async fn on_device_event(&mut self, event: watcher::Event<Device>) {
        match event {
            watcher::Event::Init => self.listing = true,
            watcher::Event::InitApply(device) | watcher::Event::Apply(device) => {
                self.on_device(device).await;
            }
            watcher::Event::InitDone => {
                self.listing = false;
                self.reconcile_revocations().await;
                // Deleted while the operator was away: released now that revocations are in.
                for device in std::mem::take(&mut self.deleted_while_listing) {
                    self.release_deleted(&device).await;
                }
            }
            watcher::Event::Delete(device) => {
                if let Some(name) = device.metadata.name.as_deref() {
                    self.records.remove(name);
                    self.enrollments.remove(name);
                    self.held.remove(name);
                }
            }
        }
    }

    async fn on_device(&mut self, device: Device) {
        let Some(name) = device.metadata.name.clone() else {
            return;
        };
        let record = record_of(&device);
        if let Some(enrollment) = device.status.as_ref().and_then(|s| s.enrollment.clone()) {
            self.enrollments.insert(name.clone(), enrollment);
        }
        let approved = record.approved_key.clone();
        let revocation_changed = self.records.get(&name).is_none_or(|before| {
            before.blacklisted != record.blacklisted
                || before.deleting != record.deleting
                || before.approved_key != record.approved_key
                || before.issued != record.issued
        });
        self.records.insert(name.clone(), record.clone());

        // An approval (or a re-key) answers the held request of that key at once.
        if !record.blacklisted
            && !record.deleting
            && let Some(held) = self.held.get(&name)
            && approved.as_deref() == Some(held.key.as_str())
            && let Ok(id) = name.parse::<DeviceId>()
        {
            let key = held.key.clone();
            let reply = self.issue(&id, &key).await;
            if let Some(held) = self.held.remove(&name) {
                self.reply(Some(&held.reply), &reply).await;
            }
        }
        if revocation_changed && !self.listing {
            self.reconcile_revocations().await;
        }
        if record.deleting {
            if self.listing {
                self.deleted_while_listing.push(device);
            } else {
                self.release_deleted(&device).await;
            }
        }
    }

    async fn release_expired_holds(&mut self) {
        let now = Instant::now();
        let expired: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| h.until <= now)
            .map(|(d, _)| d.clone())
            .collect();
        for device in expired {
            if let Some(held) = self.held.remove(&device) {
                let message = format!(
                    "waiting for approval: kubectl patch fleetdev {device} --type merge -p '{{\"spec\":{{\"publicKey\":\"{}\"}}}}'",
                    held.key
                );
                self.reply(Some(&held.reply), &EnrollReply::Pending { message })
                    .await;
            }
        }
    }
}

fn decision_name(decision: &Decision) -> &'static str {
    match decision {
        Decision::Issue { .. } => "issue",
        Decision::RecordPending { .. } => "pending",
        Decision::Hold => "hold",
        Decision::Refuse { .. } => "refuse",
    }
}

mod revocation;
