//! The device's own identity (adr/0016): an nkey pair created on first start, whose seed never
//! leaves `<data_dir>/identity.nk` (0600), and the credential (a NATS user JWT) the operator
//! issued for its public key, kept in `<data_dir>/credential.jwt` (0600).
//!
//! Without a credential the agent enrolls: it connects as the shared bootstrap user, sends a
//! signed [`EnrollRequest`] and waits — the operator holds the request until an admin approves
//! the key, so approval reaches the device at once. With a credential it connects as itself;
//! [`maintain`] asks for a fresh one once two thirds of its lifetime have passed and
//! reconnects with it before the old one expires.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use harmony_fleet_contracts::bootstrap_token::BootstrapToken;
use harmony_fleet_contracts::device::Inventory;
use harmony_fleet_contracts::identity::{
    BOOTSTRAP_INBOX_PREFIX, ENROLL_SUBJECT, EnrollReply, EnrollRequest, RenewRequest, renew_subject,
};
use harmony_fleet_contracts::ids::DeviceId;
use harmony_fleet_contracts::jwt::{self, Claims, UserClaims};
use nkeys::KeyPair;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::watch::WatchEvent;

/// File name of the seed in the data dir.
pub const SEED_FILE: &str = "identity.nk";
/// File name of the credential in the data dir.
pub const CREDENTIAL_FILE: &str = "credential.jwt";

/// Why the identity cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What the agent was doing.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The seed file is readable by others.
    #[error(
        "{path} is readable by group or others (mode {mode:o}); the device key must be private: chmod 600 {path}"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The seed file does not hold a user seed.
    #[error(
        "{path} does not hold an nkey user seed: {source}; remove it to create a new key (the device must then be approved again)"
    )]
    Seed {
        /// The file.
        path: PathBuf,
        /// What nkeys said.
        #[source]
        source: nkeys::error::Error,
    },
    /// No credential yet, and nothing to enroll with.
    #[error(
        "the device holds no credential ({credential} is missing) and [credentials] bootstrap_creds is not set: give the bootstrap .creds file so the device can ask to enroll"
    )]
    NoBootstrap {
        /// Where the credential would be.
        credential: PathBuf,
    },
    /// The bootstrap credentials cannot be read.
    #[error(
        "bootstrap credentials {path}: {message}; give the .creds file harmony-fleet-deploy wrote"
    )]
    Bootstrap {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError {
    let path = path.to_owned();
    move |source| IdentityError::Io {
        action,
        path,
        source,
    }
}

/// Writes `contents` to `path` with mode 0600, replacing it atomically.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    file.write_all(contents).map_err(io("writing", &tmp))?;
    file.sync_all().map_err(io("syncing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming into", path))
}

/// The device key in `data_dir`, created (0600) if there is none. Refuses a seed file that
/// others can read.
pub fn load_or_create_key(data_dir: &Path) -> Result<KeyPair, IdentityError> {
    let path = data_dir.join(SEED_FILE);
    match std::fs::metadata(&path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::Permissions { path, mode });
            }
            let text = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
            KeyPair::from_seed(text.trim()).map_err(|source| IdentityError::Seed { path, source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io("creating", data_dir))?;
            let key = KeyPair::new_user();
            let seed = key.seed().map_err(|source| IdentityError::Seed {
                path: path.clone(),
                source,
            })?;
            write_private(&path, seed.as_bytes())?;
            tracing::info!(public_key = %key.public_key(), "created the device key");
            Ok(key)
        }
        Err(e) => Err(io("reading", &path)(e)),
    }
}

/// The stored credential, if there is one issued for `key`.
pub fn load_credential(data_dir: &Path, key: &KeyPair) -> Option<String> {
    let path = data_dir.join(CREDENTIAL_FILE);
    let token = std::fs::read_to_string(&path).ok()?;
    let token = token.trim().to_owned();
    match jwt::decode::<UserClaims>(&token) {
        Ok(claims) if claims.exp.is_some_and(|exp| exp <= now()) => {
            tracing::warn!(path = %path.display(), "stored credential has expired; enrolling again");
            None
        }
        Ok(claims) if claims.sub == key.public_key() => Some(token),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "stored credential is for another key; enrolling again");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "stored credential is unreadable; enrolling again");
            None
        }
    }
}

