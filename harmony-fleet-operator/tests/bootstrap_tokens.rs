//! Bootstrap tokens (adr/0020) against a real kube-apiserver and a real nats-server in
//! operator mode: a device presenting a valid token is approved and issued a credential with
//! no person involved; expired, used-up and wrong-secret tokens are refused, the reason shown
//! on the `Device`, and nothing is approved; two devices racing for the last use cannot both
//! take it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::ConnectOptions;
use harmony::local::LocalNats;
use harmony_fleet_contracts::bootstrap_token::{
    APPROVED_BY_ANNOTATION, BootstrapToken, SECRET_TYPE, TokenId, TokenRecord, data_keys,
};
use harmony_fleet_contracts::identity::{self, EnrollReply, EnrollRequest, RenewRequest};
use harmony_fleet_contracts::ids::DeviceId;
use harmony_fleet_contracts::trust::{FleetSigner, TrustChain};
use harmony_fleet_operator::crd::Device;
use harmony_fleet_operator::crd::device::{Enrollment, EnrollmentPhase};
use harmony_fleet_operator::identity::service::tokens::{Outcome, take_use};
use harmony_fleet_operator::identity::token::TokenRefusal;
use harmony_fleet_operator::identity::{IdentityOptions, IdentityService};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use nkeys::KeyPair;

mod support;
#[path = "support/trust.rs"]
#[allow(dead_code)]
mod trust;
use support::eventually;
use trust::{device_options, now, trusted_nats};

static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn unique(name: &str) -> String {
    let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{name}-{:x}-{n}", std::process::id() & 0xffff)
}

/// A fresh token id: 6 characters a-z0-9, unique in this run.
fn token_id() -> TokenId {
    let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let raw = format!("{:03x}{:03x}", std::process::id() & 0xfff, n & 0xfff);
    raw.parse().expect("hex digits are a-z0-9")
}

struct Env {
    nats: LocalNats,
    devices: Api<Device>,
    secrets: Api<Secret>,
    namespace: String,
    bootstrap: async_nats::Client,
    _service: IdentityService,
}

impl Env {
    /// The identity service reading tokens from a fresh namespace; requests held `hold`.
    async fn start(hold: Duration) -> Result<Self> {
        let client =
            harmony::local::control_plane::client_from_kubeconfig(&support::kubeconfig()?).await?;
        let namespace = unique("tokens");
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": namespace }
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        let chain = TrustChain::generate();
        let nats = trusted_nats(&chain).await?;
        let operator = trust::connect_creds(&nats.url(), &chain.operator_creds(now())?).await?;
        let system = trust::connect_creds(&nats.url(), &chain.claims_pusher_creds(now())?).await?;
        let signer = Arc::new(FleetSigner::from_seeds(&chain.signer_seeds()?)?);
        let options = IdentityOptions {
            hold,
            token_namespace: namespace.clone(),
            ..IdentityOptions::new(signer)
        };
        let service = IdentityService::start(operator, system, client.clone(), options).await?;
        let bootstrap = ConnectOptions::new()
            .credentials(&chain.bootstrap_creds(now(), None)?)?
            .custom_inbox_prefix(identity::BOOTSTRAP_INBOX_PREFIX)
            .request_timeout(Some(Duration::from_secs(30)))
            .connect(nats.url())
            .await?;
        Ok(Self {
            nats,
            devices: Api::all(client.clone()),
            secrets: Api::namespaced(client, &namespace),
            namespace,
            bootstrap,
            _service: service,
        })
    }

