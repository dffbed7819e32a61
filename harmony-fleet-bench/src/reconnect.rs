//! The cost of device authentication when a fleet reconnects (adr/0016): N devices connect to
//! one nats-server, `concurrency` at a time, each with its own credential, as after a server
//! restart. Side by side in one run: the same server without authentication (the floor) and in
//! operator mode with per-device JWTs. Each connection completes its handshake (CONNECT, the
//! nonce signed with the device's seed, verified by the server against the fleet account), a
//! round trip (flush), then closes: one process here cannot hold 100k clients, so this measures
//! the handshake work a reconnect storm costs the server, not 100k idle connections.
//!
//! The third mode is the alternative adr/0016 weighed: an auth callout. Devices present a
//! user and token; nats-server forwards each CONNECT to a callout service (here, in this
//! process, on its own connection) that checks the token and answers with a signed user JWT
//! carrying the device's permission template. Its CPU is the service's share of the cost.
//!
//! Also measured: what issuing the N credentials costs the operator (one ed25519 signature and
//! a JSON encoding each).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use harmony::local::nats::{NatsAuthConfig, NatsOperatorTrust};
use harmony::local::{LocalNats, NatsOptions};
use harmony_fleet_contracts::identity::DEFAULT_CREDENTIAL_LIFETIME;
use harmony_fleet_contracts::ids::DeviceId;
use harmony_fleet_contracts::permissions::device_inbox_prefix;
use harmony_fleet_contracts::trust::{FleetSigner, TrustChain};
use nkeys::KeyPair;

use crate::error::{Error, Result};
use crate::procstat;
use crate::report::{Table, num};

/// What to run.
#[derive(Clone, Debug)]
pub struct ReconnectOptions {
    /// Devices (connections made per mode).
    pub devices: usize,
    /// Connections in flight at once.
    pub concurrency: usize,
    /// Where results go.
    pub out_dir: PathBuf,
}

/// Column names.
pub const COLUMNS: [&str; 7] = [
    "auth",
    "devices",
    "in flight",
    "all connected s",
    "connects/s",
    "nats CPU s",
    "nats CPU ms / connect",
];

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// One device's way in.
#[derive(Clone)]
enum Login {
    Anonymous,
    Jwt { jwt: String, key: Arc<KeyPair> },
    Token { user: String, token: String },
}

fn options(device: &DeviceId, login: &Login) -> async_nats::ConnectOptions {
    let base = match login {
        Login::Anonymous => async_nats::ConnectOptions::new(),
        Login::Jwt { jwt, key } => {
            let key = key.clone();
            async_nats::ConnectOptions::with_jwt(jwt.clone(), move |nonce| {
                let key = key.clone();
                async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
            })
        }
        Login::Token { user, token } => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), token.clone())
        }
    };
    base.custom_inbox_prefix(device_inbox_prefix(device))
        .connection_timeout(Duration::from_secs(30))
}

