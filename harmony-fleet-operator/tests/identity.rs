//! Device identity against a real nats-server in operator mode and a real kube-apiserver
//! (adr/0016). First the server side alone: devices connect with user JWTs signed by the fleet
//! account's signing key, so enrolling one changes nothing on the server, and revoking one is a
//! fleet account JWT pushed at run time. Then the operator's identity service: enrollment
//! recorded on the `Device`, approval with one patch, refusals, revocation on blacklist and
//! delete, renewal.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::{ConnectOptions, Event};
use harmony::local::LocalNats;
use harmony_fleet_contracts::identity::{self, DEFAULT_CREDENTIAL_LIFETIME};
use harmony_fleet_contracts::identity::{EnrollReply, EnrollRequest, RenewRequest};
use harmony_fleet_contracts::ids::DeviceId;
use harmony_fleet_contracts::jwt;
use harmony_fleet_contracts::keys;
use harmony_fleet_contracts::trust::{CLAIMS_UPDATE_SUBJECT, FleetSigner, TrustChain};
use harmony_fleet_operator::crd::Device;
use harmony_fleet_operator::crd::device::{BLACKLIST_ANNOTATION, Enrollment, EnrollmentPhase};
use harmony_fleet_operator::identity::{CREDENTIAL_FINALIZER, IdentityOptions, IdentityService};
use kube::api::{Patch, PatchParams};
use nkeys::KeyPair;
use tokio::sync::mpsc;

mod support;
#[path = "support/trust.rs"]
mod trust;
use support::eventually;
use trust::{device_options, disconnects, now, trusted_nats, watched};

/// A client and the events it saw.
struct Watched {
    client: async_nats::Client,
    events: mpsc::UnboundedReceiver<Event>,
}

async fn connect_watched(url: &str, creds: &str) -> Result<Watched> {
    let (options, events) = watched(ConnectOptions::new().credentials(creds)?);
    Ok(Watched {
        client: options.connect(url).await?,
        events,
    })
}

fn device_jwt(chain: &TrustChain, device: &DeviceId, key: &KeyPair, iat: i64) -> Result<String> {
    let claims = identity::device_user_claims(
        device,
        &key.public_key(),
        &chain.fleet_account(),
        iat,
        DEFAULT_CREDENTIAL_LIFETIME,
    );
    Ok(jwt::encode(claims, chain.fleet_signing())?)
}

async fn push_account(pusher: &async_nats::Client, account_jwt: String) -> Result<()> {
    let reply = pusher
        .request(CLAIMS_UPDATE_SUBJECT, account_jwt.into())
        .await?;
    let body: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    if body.get("error").is_some() || body["data"]["code"] != 200 {
        bail!("claims update refused: {body}");
    }
    Ok(())
}

/// Connection ids the server lists right now.
async fn connection_ids(nats: &LocalNats) -> Result<Vec<u64>> {
    let addr: SocketAddr = nats
        .monitor_url()
        .trim_start_matches("http://")
        .parse()
        .context("monitor address")?;
    let response =
        harmony::local::probe::http_get(addr, "/connz?limit=100000", Duration::from_secs(5))
            .await
            .map_err(|e| anyhow::anyhow!("/connz: {e}"))?;
    let body: serde_json::Value = serde_json::from_str(&response.body)?;
    Ok(body["connections"]
        .as_array()
        .map(|list| list.iter().filter_map(|c| c["cid"].as_u64()).collect())
        .unwrap_or_default())
}

