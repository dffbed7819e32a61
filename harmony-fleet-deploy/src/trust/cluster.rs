//! A cluster installation's trust and TLS, kept in Secrets of the fleet's namespace (adr/0019).
//!
//! | Secret | holds | made |
//! |---|---|---|
//! | [`TRUST_SECRET`] | `trust.json` ([`TrustMaterial`]) | once, never rewritten |
//! | [`CA_SECRET`] | the CA of NATS' TLS (`tls.crt`, `tls.key`) | yours if it exists, else once |
//! | [`SERVER_TLS_SECRET`] | the servers' certificate (`tls.crt`, `tls.key`, `ca.crt`) | when missing or issued from other inputs |
//! | [`OPERATOR_SECRET`] | the operator's `.creds`, signer and settings | likewise |
//! | [`BOOTSTRAP_SECRET`] | agents' `bootstrap.creds` and `ca.crt` | likewise |
//!
//! The first two are the roots: created with `create` (never `apply`), so two installs racing
//! cannot both win, and a re-run never rotates them. The others are derived from them and
//! carry the fingerprint of their inputs in [`ISSUED_FROM`]; a re-run that finds the same
//! fingerprint leaves them alone (credentials embed their issue time, so re-issuing would change
//! bytes on every run).

use std::collections::BTreeMap;

use harmony::interpret::InterpretError;
use harmony::local::certs::CaPem;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use sha2::{Digest, Sha256};

use super::{Trust, TrustMaterial};
use crate::error::DeployError;
use crate::k8s::{self, Applier};

/// `trust.json`: the chain of trust.
pub const TRUST_SECRET: &str = "fleet-nats-trust";
/// The CA of NATS' TLS, `kubernetes.io/tls`. Create it before the install to use your own.
pub const CA_SECRET: &str = "fleet-nats-ca";
/// The NATS servers' certificate, key and CA.
pub const SERVER_TLS_SECRET: &str = "fleet-nats-tls";
/// The operator's NATS identity and settings ([`operator_keys`]).
pub const OPERATOR_SECRET: &str = "harmony-fleet-operator-nats";
/// What every agent Pod mounts: `bootstrap.creds` and `ca.crt`.
pub const BOOTSTRAP_SECRET: &str = "fleet-agent-bootstrap";
/// Annotation of a derived Secret: the fingerprint of what it was issued from.
pub const ISSUED_FROM: &str = "fleet.nationtech.io/issued-from";

/// Keys of [`OPERATOR_SECRET`].
pub mod operator_keys {
    /// The operator's `.creds`.
    pub const CREDS: &str = "operator.creds";
    /// The system user's `.creds` (pushes revocations).
    pub const SYSTEM_CREDS: &str = "system.creds";
    /// The signer seeds (issues device credentials).
    pub const SIGNER: &str = "signer.json";
    /// The CA NATS' certificates chain to.
    pub const CA: &str = "ca.crt";
    /// Comma-separated NATS URLs.
    pub const URL: &str = "nats-url";
    /// Replicas of each bucket the operator creates.
    pub const BUCKET_REPLICAS: &str = "bucket-replicas";
    /// Devices the buckets are sized for.
    pub const FLEET_CAPACITY: &str = "fleet-capacity";
}

/// Keys of [`BOOTSTRAP_SECRET`].
pub mod bootstrap_keys {
    /// The bootstrap identity's `.creds`.
    pub const CREDS: &str = "bootstrap.creds";
    /// The CA NATS' certificates chain to.
    pub const CA: &str = "ca.crt";
}

/// How the operator reaches NATS and sizes the buckets it creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSettings {
    /// NATS URLs.
    pub urls: Vec<String>,
    /// Replicas of each bucket.
    pub bucket_replicas: usize,
    /// Devices the buckets are sized for.
    pub fleet_capacity: u64,
}

/// The trust and CA of the fleet in one namespace.
#[derive(Debug)]
pub struct ClusterTrust {
    namespace: String,
    trust: Trust,
    ca: CaPem,
}

fn kube_error(action: &str, object: String) -> impl FnOnce(kube::Error) -> InterpretError {
    let action = action.to_owned();
    move |source| InterpretError::Kube {
        action,
        object,
        source,
    }
}