/// Stores `token` (0600).
pub fn save_credential(data_dir: &Path, token: &str) -> Result<(), IdentityError> {
    write_private(&data_dir.join(CREDENTIAL_FILE), token.as_bytes())
}

/// The current credential, shared with the connection's auth callback (reconnects read the
/// newest one).
#[derive(Clone)]
pub struct Credential {
    key: Arc<KeyPair>,
    jwt: Arc<RwLock<String>>,
    refused: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("public_key", &self.key.public_key())
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// `jwt` for `key`.
    pub fn new(key: Arc<KeyPair>, jwt: String) -> Self {
        Self {
            key,
            jwt: Arc::new(RwLock::new(jwt)),
            refused: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Called when the server refuses this credential (revoked, expired): [`maintain`]
    /// enrolls again.
    pub fn refused(&self) {
        self.refused.notify_one();
    }

    /// The key.
    pub fn key(&self) -> &Arc<KeyPair> {
        &self.key
    }

    /// The current JWT.
    pub fn jwt(&self) -> String {
        self.jwt.read().map(|j| j.clone()).unwrap_or_default()
    }

    fn replace(&self, token: String) {
        if let Ok(mut jwt) = self.jwt.write() {
            *jwt = token;
        }
    }

    /// Connect options that authenticate with this credential on every (re)connect.
    pub fn connect_options(&self) -> async_nats::ConnectOptions {
        let credential = self.clone();
        async_nats::ConnectOptions::with_auth_callback(move |nonce| {
            let credential = credential.clone();
            async move {
                let mut auth = async_nats::Auth::new();
                auth.jwt = Some(credential.jwt());
                auth.signature = Some(
                    credential
                        .key
                        .sign(&nonce)
                        .map_err(async_nats::AuthError::new)?,
                );
                Ok(auth)
            }
        })
    }
}

/// Seconds from `claims`' issue to the moment to renew: two thirds of its lifetime.
fn renew_at(claims: &Claims<UserClaims>) -> Option<i64> {
    let exp = claims.exp?;
    Some(claims.iat + (exp - claims.iat) * 2 / 3)
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Enrolls through the bootstrap user until a credential for `key` is issued (or `stop`).
/// Refusals are logged and retried after `retry`: an admin may approve or un-blacklist later.
pub async fn enroll(
    enroller: &Enroller,
    bootstrap_creds: &Path,
    key: &KeyPair,
    retry: Duration,
    stop: &CancellationToken,
) -> Result<Option<String>, IdentityError> {
    let (urls, device) = (&enroller.urls, &enroller.device);
    let creds = std::fs::read_to_string(bootstrap_creds).map_err(|e| IdentityError::Bootstrap {
        path: bootstrap_creds.to_owned(),
        message: e.to_string(),
    })?;
    let base = match enroller.ca_file.as_deref() {
        Some(ca) => async_nats::ConnectOptions::new()
            .add_root_certificates(ca.to_owned())
            .require_tls(true),
        None => async_nats::ConnectOptions::new(),
    };
    let options = base
        .credentials(&creds)
        .map_err(|e| IdentityError::Bootstrap {
            path: bootstrap_creds.to_owned(),
            message: e.to_string(),
        })?
        .custom_inbox_prefix(BOOTSTRAP_INBOX_PREFIX)
        .retry_on_initial_connect()
        .request_timeout(Some(Duration::from_secs(60)))
        .name(format!("fleet-agent {device} (enrolling)"));
    let addrs: Vec<async_nats::ServerAddr> = urls.iter().filter_map(|u| u.parse().ok()).collect();
    let client = tokio::select! {
        c = options.connect(addrs) => c.map_err(|e| IdentityError::Bootstrap {
            path: bootstrap_creds.to_owned(),
            message: format!("connecting: {e}"),
        })?,
        () = stop.cancelled() => return Ok(None),
    };
    let token_id = enroller
        .bootstrap_token
        .as_ref()
        .and_then(|t| t.parts().ok())
        .map(|(id, _)| id.to_string());
    tracing::info!(public_key = %key.public_key(), bootstrap_token_id = token_id.as_deref().unwrap_or("-"), "enrolling: waiting for the operator to approve this key (by bootstrap token or by an admin)");
    loop {
        let request =
            match EnrollRequest::signed(device.clone(), key, enroller.inventory.clone(), now()) {
                Ok(r) => r.with_bootstrap_token(enroller.bootstrap_token.clone()),
                Err(source) => {
                    return Err(IdentityError::Seed {
                        path: PathBuf::from(SEED_FILE),
                        source,
                    });
                }
            };
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let answer = tokio::select! {
            a = client.request(ENROLL_SUBJECT, body.into()) => a,
            () = stop.cancelled() => return Ok(None),
        };
        let wait = match answer.map(|m| serde_json::from_slice::<EnrollReply>(&m.payload)) {
            Ok(Ok(EnrollReply::Issued { jwt: token })) => match jwt::decode::<UserClaims>(&token) {
                Ok(claims) if claims.sub == key.public_key() => {
                    tracing::info!("enrolled: credential issued");
                    return Ok(Some(token));
                }
                _ => {
                    tracing::warn!(
                        "the operator issued a credential for another key; asking again"
                    );
                    retry
                }
            },
            Ok(Ok(EnrollReply::Pending { message })) => {
                tracing::info!(%message, "enrollment pending");
                Duration::ZERO
            }
            Ok(Ok(EnrollReply::Refused {
                reason,
                blacklisted,
            })) => {
                tracing::warn!(%reason, blacklisted, "enrollment refused; asking again later");
                if blacklisted {
                    stop_workloads(enroller).await;
                }
                retry
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "unreadable enrollment reply");
                retry
            }
            Err(e) => {
                tracing::warn!(error = %e, "enrollment request failed; asking again");
                retry.min(Duration::from_secs(5))
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return Ok(None),
        }
    }
}

/// Stops every workload of a blacklisted device: an empty desired state for the supervisor
/// (held state and containers removed, as when the operator deletes every key). Sent as
/// `Rebased`, which also forgets the held revisions: once the blacklist is lifted, the
/// operator's keys apply again even where the listing hands back the very revision the device
/// held before (it keeps records whose hash did not change).
async fn stop_workloads(enroller: &Enroller) {
    let Some(workloads) = &enroller.workloads else {
        return;
    };
    tracing::warn!("this device is blacklisted: stopping its workloads");
    if workloads
        .send(WatchEvent::Rebased(Vec::new()))
        .await
        .is_err()
    {
        tracing::error!("the supervisor is gone: the workloads could not be stopped");
    }
}

/// How to enroll again when the server refuses the credential.
#[derive(Debug, Clone)]
pub struct Enroller {
    /// Server URLs.
    pub urls: Vec<String>,
    /// The servers' CA, if TLS is required.
    pub ca_file: Option<PathBuf>,
    /// The bootstrap `.creds` file, if configured.
    pub bootstrap_creds: Option<PathBuf>,
    /// A bootstrap token sent with the request (adr/0020); its Debug shows the id only.
    pub bootstrap_token: Option<BootstrapToken>,
    /// The device.
    pub device: DeviceId,
    /// What it reports when asking.
    pub inventory: Inventory,
    /// The supervisor's input: a refusal because the device is blacklisted sends it an empty
    /// desired state (see `stop_workloads`), so the workloads stop (the device can no longer hear that the operator
    /// removed them). `None`: workloads are left alone.
    pub workloads: Option<mpsc::Sender<WatchEvent>>,
}

/// Keeps `credential` valid: renews it once two thirds of its lifetime have passed, stores it,
/// and reconnects `client` with it (the server closes a connection whose JWT expires); when
/// the server refuses it (revoked, say, then un-blacklisted), enrolls again with `enroller`.
/// Retries every `retry` until `stop`.
pub async fn maintain(
    client: async_nats::Client,
    credential: Credential,
    enroller: Enroller,
    data_dir: PathBuf,
    retry: Duration,
    stop: CancellationToken,
) {
    let device = enroller.device.clone();
    loop {
        let claims = match jwt::decode::<UserClaims>(&credential.jwt()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "current credential is unreadable; not renewing");
                return;
            }
        };
        let Some(at) = renew_at(&claims) else {
            return; // never expires
        };
        let wait = Duration::from_secs(u64::try_from(at - now()).unwrap_or(0));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = credential.refused.notified() => {
                reenroll(&credential, &enroller, &data_dir, retry, &stop).await;
                continue;
            }
            () = stop.cancelled() => return,
        }
        let body = serde_json::to_vec(&RenewRequest {
            public_key: credential.key().public_key(),
        })
        .unwrap_or_default();
        let answer = tokio::select! {
            answer = client.request(renew_subject(&device), body.into()) => answer,
            () = stop.cancelled() => return,
        };
        match answer.map(|m| serde_json::from_slice::<EnrollReply>(&m.payload)) {
            Ok(Ok(EnrollReply::Issued { jwt: token })) => {
                if let Err(e) = save_credential(&data_dir, &token) {
                    tracing::error!(error = %e, "storing the renewed credential");
                }
                credential.replace(token);
                tracing::info!("credential renewed; reconnecting with it");
                if let Err(e) = client.force_reconnect().await {
                    tracing::warn!(error = %e, "reconnecting with the renewed credential");
                }
                continue;
            }
            Ok(Ok(other)) => tracing::warn!(reply = ?other, "credential not renewed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "unreadable renewal reply"),
            Err(e) => tracing::warn!(error = %e, "renewal request failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Enrolls again after a refusal; the reconnect loop picks the new JWT up.
async fn reenroll(
    credential: &Credential,
    enroller: &Enroller,
    data_dir: &Path,
    retry: Duration,
    stop: &CancellationToken,
) {
    let Some(bootstrap) = &enroller.bootstrap_creds else {
        tracing::error!(
            "the server refuses this device's credential and [credentials] bootstrap_creds is not set: the device cannot enroll again"
        );
        return;
    };
    tracing::warn!("the server refuses this device's credential; enrolling again");
    match enroll(enroller, bootstrap, credential.key(), retry, stop).await {
        Ok(Some(token)) => {
            if let Err(e) = save_credential(data_dir, &token) {
                tracing::error!(error = %e, "storing the new credential");
            }
            credential.replace(token);
        }
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "enrolling again failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let key = load_or_create_key(dir.path()).expect("create");
        let path = dir.path().join(SEED_FILE);
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = load_or_create_key(dir.path()).expect("load");
        assert_eq!(again.public_key(), key.public_key());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load_or_create_key(dir.path()).expect_err("world readable");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_credential_for_another_key_is_ignored() {
        let dir = tempfile::tempdir().expect("tmp");
        let key = KeyPair::new_user();
        let other = KeyPair::new_user();
        let account = KeyPair::new_account();
        let device: DeviceId = "pi-1".parse().expect("id");
        let claims = harmony_fleet_contracts::identity::device_user_claims(
            &device,
            &other.public_key(),
            &account.public_key(),
            now(),
            Duration::from_secs(30),
        );
        save_credential(dir.path(), &jwt::encode(claims, &account).expect("jwt")).expect("save");
        assert_eq!(load_credential(dir.path(), &key), None);
        assert!(load_credential(dir.path(), &other).is_some());

        // An expired one is ignored too: the agent enrolls again.
        let expired = harmony_fleet_contracts::identity::device_user_claims(
            &device,
            &other.public_key(),
            &account.public_key(),
            1,
            Duration::from_secs(30),
        );
        save_credential(dir.path(), &jwt::encode(expired, &account).expect("jwt")).expect("save");
        assert_eq!(load_credential(dir.path(), &other), None);
        let mode = std::fs::metadata(dir.path().join(CREDENTIAL_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime() {
        let claims = harmony_fleet_contracts::identity::device_user_claims(
            &"pi-1".parse().expect("id"),
            "U",
            "A",
            900,
            Duration::from_secs(300),
        );
        assert_eq!(renew_at(&claims), Some(1100));
    }
}