#[tokio::test]
async fn a_hundred_enrolments_change_nothing_on_the_server_and_each_device_is_fenced() -> Result<()>
{
    let chain = TrustChain::generate();
    let nats = trusted_nats(&chain).await?;
    let pid = nats.pid();
    let mut admin = connect_watched(&nats.url(), &chain.admin_creds(now())?).await?;
    let admin_cid = admin.client.server_info().client_id;

    let mut devices = Vec::new();
    for i in 0..100 {
        let device: DeviceId = format!("trust-{i}").parse()?;
        let key = Arc::new(KeyPair::new_user());
        let token = device_jwt(&chain, &device, &key, now())?;
        let (options, events) = watched(device_options(&device, key, token));
        let client = options
            .connect(nats.url())
            .await
            .with_context(|| format!("device {device} connects with its own JWT"))?;
        devices.push((device, Watched { client, events }));
    }

    // Each device serves its own command subject, and answers through allow_responses.
    let (device, own) = &devices[7];
    let mut commands = own
        .client
        .subscribe(keys::command_serve_pattern(device))
        .await?;
    own.client.flush().await?;
    let responder = own.client.clone();
    tokio::spawn(async move {
        if let Some(message) = futures::StreamExt::next(&mut commands).await
            && let Some(reply) = message.reply
        {
            let _ = responder.publish(reply, "pong".into()).await;
        }
    });
    let subject = keys::command_subject(device, harmony_fleet_contracts::commands::Verb::Ping);
    // The first request right after 100 connections can meet "no responders" although the
    // subscription is listed in /connz (seen on a loaded machine): ask until answered.
    let answer = eventually("device 7 answers its command subject", || {
        let admin = admin.client.clone();
        let subject = subject.clone();
        async move { admin.request(subject, "ping".into()).await.ok() }
    })
    .await?;
    assert_eq!(&answer.payload[..], b"pong");

    // … and may not touch another device's subjects.
    let (_, neighbour) = &devices[8];
    let _denied = neighbour
        .client
        .subscribe(keys::command_serve_pattern(device))
        .await?;
    neighbour.client.flush().await?;
    let (_, neighbour) = &mut devices[8];
    let violation = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = neighbour.events.recv().await {
            if let Event::ServerError(e) = event {
                return Some(e.to_string());
            }
        }
        None
    })
    .await?;
    let violation = violation.context("no permission error")?;
    assert!(
        violation.to_lowercase().contains("permissions violation"),
        "{violation}"
    );

    assert_eq!(nats.pid(), pid, "nats-server was not restarted");
    assert_eq!(admin.client.server_info().client_id, admin_cid);
    assert_eq!(
        disconnects(&mut admin.events),
        0,
        "the admin never reconnected"
    );
    for (device, watched) in &mut devices {
        assert_eq!(
            disconnects(&mut watched.events),
            0,
            "{device} never reconnected"
        );
    }
    let listed = connection_ids(&nats).await?;
    assert!(listed.contains(&admin_cid));
    assert!(listed.len() >= 101, "{} connections listed", listed.len());
    Ok(())
}

#[tokio::test]
async fn a_revoked_device_is_cut_off_within_five_seconds_and_others_stay() -> Result<()> {
    let chain = TrustChain::generate();
    let nats = trusted_nats(&chain).await?;
    let pusher = trust::connect_creds(&nats.url(), &chain.claims_pusher_creds(now())?).await?;

    let connect = |name: &str| -> Result<(DeviceId, Arc<KeyPair>, String)> {
        let device: DeviceId = name.parse()?;
        let key = Arc::new(KeyPair::new_user());
        let token = device_jwt(&chain, &device, &key, now())?;
        Ok((device, key, token))
    };
    let (bad, bad_key, bad_jwt) = connect("revoked-1")?;
    let (good, good_key, good_jwt) = connect("kept-1")?;
    let (options, mut bad_events) = watched(device_options(&bad, bad_key.clone(), bad_jwt.clone()));
    let _bad_client = options.connect(nats.url()).await?;
    let (options, mut good_events) = watched(device_options(&good, good_key, good_jwt));
    let good_client = options.connect(nats.url()).await?;
    let good_cid = good_client.server_info().client_id;

    let mut revocations = BTreeMap::new();
    revocations.insert(bad_key.public_key(), now());
    let started = Instant::now();
    push_account(&pusher, chain.fleet_account_jwt(revocations, now())?).await?;
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = bad_events.recv().await {
            if matches!(event, Event::Disconnected) {
                return;
            }
        }
    })
    .await
    .context("the revoked device was not disconnected within 5 s")?;
    eprintln!(
        "revocation closed the connection in {:?}",
        started.elapsed()
    );

    let refused = device_options(&bad, bad_key, bad_jwt)
        .connect(nats.url())
        .await;
    let err = refused.err().context("a revoked JWT connected again")?;
    assert!(
        err.to_string().to_lowercase().contains("authorization"),
        "{err}"
    );

    assert_eq!(good_client.server_info().client_id, good_cid);
    assert_eq!(disconnects(&mut good_events), 0);
    good_client.flush().await?;
    Ok(())
}