    /// Writes a token Secret the way `harmony-fleet-deploy token create` does.
    async fn token(&self, limit: u32, expiration: Timestamp) -> Result<TokenRecord> {
        let record = TokenRecord {
            id: token_id(),
            secret: "s3cr3tt0k3n0000a".into(),
            expiration,
            usage_limit: limit,
            usages: 0,
        };
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": { "name": record.id.secret_name(), "namespace": self.namespace },
            "type": SECRET_TYPE,
            "stringData": record.to_data(),
        }))?;
        self.secrets.create(&PostParams::default(), &secret).await?;
        Ok(record)
    }

    async fn usages(&self, id: &TokenId) -> Result<String> {
        let secret = self.secrets.get(&id.secret_name()).await?;
        let data = secret.data.context("data")?;
        let bytes = data.get(data_keys::USAGES).context("usages")?;
        Ok(String::from_utf8(bytes.0.clone())?)
    }

    async fn ask(&self, request: &EnrollRequest) -> Result<EnrollReply> {
        trust::ask(&self.bootstrap, request).await
    }

    async fn enrollment(&self, name: &str) -> Option<Enrollment> {
        self.devices.get(name).await.ok()?.status?.enrollment
    }

    /// Asks with `token`, expects it refused: the reply is `Pending` (held for a manual
    /// approval), the reason is shown on the `Device`, and no key is approved. Returns the
    /// reason shown.
    async fn refused(&self, name: &str, key: &KeyPair, token: BootstrapToken) -> Result<String> {
        let device: DeviceId = name.parse()?;
        let reply = self
            .ask(&request(&device, key)?.with_bootstrap_token(Some(token)))
            .await?;
        let EnrollReply::Pending { .. } = reply else {
            bail!("{name}: expected the request to stay pending, got {reply:?}");
        };
        let shown = eventually("the refusal is shown on the Device", || async {
            self.enrollment(name).await?.last_refusal
        })
        .await?;
        let stored = self.devices.get(name).await?;
        assert_eq!(stored.spec.public_key, None, "{name}: nothing approved");
        assert_eq!(
            self.enrollment(name).await.map(|e| e.phase),
            Some(EnrollmentPhase::Pending),
            "{name}: still pending for a manual approval"
        );
        assert!(
            !stored
                .metadata
                .annotations
                .unwrap_or_default()
                .contains_key(APPROVED_BY_ANNOTATION)
        );
        Ok(shown)
    }

    async fn cleanup(&self, name: &str) {
        trust::remove_device(&self.devices, name).await;
    }
}

fn request(device: &DeviceId, key: &KeyPair) -> Result<EnrollRequest> {
    Ok(EnrollRequest::signed(
        device.clone(),
        key,
        trust::inventory("token-pi"),
        now(),
    )?)
}

fn in_an_hour() -> Result<Timestamp> {
    Ok(Timestamp::now().checked_add(jiff::SignedDuration::from_secs(3600))?)
}

#[tokio::test]
async fn a_device_with_a_valid_token_enrolls_and_connects_without_approval() -> Result<()> {
    let env = Env::start(Duration::from_secs(20)).await?;
    let token = env.token(2, in_an_hour()?).await?;
    let name = unique("token-ok");
    let device: DeviceId = name.parse()?;
    let key = Arc::new(KeyPair::new_user());

    let asked = std::time::Instant::now();
    let reply = env
        .ask(&request(&device, &key)?.with_bootstrap_token(Some(token.token())))
        .await?;
    let EnrollReply::Issued { jwt } = reply else {
        bail!("a valid token did not get a credential: {reply:?}");
    };
    let client = device_options(&device, key.clone(), jwt)
        .connect(env.nats.url())
        .await?;
    let renewed = client
        .request(
            identity::renew_subject(&device),
            serde_json::to_vec(&RenewRequest {
                public_key: key.public_key(),
            })?
            .into(),
        )
        .await?;
    eprintln!(
        "request with a token → connected and answered: {:?}",
        asked.elapsed()
    );
    assert!(matches!(
        serde_json::from_slice(&renewed.payload)?,
        EnrollReply::Issued { .. }
    ));

    // Visible exactly like a manual approval, plus the token that approved it.
    let stored = env.devices.get(&name).await?;
    assert_eq!(stored.spec.public_key, Some(key.public_key()));
    assert_eq!(
        stored
            .metadata
            .annotations
            .unwrap_or_default()
            .get(APPROVED_BY_ANNOTATION)
            .map(String::as_str),
        Some(token.id.as_str())
    );
    let enrollment = env.enrollment(&name).await.context("enrollment")?;
    assert_eq!(enrollment.phase, EnrollmentPhase::Enrolled);
    assert_eq!(enrollment.issued_key, Some(key.public_key()));
    assert_eq!(env.usages(&token.id).await?, "1");

    // Asking again (a restarted agent) is answered from the approval: no second use.
    let again = env
        .ask(&request(&device, &key)?.with_bootstrap_token(Some(token.token())))
        .await?;
    assert!(matches!(again, EnrollReply::Issued { .. }), "{again:?}");
    assert_eq!(env.usages(&token.id).await?, "1");
    env.cleanup(&name).await;
    Ok(())
}

