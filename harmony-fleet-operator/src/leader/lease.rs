//! The [`Elector`]: campaigns for the Lease, renews it while leading, releases it on stop.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use super::LeaderConfig;
use super::decide::{self, LeaseRecord, Next, Observed};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Campaigns for and holds one Lease. Cheap to clone.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    config: LeaderConfig,
    metrics: Metrics,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Elector {
    /// An elector for `config`'s Lease.
    pub fn new(client: kube::Client, config: LeaderConfig, metrics: Metrics) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            metrics,
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    /// Campaigns until this replica holds the Lease; returns the Lease as written.
    pub async fn campaign(&self) -> Lease {
        let mut observed = Observed::default();
        let mut last_holder: Option<String> = None;
        loop {
            match self.try_acquire(&mut observed).await {
                Ok(Ok(lease)) => {
                    self.metrics.leader.set(1);
                    tracing::info!(lease = %self.config.name, namespace = %self.config.namespace, identity = %self.config.identity, "elected leader");
                    return lease;
                }
                // An empty holder: lost a race to write the Lease; read it again.
                Ok(Err(holder)) if !holder.is_empty() => {
                    if last_holder.as_deref() != Some(holder.as_str()) {
                        tracing::info!(%holder, lease = %self.config.name, "following the leader (standby: caches warm, no writes)");
                        last_holder = Some(holder);
                    }
                }
                Ok(Err(_)) => {}
                Err(e) => {
                    self.metrics.error("lease");
                    tracing::warn!(error = %e, lease = %self.config.name, "reading or taking the Lease failed; retrying");
                }
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// One round: `Ok(Ok(lease))` when we hold it now, `Ok(Err(holder))` when someone else does.
    async fn try_acquire(
        &self,
        observed: &mut Observed,
    ) -> Result<std::result::Result<Lease, String>> {
        let current = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| Error::kube(format!("reading Lease {}", self.config.name), e))?;
        let now = Instant::now();
        let record = current.as_ref().map(record);
        let since = observed.see(record.as_ref().and_then(|r| r.version.as_deref()), now);
        match decide::next(record.as_ref(), since, &self.config.identity, now) {
            Next::Follow { holder, .. } => Ok(Err(holder)),
            Next::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(0, None)),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(lease) => Ok(Ok(lease)),
                    // Someone created it first: read it again next round.
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(Err(String::new())),
                    Err(e) => Err(Error::kube(
                        format!("creating Lease {}", self.config.name),
                        e,
                    )),
                }
            }
            Next::Take | Next::Renew => {
                let Some(mut lease) = current else {
                    return Ok(Err(String::new()));
                };
                let previous = lease.spec.take().unwrap_or_default();
                let ours = previous.holder_identity.as_deref() == Some(&self.config.identity);
                let transitions = previous.lease_transitions.unwrap_or(0) + i32::from(!ours);
                let acquired = if ours { previous.acquire_time } else { None };
                lease.spec = Some(self.spec(transitions, acquired));
                match self
                    .api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(lease) => Ok(Ok(lease)),
                    // Written by someone else in between: read it again next round.
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(Err(String::new())),
                    Err(e) => Err(Error::kube(format!("taking Lease {}", self.config.name), e)),
                }
            }
        }
    }

    /// Renews `lease` every retry period; returns (an error) once it could not be renewed
    /// within the renew deadline, or someone else holds it. The caller stops writing then.
    pub async fn hold(&self, mut lease: Lease) -> Result<()> {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            match self.renew(&lease).await {
                Ok(Some(written)) => {
                    lease = written;
                    renewed = Instant::now();
                }
                Ok(None) => {
                    self.metrics.leader.set(0);
                    return Err(Error::LostLease {
                        lease: self.config.name.clone(),
                        why: "another replica holds it".to_owned(),
                    });
                }
                Err(e) => {
                    self.metrics.error("lease");
                    tracing::warn!(error = %e, "renewing the Lease failed; retrying");
                }
            }
            if decide::lost(renewed, Instant::now(), self.config.renew_deadline) {
                self.metrics.leader.set(0);
                return Err(Error::LostLease {
                    lease: self.config.name.clone(),
                    why: format!(
                        "not renewed for {:?} (the renew deadline)",
                        self.config.renew_deadline
                    ),
                });
            }
        }
    }

    /// Writes a new `renewTime`: `Ok(None)` when the Lease is no longer ours.
    async fn renew(&self, lease: &Lease) -> Result<Option<Lease>> {
        let mut next = lease.clone();
        let spec = next.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(&self.config.identity) {
            return Ok(None);
        }
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &next)
            .await
        {
            Ok(written) => Ok(Some(written)),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Our copy is stale: read it, and renew only if it is still ours.
                let current =
                    self.api.get(&self.config.name).await.map_err(|e| {
                        Error::kube(format!("reading Lease {}", self.config.name), e)
                    })?;
                let still_ours = current
                    .spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.as_deref())
                    == Some(self.config.identity.as_str());
                if still_ours {
                    Box::pin(self.renew(&current)).await
                } else {
                    Ok(None)
                }
            }
            Err(e) => Err(Error::kube(
                format!("renewing Lease {}", self.config.name),
                e,
            )),
        }
    }

    /// Gives the Lease up if this replica holds it, so a standby takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(&self.config.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.metrics.leader.set(0);
                tracing::info!(lease = %self.config.name, "released the Lease");
            }
            Err(e) => {
                tracing::warn!(error = %e, "releasing the Lease failed; a standby takes over when it expires")
            }
        }
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

/// The Lease as [`decide`] reads it.
fn record(lease: &Lease) -> LeaseRecord {
    let spec = lease.spec.clone().unwrap_or_default();
    LeaseRecord {
        holder: spec.holder_identity,
        duration: Duration::from_secs(
            spec.lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0),
        ),
        version: lease.metadata.resource_version.clone(),
    }
}