#[tokio::test]
async fn an_expired_or_forged_credential_is_refused() -> Result<()> {
    let chain = TrustChain::generate();
    let nats = trusted_nats(&chain).await?;

    let device: DeviceId = "expiring-1".parse()?;
    let key = Arc::new(KeyPair::new_user());
    let claims = identity::device_user_claims(
        &device,
        &key.public_key(),
        &chain.fleet_account(),
        now(),
        Duration::from_secs(2),
    );
    let exp = claims.exp.context("exp")?;
    let token = jwt::encode(claims, chain.fleet_signing())?;
    let (options, mut events) = watched(device_options(&device, key.clone(), token.clone()));
    let _client = options.connect(nats.url()).await?;
    eventually("the server closes the connection at expiry", || {
        let seen = disconnects(&mut events) > 0;
        async move { seen.then_some(()) }
    })
    .await?;
    // nats-server accepts a JWT until the second after `exp`.
    eventually("the clock passes exp", || async {
        (now() > exp).then_some(())
    })
    .await?;
    let err = device_options(&device, key.clone(), token)
        .connect(nats.url())
        .await
        .err()
        .context("an expired JWT connected")?;
    assert!(
        err.to_string().to_lowercase().contains("authorization"),
        "{err}"
    );

    // Signed by a key the fleet account does not list.
    let forger = KeyPair::new_account();
    let forged = jwt::encode(
        identity::device_user_claims(
            &device,
            &key.public_key(),
            &chain.fleet_account(),
            now(),
            DEFAULT_CREDENTIAL_LIFETIME,
        ),
        &forger,
    )?;
    let err = device_options(&device, key, forged)
        .connect(nats.url())
        .await
        .err()
        .context("a forged JWT connected")?;
    assert!(
        err.to_string().to_lowercase().contains("authorization"),
        "{err}"
    );
    Ok(())
}

// ----- the operator's identity service -----

/// A trusted nats-server, the identity service on it, and the bootstrap identity devices use.
struct IdentityEnv {
    chain: TrustChain,
    nats: LocalNats,
    devices: kube::Api<Device>,
    bootstrap: async_nats::Client,
    _service: IdentityService,
}

static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn unique(name: &str) -> String {
    let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{name}-{:x}-{n}", std::process::id() & 0xffff)
}

impl IdentityEnv {
    async fn start(hold: Duration) -> Result<Self> {
        let client =
            harmony::local::control_plane::client_from_kubeconfig(&support::kubeconfig()?).await?;
        let chain = TrustChain::generate();
        let nats = trusted_nats(&chain).await?;
        let operator = trust::connect_creds(&nats.url(), &chain.operator_creds(now())?).await?;
        let system = trust::connect_creds(&nats.url(), &chain.claims_pusher_creds(now())?).await?;
        let signer = Arc::new(FleetSigner::from_seeds(&chain.signer_seeds()?)?);
        let options = IdentityOptions {
            hold,
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
            chain,
            nats,
            devices: kube::Api::all(client),
            bootstrap,
            _service: service,
        })
    }

    async fn ask(&self, request: &EnrollRequest) -> Result<EnrollReply> {
        trust::ask(&self.bootstrap, request).await
    }

    async fn enrollment(&self, name: &str) -> Option<Enrollment> {
        self.devices.get(name).await.ok()?.status?.enrollment
    }

    async fn approve(&self, name: &str, key: &str) -> Result<()> {
        // What the docs tell an admin to run:
        // kubectl patch fleetdev <name> --type merge -p '{"spec":{"publicKey":"U…"}}'
        self.devices
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"publicKey": key}})),
            )
            .await?;
        Ok(())
    }

    async fn cleanup(&self, name: &str) {
        trust::remove_device(&self.devices, name).await;
    }
}

fn signed(device: &DeviceId, key: &KeyPair) -> Result<EnrollRequest> {
    Ok(EnrollRequest::signed(
        device.clone(),
        key,
        trust::inventory("bench-pi"),
        now(),
    )?)
}