/// Connects every device once; returns (seconds, server CPU seconds).
async fn storm(
    nats: &LocalNats,
    logins: Vec<(DeviceId, Login)>,
    concurrency: usize,
) -> Result<(f64, f64)> {
    let pid = nats.pid().unwrap_or(0);
    let url = nats.url();
    let cpu0 = procstat::sample(pid)?;
    let started = Instant::now();
    let results: Vec<std::result::Result<(), String>> = futures::stream::iter(logins)
        .map(|(device, login)| {
            let url = url.clone();
            async move {
                let client = options(&device, &login)
                    .connect(url)
                    .await
                    .map_err(|e| format!("{device}: {e}"))?;
                client.flush().await.map_err(|e| format!("{device}: {e}"))?;
                drop(client);
                Ok(())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu1 = procstat::sample(pid)?;
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        return Err(Error::nats("a device connection", e.clone()));
    }
    Ok((elapsed, cpu1.cpu_seconds - cpu0.cpu_seconds))
}

fn row(table: &mut Table, auth: &str, opts: &ReconnectOptions, elapsed: f64, cpu: f64) {
    let n = opts.devices as f64;
    table.rows.push(vec![
        auth.to_owned(),
        opts.devices.to_string(),
        opts.concurrency.to_string(),
        num(Some(elapsed), 1),
        num(Some(n / elapsed), 0),
        num(Some(cpu), 1),
        num(Some(1000.0 * cpu / n), 3),
    ]);
}

/// A nats-server that trusts `chain` (operator mode, full resolver).
pub async fn trusted_nats(chain: &TrustChain) -> Result<LocalNats> {
    let t = now();
    let jwt_err = |what: &'static str| move |e| Error::nats(what, e);
    let auth = NatsAuthConfig {
        system_account: Some(chain.system_account()),
        operator: Some(NatsOperatorTrust {
            jwt: chain.operator_jwt(t).map_err(jwt_err("operator JWT"))?,
            preload: vec![
                (
                    chain.system_account(),
                    chain
                        .system_account_jwt(t)
                        .map_err(jwt_err("system account JWT"))?,
                ),
                (
                    chain.fleet_account(),
                    chain
                        .fleet_account_jwt(BTreeMap::new(), t)
                        .map_err(jwt_err("fleet account JWT"))?,
                ),
            ],
        }),
        ..NatsAuthConfig::default()
    };
    Ok(LocalNats::start(NatsOptions {
        auth: Some(auth),
        ..NatsOptions::default()
    })
    .await?)
}

/// Runs both modes and writes `reconnect.csv`/`.md`; prints the credential issuing cost.
pub async fn run(opts: &ReconnectOptions) -> Result<Table> {
    let ids: Vec<DeviceId> = (0..opts.devices)
        .map(|i| format!("rc-{i}").parse::<DeviceId>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::nats("device ids", e))?;
    let mut table = Table::new(&COLUMNS);

    // The floor: no authentication at all.
    {
        let nats = LocalNats::start(NatsOptions::default()).await?;
        let logins = ids.iter().map(|d| (d.clone(), Login::Anonymous)).collect();
        let (elapsed, cpu) = storm(&nats, logins, opts.concurrency).await?;
        row(&mut table, "none", opts, elapsed, cpu);
        eprintln!("reconnect: none: {elapsed:.1} s");
    }

    // Operator mode: one JWT per device, signed as the operator issues them.
    let chain = TrustChain::generate();
    let signer = FleetSigner::from_seeds(
        &chain
            .signer_seeds()
            .map_err(|e| Error::nats("signer seeds", e))?,
    )
    .map_err(|e| Error::nats("signer", e))?;
    let keys: Vec<Arc<KeyPair>> = ids.iter().map(|_| Arc::new(KeyPair::new_user())).collect();
    let issued = Instant::now();
    let mut logins = Vec::with_capacity(ids.len());
    for (device, key) in ids.iter().zip(&keys) {
        let jwt = signer
            .device_jwt(
                device,
                &key.public_key(),
                now(),
                DEFAULT_CREDENTIAL_LIFETIME,
            )
            .map_err(|e| Error::nats("issuing a credential", e))?;
        logins.push((
            device.clone(),
            Login::Jwt {
                jwt,
                key: key.clone(),
            },
        ));
    }
    let issue_secs = issued.elapsed().as_secs_f64();
    eprintln!(
        "reconnect: issued {} credentials in {issue_secs:.2} s ({:.1} µs each, one core)",
        ids.len(),
        1e6 * issue_secs / ids.len().max(1) as f64
    );
    let nats = trusted_nats(&chain).await?;
    let (elapsed, cpu) = storm(&nats, logins, opts.concurrency).await?;
    row(&mut table, "jwt (operator mode)", opts, elapsed, cpu);
    eprintln!("reconnect: jwt: {elapsed:.1} s");

    drop(nats);

    // Auth callout: the server asks a service for every connection.
    let (elapsed, cpu, service_cpu) = callout_storm(&ids, opts.concurrency).await?;
    let label = format!("auth callout (+{service_cpu:.1} s service CPU)");
    row(&mut table, &label, opts, elapsed, cpu);
    eprintln!("reconnect: callout: {elapsed:.1} s");

    let path = table.write(&opts.out_dir, "reconnect")?;
    eprintln!("reconnect: wrote {}", path.display());
    println!("{}", table.markdown());
    Ok(table)
}

/// The token of `device` in the callout mode: what a device would present (derived, so the
/// service checks it without a table).
fn token_of(secret: &[u8], device: &str) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(secret);
    h.update(device.as_bytes());
    hex::encode(h.finalize())
}

/// Runs the callout mode; returns (seconds, server CPU seconds, service CPU seconds).
async fn callout_storm(ids: &[DeviceId], concurrency: usize) -> Result<(f64, f64, f64)> {
    use harmony::local::nats::{NatsAccount, NatsAuthCallout, NatsUser};
    let issuer = Arc::new(KeyPair::new_account());
    let service_password = "callout-service".to_owned();
    let auth = NatsAuthConfig {
        accounts: vec![
            NatsAccount {
                name: "AUTH".into(),
                jetstream: false,
                users: vec![NatsUser {
                    user: "auth".into(),
                    password: service_password.clone(),
                    permissions: None,
                }],
            },
            NatsAccount {
                name: "FLEET".into(),
                jetstream: true,
                users: vec![],
            },
        ],
        auth_callout: Some(NatsAuthCallout {
            issuer: issuer.public_key(),
            auth_users: vec!["auth".into()],
            account: "AUTH".into(),
        }),
        ..NatsAuthConfig::default()
    };
    let nats = LocalNats::start(NatsOptions {
        auth: Some(auth),
        ..NatsOptions::default()
    })
    .await?;
    let secret = b"bench-callout-secret".to_vec();
    let service =
        async_nats::ConnectOptions::with_user_and_password("auth".into(), service_password)
            .connect(nats.url())
            .await
            .map_err(|e| Error::nats("connecting the callout service", e))?;
    let mut requests = service
        .subscribe("$SYS.REQ.USER.AUTH")
        .await
        .map_err(|e| Error::nats("subscribing the callout service", e))?;
    service
        .flush()
        .await
        .map_err(|e| Error::nats("flushing the callout service", e))?;
    let busy = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let busy_ns = busy.clone();
    let responder = service.clone();
    let key = issuer.clone();
    let service_secret = secret.clone();
    let task = tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let started = Instant::now();
            let answer = authorize(&message.payload, &key, &service_secret);
            busy_ns.fetch_add(
                started.elapsed().as_nanos() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            if let (Some(reply), Some(answer)) = (message.reply, answer) {
                let _ = responder.publish(reply, answer.into()).await;
            }
        }
    });
    let logins = ids
        .iter()
        .map(|d| {
            (
                d.clone(),
                Login::Token {
                    user: d.to_string(),
                    token: token_of(&secret, d.as_str()),
                },
            )
        })
        .collect();
    let (elapsed, cpu) = storm(&nats, logins, concurrency).await?;
    task.abort();
    let service_cpu = busy.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e9;
    Ok((elapsed, cpu, service_cpu))
}