#[tokio::test]
async fn an_exhausted_token_refuses_the_second_device() -> Result<()> {
    let env = Env::start(Duration::from_secs(1)).await?;
    let token = env.token(1, in_an_hour()?).await?;
    let first = unique("token-first");
    let reply = env
        .ask(
            &request(&first.parse()?, &KeyPair::new_user())?
                .with_bootstrap_token(Some(token.token())),
        )
        .await?;
    assert!(matches!(reply, EnrollReply::Issued { .. }), "{reply:?}");

    let second = unique("token-second");
    let shown = env
        .refused(&second, &KeyPair::new_user(), token.token())
        .await?;
    assert!(shown.contains("used up"), "{shown}");
    assert!(shown.contains(token.id.as_str()), "{shown}");
    assert_eq!(env.usages(&token.id).await?, "1", "a refusal takes no use");
    for name in [&first, &second] {
        env.cleanup(name).await;
    }
    Ok(())
}

#[tokio::test]
async fn expired_and_wrong_secret_tokens_are_refused_and_nothing_is_approved() -> Result<()> {
    let env = Env::start(Duration::from_secs(1)).await?;
    let expired = env
        .token(
            5,
            Timestamp::now().checked_sub(jiff::SignedDuration::from_secs(60))?,
        )
        .await?;
    let name = unique("token-expired");
    let shown = env
        .refused(&name, &KeyPair::new_user(), expired.token())
        .await?;
    assert!(shown.contains("expired"), "{shown}");
    assert_eq!(env.usages(&expired.id).await?, "0");

    let valid = env.token(5, in_an_hour()?).await?;
    let wrong = BootstrapToken::new(&valid.id, "wrongwrongwrong0");
    let guessed = unique("token-wrong");
    let key = KeyPair::new_user();
    let shown = env.refused(&guessed, &key, wrong).await?;
    assert!(shown.contains("wrong secret"), "{shown}");
    assert!(!shown.contains(&valid.secret), "{shown}");
    assert_eq!(env.usages(&valid.id).await?, "0");

    let missing = BootstrapToken::new(&token_id(), "s3cr3tt0k3n0000a");
    let unknown = unique("token-unknown");
    let shown = env.refused(&unknown, &KeyPair::new_user(), missing).await?;
    assert!(shown.contains("does not exist"), "{shown}");

    // Still pending: an admin approves it by hand, and the next request is issued.
    env.devices
        .patch(
            &guessed,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"publicKey": key.public_key()}})),
        )
        .await?;
    let reply = eventually("the manually approved device is issued", || async {
        match env
            .ask(&request(&guessed.parse().ok()?, &key).ok()?)
            .await
            .ok()?
        {
            reply @ EnrollReply::Issued { .. } => Some(reply),
            _ => None,
        }
    })
    .await?;
    assert!(matches!(reply, EnrollReply::Issued { .. }));
    for name in [&name, &guessed, &unknown] {
        env.cleanup(name).await;
    }
    Ok(())
}

#[tokio::test]
async fn devices_racing_for_the_last_use_cannot_both_take_it() -> Result<()> {
    let env = Env::start(Duration::from_secs(1)).await?;
    let token = env.token(1, in_an_hour()?).await?;
    let racers = (0..6).map(|_| {
        let secrets = env.secrets.clone();
        let namespace = env.namespace.clone();
        let token = token.token();
        tokio::spawn(async move { take_use(&secrets, &namespace, &token).await })
    });
    let mut taken = 0;
    for racer in racers.collect::<Vec<_>>() {
        match racer.await? {
            Outcome::Taken { usages, limit, .. } => {
                assert_eq!((usages, limit), (1, 1));
                taken += 1;
            }
            Outcome::Refused(TokenRefusal::Exhausted { .. }) => {}
            other => bail!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(taken, 1, "exactly one racer takes the last use");
    assert_eq!(env.usages(&token.id).await?, "1");
    Ok(())
}