#[tokio::test]
async fn a_device_enrolls_is_approved_with_one_patch_and_connects() -> Result<()> {
    let env = IdentityEnv::start(Duration::from_secs(20)).await?;
    let name = unique("enroll");
    let device: DeviceId = name.parse()?;
    let key = Arc::new(KeyPair::new_user());

    // The request is held while pending.
    let request = signed(&device, &key)?;
    let asking = {
        let bootstrap = env.bootstrap.clone();
        let body = serde_json::to_vec(&request)?;
        tokio::spawn(async move {
            bootstrap
                .request(identity::ENROLL_SUBJECT, body.into())
                .await
        })
    };
    let pending = eventually("the Device shows the pending request", || async {
        env.enrollment(&name)
            .await
            .filter(|e| e.phase == EnrollmentPhase::Pending)
    })
    .await?;
    assert_eq!(pending.requested_key, Some(key.public_key()));
    let created = env.devices.get(&name).await?;
    assert_eq!(created.spec.inventory.hostname, "bench-pi");
    assert_eq!(
        created.spec.public_key, None,
        "nothing is approved by asking"
    );

    let approved_at = Instant::now();
    env.approve(&name, &key.public_key()).await?;
    let reply = asking.await??;
    let EnrollReply::Issued { jwt: token } = serde_json::from_slice(&reply.payload)? else {
        bail!("not issued: {:?}", String::from_utf8_lossy(&reply.payload));
    };
    let client = device_options(&device, key.clone(), token.clone())
        .connect(env.nats.url())
        .await?;
    // Connected and authorized: its own renewal request is answered.
    let renewed = client
        .request(
            identity::renew_subject(&device),
            serde_json::to_vec(&RenewRequest {
                public_key: key.public_key(),
            })?
            .into(),
        )
        .await?;
    let approval_to_connected = approved_at.elapsed();
    eprintln!("approval → credential → connected and answered: {approval_to_connected:?}");
    assert!(
        matches!(
            serde_json::from_slice(&renewed.payload)?,
            EnrollReply::Issued { .. }
        ),
        "renewal by the device itself is answered with a credential"
    );
    assert!(approval_to_connected < Duration::from_secs(2));

    let enrolled = env.devices.get(&name).await?;
    let status = enrolled
        .status
        .and_then(|s| s.enrollment)
        .context("enrollment")?;
    assert_eq!(status.phase, EnrollmentPhase::Enrolled);
    assert_eq!(status.issued_key, Some(key.public_key()));
    assert!(status.expires_at.is_some());
    assert!(
        enrolled
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&CREDENTIAL_FINALIZER.to_owned())
    );

    // A restarted agent asking again with the same key gets a credential at once.
    assert!(matches!(
        env.ask(&signed(&device, &key)?).await?,
        EnrollReply::Issued { .. }
    ));

    // The same id with another key: refused, and shown on the Device.
    let impostor = KeyPair::new_user();
    let EnrollReply::Refused { reason, .. } = env.ask(&signed(&device, &impostor)?).await? else {
        bail!("another key for an enrolled id was not refused");
    };
    assert!(reason.contains("spec.publicKey"), "{reason}");
    let shown = eventually("the refusal is shown on the Device", || async {
        env.enrollment(&name).await?.last_refusal
    })
    .await?;
    assert!(shown.contains(&impostor.public_key()), "{shown}");
    env.cleanup(&name).await;
    Ok(())
}