/// The callout service's decision for one authorization request: a response JWT, or `None`
/// for an unreadable request.
fn authorize(request: &[u8], issuer: &KeyPair, secret: &[u8]) -> Option<String> {
    use harmony_fleet_contracts::identity::{DEVICE_MAX_PAYLOAD, user_rules};
    use harmony_fleet_contracts::jwt::{self, Claims};
    let text = std::str::from_utf8(request).ok()?;
    let claims: Claims<serde_json::Value> = jwt::decode(text).ok()?;
    let nats = &claims.nats;
    let user_nkey = nats["user_nkey"].as_str()?.to_owned();
    let server_id = nats["server_id"]["id"].as_str()?.to_owned();
    let user = nats["connect_opts"]["user"].as_str().unwrap_or_default();
    let pass = nats["connect_opts"]["pass"].as_str().unwrap_or_default();
    let response = |inner: serde_json::Value| {
        jwt::encode(
            Claims {
                jti: String::new(),
                aud: Some(server_id.clone()),
                iat: now(),
                iss: String::new(),
                name: String::new(),
                sub: user_nkey.clone(),
                exp: None,
                nats: inner,
            },
            issuer,
        )
        .ok()
    };
    let device: Option<DeviceId> = user.parse().ok();
    let Some(device) = device.filter(|d| token_of(secret, d.as_str()) == pass) else {
        return response(serde_json::json!({
            "error": "unknown device or wrong token", "type": "authorization_response", "version": 2
        }));
    };
    let mut rules = user_rules(&harmony_fleet_contracts::permissions::device_permissions(
        &device,
    ));
    rules.payload = DEVICE_MAX_PAYLOAD;
    let user_jwt = jwt::encode(
        Claims {
            jti: String::new(),
            aud: Some("FLEET".into()),
            iat: now(),
            iss: String::new(),
            name: device.to_string(),
            sub: user_nkey.clone(),
            exp: None,
            nats: rules,
        },
        issuer,
    )
    .ok()?;
    response(serde_json::json!({"jwt": user_jwt, "type": "authorization_response", "version": 2}))
}