fn secret_data(entries: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

fn data_text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn fingerprint(parts: &[&[u8]]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hex::encode(&hash.finalize()[..16])
}

/// Reads Secret `name`, or creates it from `make()` when it does not exist. A lost race
/// (another install created it meanwhile) reads the winner's. Returns it and whether it was
/// created.
async fn get_or_create(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
    make: impl FnOnce() -> Result<Secret, InterpretError>,
) -> Result<(Secret, bool), InterpretError> {
    let object = format!("Secret {namespace}/{name}");
    if let Some(found) = secrets
        .get_opt(name)
        .await
        .map_err(kube_error("get of", object.clone()))?
    {
        return Ok((found, false));
    }
    match secrets.create(&PostParams::default(), &make()?).await {
        Ok(created) => Ok((created, true)),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok((
            secrets
                .get(name)
                .await
                .map_err(kube_error("get of", object))?,
            false,
        )),
        Err(source) => Err(kube_error("create of", object)(source)),
    }
}

impl ClusterTrust {
    /// Loads the trust and CA of `namespace`, creating what is missing. Returns what was
    /// created, for the Score's details.
    pub async fn load_or_create(
        client: &kube::Client,
        namespace: &str,
    ) -> Result<(Self, Vec<String>), InterpretError> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let mut created = Vec::new();
        let (trust_secret, made) = get_or_create(&secrets, namespace, TRUST_SECRET, || {
            let material = TrustMaterial::generate()?;
            let json = String::from_utf8(material.to_json()).unwrap_or_default();
            Ok(Self::root_secret(
                namespace,
                TRUST_SECRET,
                None,
                &[("trust.json", &json)],
            ))
        })
        .await?;
        if made {
            created.push(format!("Secret {TRUST_SECRET}: a new chain of trust"));
        }
        let origin = format!("Secret {namespace}/{TRUST_SECRET}");
        let json = data_text(&trust_secret, "trust.json").ok_or_else(|| DeployError::Trust {
            reason: format!(
                "{origin} has no key trust.json; delete it to make a new chain (every device enrolls again)"
            ),
        })?;
        let trust = Trust::open(TrustMaterial::from_json(json.as_bytes(), &origin)?, &origin)?;

        let (ca_secret, made) = get_or_create(&secrets, namespace, CA_SECRET, || {
            let ca = CaPem::generate("harmony-fleet-nats-ca").map_err(DeployError::from)?;
            Ok(Self::root_secret(
                namespace,
                CA_SECRET,
                Some("kubernetes.io/tls"),
                &[("tls.crt", &ca.cert), ("tls.key", &ca.key)],
            ))
        })
        .await?;
        if made {
            created.push(format!("Secret {CA_SECRET}: a new CA for NATS' TLS"));
        }
        let ca = match (
            data_text(&ca_secret, "tls.crt"),
            data_text(&ca_secret, "tls.key"),
        ) {
            (Some(cert), Some(key)) => CaPem { cert, key },
            _ => {
                return Err(DeployError::Trust {
                    reason: format!(
                        "Secret {namespace}/{CA_SECRET} must hold the CA as tls.crt and tls.key (PEM), e.g. `kubectl create secret tls {CA_SECRET} --cert=ca.crt --key=ca.key -n {namespace}`"
                    ),
                }
                .into());
            }
        };
        Ok((
            ClusterTrust {
                namespace: namespace.to_owned(),
                trust,
                ca,
            },
            created,
        ))
    }

    /// The trust of `namespace` from parts already at hand (tests, or a tool that keeps the
    /// roots elsewhere).
    pub fn from_parts(namespace: &str, trust: Trust, ca: CaPem) -> Self {
        ClusterTrust {
            namespace: namespace.to_owned(),
            trust,
            ca,
        }
    }

    /// A root Secret (created once, never applied).
    fn root_secret(
        namespace: &str,
        name: &str,
        type_: Option<&str>,
        entries: &[(&str, &str)],
    ) -> Secret {
        Secret {
            metadata: k8s::meta(name, Some(namespace), "fleet-nats"),
            type_: type_.map(str::to_owned),
            data: Some(secret_data(entries)),
            ..Secret::default()
        }
    }

    /// The opened trust.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// The CA certificate (PEM) clients verify NATS against.
    pub fn ca_cert(&self) -> &str {
        &self.ca.cert
    }

    /// The DNS names NATS' certificate covers in `namespace`: the client Service under every
    /// form a Pod may use, and each server of the headless Service (routes dial those).
    pub fn server_names(namespace: &str, service: &str, headless: &str) -> Vec<String> {
        let mut names = Vec::new();
        for suffix in ["", ".svc", ".svc.cluster.local"] {
            let base = if suffix.is_empty() {
                format!("{service}.{namespace}")
            } else {
                format!("{service}.{namespace}{suffix}")
            };
            names.push(base);
            names.push(format!("*.{headless}.{namespace}{suffix}"));
        }
        names.insert(0, service.to_owned());
        names.push("localhost".to_owned());
        names
    }

    fn derived(&self, name: &str, issued_from: &str, entries: &[(&str, &str)]) -> Secret {
        let mut metadata = k8s::meta(name, Some(&self.namespace), "fleet-nats");
        metadata.annotations = Some(BTreeMap::from([(
            ISSUED_FROM.to_owned(),
            issued_from.to_owned(),
        )]));
        Secret {
            metadata,
            data: Some(secret_data(entries)),
            ..Secret::default()
        }
    }

    fn root_fingerprint(&self, extra: &[&[u8]]) -> String {
        let material = self.trust.material().to_json();
        let mut parts: Vec<&[u8]> = vec![&material, self.ca.cert.as_bytes()];
        parts.extend_from_slice(extra);
        fingerprint(&parts)
    }

    /// [`SERVER_TLS_SECRET`] for `names`.
    pub fn server_tls(&self, names: &[String]) -> Derived<'_> {
        let joined = names.join(",");
        let issued_from = self.root_fingerprint(&[joined.as_bytes()]);
        let names = names.to_vec();
        Derived {
            issued_from: issued_from.clone(),
            make: Box::new(move || {
                let server = self
                    .ca
                    .issue_server("fleet-nats", &names)
                    .map_err(DeployError::from)?;
                Ok(self.derived(
                    SERVER_TLS_SECRET,
                    &issued_from,
                    &[
                        ("tls.crt", &server.cert),
                        ("tls.key", &server.key),
                        ("ca.crt", &self.ca.cert),
                    ],
                ))
            }),
        }
    }

    /// [`OPERATOR_SECRET`] for `settings`.
    pub fn operator_secret(&self, settings: &OperatorSettings) -> Derived<'_> {
        let url = settings.urls.join(",");
        let replicas = settings.bucket_replicas.to_string();
        let capacity = settings.fleet_capacity.to_string();
        let issued_from =
            self.root_fingerprint(&[url.as_bytes(), replicas.as_bytes(), capacity.as_bytes()]);
        Derived {
            issued_from: issued_from.clone(),
            make: Box::new(move || {
                use operator_keys as k;
                let creds = self.trust.operator_creds()?;
                let system = self.trust.system_creds()?;
                let signer = self.trust.signer_json()?;
                Ok(self.derived(
                    OPERATOR_SECRET,
                    &issued_from,
                    &[
                        (k::CREDS, &creds),
                        (k::SYSTEM_CREDS, &system),
                        (k::SIGNER, &signer),
                        (k::CA, &self.ca.cert),
                        (k::URL, &url),
                        (k::BUCKET_REPLICAS, &replicas),
                        (k::FLEET_CAPACITY, &capacity),
                    ],
                ))
            }),
        }
    }

    /// [`BOOTSTRAP_SECRET`].
    pub fn bootstrap_secret(&self) -> Derived<'_> {
        let issued_from = self.root_fingerprint(&[]);
        Derived {
            issued_from: issued_from.clone(),
            make: Box::new(move || {
                let creds = self.trust.bootstrap_creds()?;
                Ok(self.derived(
                    BOOTSTRAP_SECRET,
                    &issued_from,
                    &[
                        (bootstrap_keys::CREDS, &creds),
                        (bootstrap_keys::CA, &self.ca.cert),
                    ],
                ))
            }),
        }
    }

    /// Applies the derived Secret `name` unless the stored one was issued from the same
    /// inputs (`derived` is one of [`Self::server_tls`], [`Self::operator_secret`],
    /// [`Self::bootstrap_secret`]).
    pub async fn ensure(
        &self,
        client: &kube::Client,
        applier: &mut Applier,
        name: &str,
        derived: Derived<'_>,
    ) -> Result<(), InterpretError> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        let stored = secrets.get_opt(name).await.map_err(kube_error(
            "get of",
            format!("Secret {}/{name}", self.namespace),
        ))?;
        if is_issued_from(stored.as_ref(), &derived.issued_from) {
            return Ok(());
        }
        applier.apply(client, &derived.build()?).await
    }
}