#[tokio::test]
async fn forged_and_malformed_requests_are_refused_and_change_nothing() -> Result<()> {
    let env = IdentityEnv::start(Duration::from_secs(20)).await?;
    let name = unique("forged");
    let device: DeviceId = name.parse()?;
    let mut forged = signed(&device, &KeyPair::new_user())?;
    forged.public_key = KeyPair::new_user().public_key();
    let EnrollReply::Refused { reason, .. } = env.ask(&forged).await? else {
        bail!("a forged request was not refused");
    };
    assert!(reason.contains("signature"), "{reason}");

    let reply = env
        .bootstrap
        .request(identity::ENROLL_SUBJECT, "{not json".into())
        .await?;
    let EnrollReply::Refused { reason, .. } = serde_json::from_slice(&reply.payload)? else {
        bail!("a malformed request was not refused");
    };
    assert!(reason.contains("malformed"), "{reason}");
    assert!(
        env.devices.get_opt(&name).await?.is_none(),
        "no Device was created for refused requests"
    );

    // The bootstrap identity can do nothing else.
    let (options, mut events) =
        watched(ConnectOptions::new().credentials(&env.chain.bootstrap_creds(now(), None)?)?);
    let snooper = options.connect(env.nats.url()).await?;
    snooper
        .publish(format!("$KV.device-heartbeat.heartbeat.{name}"), "x".into())
        .await?;
    snooper.flush().await?;
    let violation = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = events.recv().await {
            if let Event::ServerError(e) = event {
                return Some(e.to_string());
            }
        }
        None
    })
    .await?
    .context("no permission error")?;
    assert!(
        violation.to_lowercase().contains("permissions violation"),
        "{violation}"
    );
    Ok(())
}

/// Enrolls `name` and returns its connected client and events.
async fn enrolled(
    env: &IdentityEnv,
    name: &str,
) -> Result<(
    Arc<KeyPair>,
    async_nats::Client,
    mpsc::UnboundedReceiver<Event>,
)> {
    let device: DeviceId = name.parse()?;
    let key = Arc::new(KeyPair::new_user());
    let request = signed(&device, &key)?;
    let first = env.ask(&request);
    let approve = async {
        eventually("pending", || async { env.enrollment(name).await }).await?;
        env.approve(name, &key.public_key()).await
    };
    let (reply, approved) = tokio::join!(first, approve);
    approved?;
    let EnrollReply::Issued { jwt: token } = reply? else {
        bail!("not issued");
    };
    let (options, events) = watched(device_options(&device, key.clone(), token));
    let client = options.connect(env.nats.url()).await?;
    Ok((key, client, events))
}

#[tokio::test]
async fn blacklisting_or_deleting_a_device_revokes_its_credential_within_five_seconds() -> Result<()>
{
    let env = IdentityEnv::start(Duration::from_secs(20)).await?;
    let pid = env.nats.pid();
    let black = unique("black");
    let gone = unique("gone");
    let kept = unique("kept");
    let (black_key, _black_client, mut black_events) = enrolled(&env, &black).await?;
    let (_, _gone_client, mut gone_events) = enrolled(&env, &gone).await?;
    let (_, kept_client, mut kept_events) = enrolled(&env, &kept).await?;
    let kept_cid = kept_client.server_info().client_id;

    let started = Instant::now();
    env.devices
        .patch(
            &black,
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {BLACKLIST_ANNOTATION: "true"}}}),
            ),
        )
        .await?;
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = black_events.recv().await {
            if matches!(event, Event::Disconnected) {
                return;
            }
        }
    })
    .await
    .context("the blacklisted device stayed connected for 5 s")?;
    eprintln!("blacklist → disconnected: {:?}", started.elapsed());
    let EnrollReply::Refused { blacklisted, .. } =
        env.ask(&signed(&black.parse()?, &black_key)?).await?
    else {
        bail!("a blacklisted device was issued a credential");
    };
    anyhow::ensure!(
        blacklisted,
        "the refusal must say the device is blacklisted (its agent stops its workloads)"
    );
    eventually("the blacklisted Device shows Revoked", || async {
        (env.enrollment(&black).await?.phase == EnrollmentPhase::Revoked).then_some(())
    })
    .await?;

    let started = Instant::now();
    env.devices.delete(&gone, &Default::default()).await?;
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = gone_events.recv().await {
            if matches!(event, Event::Disconnected) {
                return;
            }
        }
    })
    .await
    .context("the deleted device stayed connected for 5 s")?;
    eprintln!("delete → disconnected: {:?}", started.elapsed());
    eventually(
        "the deleted Device is released by its finalizer",
        || async {
            env.devices
                .get_opt(&gone)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await?;

    assert_eq!(env.nats.pid(), pid, "nats-server was not restarted");
    assert_eq!(kept_client.server_info().client_id, kept_cid);
    assert_eq!(
        disconnects(&mut kept_events),
        0,
        "the other device never reconnected"
    );
    kept_client.flush().await?;
    for name in [&black, &kept] {
        env.cleanup(name).await;
    }
    Ok(())
}
