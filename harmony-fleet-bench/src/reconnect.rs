//! The cost of device authentication when a fleet reconnects (adr/0016): N devices connect to
//! one nats-server, `concurrency` at a time, each with its own credential, as after a server
//! restart. Side by side in one run: the same server without authentication (the floor) and in
//! operator mode with per-device JWTs. Each connection completes its handshake (CONNECT, the
//! nonce signed with the device's seed, verified by the server against the fleet account), a
//! round trip (flush), then closes: one process here cannot hold 100k clients, so this measures
//! the handshake work a reconnect storm costs the server, not 100k idle connections.
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
        return Err(Error::nats("a device connection", e));
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
    let t = now();
    let auth = NatsAuthConfig {
        system_account: Some(chain.system_account()),
        operator: Some(NatsOperatorTrust {
            jwt: chain
                .operator_jwt(t)
                .map_err(|e| Error::nats("operator JWT", e))?,
            preload: vec![
                (
                    chain.system_account(),
                    chain
                        .system_account_jwt(t)
                        .map_err(|e| Error::nats("system account JWT", e))?,
                ),
                (
                    chain.fleet_account(),
                    chain
                        .fleet_account_jwt(BTreeMap::new(), t)
                        .map_err(|e| Error::nats("fleet account JWT", e))?,
                ),
            ],
        }),
        ..NatsAuthConfig::default()
    };
    let nats = LocalNats::start(NatsOptions {
        auth: Some(auth),
        ..NatsOptions::default()
    })
    .await?;
    let (elapsed, cpu) = storm(&nats, logins, opts.concurrency).await?;
    row(&mut table, "jwt (operator mode)", opts, elapsed, cpu);
    eprintln!("reconnect: jwt: {elapsed:.1} s");

    let path = table.write(&opts.out_dir, "reconnect")?;
    eprintln!("reconnect: wrote {}", path.display());
    println!("{}", table.markdown());
    Ok(table)
}