/// A derived Secret: the fingerprint of its inputs, and how to issue it (only done when the
/// stored one was issued from other inputs).
pub struct Derived<'a> {
    /// The fingerprint it carries in [`ISSUED_FROM`].
    pub issued_from: String,
    make: Box<dyn FnOnce() -> Result<Secret, InterpretError> + Send + 'a>,
}

impl Derived<'_> {
    /// Issues it (new credentials, a new certificate).
    pub fn build(self) -> Result<Secret, InterpretError> {
        (self.make)()
    }
}

/// Fails with [`DeployError::NatsIdentityMissing`] unless Secret `name` (one the NATS install
/// issues) exists in `namespace`: a component deployed before NATS says to deploy NATS first.
pub async fn require_issued(
    client: &kube::Client,
    namespace: &str,
    name: &'static str,
) -> Result<(), InterpretError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let found = secrets
        .get_opt(name)
        .await
        .map_err(kube_error("get of", format!("Secret {namespace}/{name}")))?;
    match found {
        Some(_) => Ok(()),
        None => Err(DeployError::NatsIdentityMissing {
            namespace: namespace.to_owned(),
            secret: name,
        }
        .into()),
    }
}

/// Whether `stored` was issued from `issued_from`.
pub fn is_issued_from(stored: Option<&Secret>, issued_from: &str) -> bool {
    stored
        .and_then(|s| s.metadata.annotations.as_ref())
        .and_then(|a| a.get(ISSUED_FROM))
        .is_some_and(|f| f == issued_from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust() -> ClusterTrust {
        let material = TrustMaterial::generate().expect("material");
        ClusterTrust {
            namespace: "fleet-system".into(),
            trust: Trust::open(material, "test").expect("open"),
            ca: CaPem::generate("test-ca").expect("ca"),
        }
    }

    #[test]
    fn derived_secrets_are_reissued_only_when_their_inputs_change() {
        let trust = trust();
        let names = ClusterTrust::server_names("fleet-system", "fleet-nats", "fleet-nats-headless");
        let derived = trust.server_tls(&names);
        let fingerprint = derived.issued_from.clone();
        let secret = derived.build().expect("issue");
        assert!(is_issued_from(Some(&secret), &fingerprint));
        let same = trust.server_tls(&names).issued_from;
        assert_eq!(same, fingerprint, "same inputs, same fingerprint");
        let other = trust.server_tls(&names[..2]).issued_from;
        assert_ne!(other, fingerprint, "other names: reissued");
        assert!(!is_issued_from(None, &fingerprint));

        let settings = OperatorSettings {
            urls: vec!["tls://fleet-nats.fleet-system.svc:4222".into()],
            bucket_replicas: 3,
            fleet_capacity: 1000,
        };
        let derived = trust.operator_secret(&settings);
        let op = derived.issued_from.clone();
        let secret = derived.build().expect("operator secret");
        let data = secret.data.expect("data");
        for key in [
            operator_keys::CREDS,
            operator_keys::SYSTEM_CREDS,
            operator_keys::SIGNER,
            operator_keys::CA,
        ] {
            assert!(data.contains_key(key), "{key}");
        }
        assert_eq!(data[operator_keys::BUCKET_REPLICAS].0, b"3");
        let op_more = trust
            .operator_secret(&OperatorSettings {
                fleet_capacity: 2000,
                ..settings
            })
            .issued_from;
        assert_ne!(op, op_more, "a larger fleet re-issues the settings");
    }

    #[test]
    fn the_certificate_covers_the_service_and_every_server_of_the_headless_service() {
        let names = ClusterTrust::server_names("fleet", "fleet-nats", "fleet-nats-headless");
        for name in [
            "fleet-nats",
            "fleet-nats.fleet",
            "fleet-nats.fleet.svc",
            "fleet-nats.fleet.svc.cluster.local",
            "*.fleet-nats-headless.fleet.svc",
            "*.fleet-nats-headless.fleet.svc.cluster.local",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
        }
    }
}
