//! Proof that a fleet NATS works: the operator can round-trip a value through KV, and a device
//! is refused another device's key (while its own key is answered, so the refusal is the
//! permission and not a broken login).

use std::time::Duration;

use async_nats::jetstream;
use async_nats::{ConnectOptions, Event};
use bytes::Bytes;
use harmony_fleet_contracts::buckets::DESIRED_STATE;
use harmony_fleet_contracts::{DeviceId, device_inbox_prefix, jetstream as js_api};
use tokio::sync::mpsc;

use super::NatsEndpoint;
use crate::error::DeployError;

/// Who connects: a `.creds` file's text (a user JWT and its seed, operator mode, adr/0016).
#[derive(Clone)]
pub struct NatsIdentity {
    /// Shown in errors.
    pub name: String,
    /// The `.creds` text.
    pub creds: String,
}

impl std::fmt::Debug for NatsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl NatsIdentity {
    /// The user's name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn apply(&self, options: ConnectOptions) -> Result<ConnectOptions, DeployError> {
        options
            .credentials(&self.creds)
            .map_err(|e| DeployError::nats(format!("reading the .creds of {}", self.name), e))
    }
}

/// Connects to `endpoint` as `identity`, verifying the servers against its CA when it has
/// one (and then refusing plaintext).
pub async fn connect(
    endpoint: &NatsEndpoint,
    identity: &NatsIdentity,
    options: ConnectOptions,
) -> Result<async_nats::Client, DeployError> {
    let urls = &endpoint.urls;
    let joined = urls.join(",");
    let options = match &endpoint.ca_file {
        Some(ca) => options.add_root_certificates(ca.clone()).require_tls(true),
        None => options,
    };
    let addrs = urls
        .iter()
        .map(|url| url.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DeployError::nats(format!("parsing the NATS URLs {joined}"), e))?;
    identity
        .apply(options)?
        .connection_timeout(Duration::from_secs(5))
        .connect(addrs.as_slice())
        .await
        .map_err(|e| DeployError::nats(format!("connecting to {joined} as {}", identity.name()), e))
}

/// How long the round trip asks for the bucket before giving up.
const OPEN_BUCKET_TIMEOUT: Duration = Duration::from_secs(30);

/// Puts, reads back and deletes a key in `desired-state` as `operator`.
pub async fn kv_round_trip(
    endpoint: &NatsEndpoint,
    operator: &NatsIdentity,
) -> Result<(), DeployError> {
    let client = connect(endpoint, operator, ConnectOptions::new()).await?;
    let js = jetstream::new(client);
    // Right after a cluster created the bucket, its stream may still be electing a leader and
    // the JetStream API times out (seen in CI with three servers): ask until it answers.
    let deadline = tokio::time::Instant::now() + OPEN_BUCKET_TIMEOUT;
    let kv = loop {
        match js.get_key_value(DESIRED_STATE).await {
            Ok(kv) => break kv,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(bucket = DESIRED_STATE, error = %e, "bucket not answering yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(DeployError::nats(
                    format!("opening bucket {DESIRED_STATE} (for {OPEN_BUCKET_TIMEOUT:?})"),
                    e,
                ));
            }
        }
    };
    let key = "harmony-smoke.round-trip";
    let value = Bytes::from(format!("{}", jiff::Timestamp::now()));
    kv.put(key, value.clone())
        .await
        .map_err(|e| DeployError::nats(format!("putting {key}"), e))?;
    // Reads are direct gets, which any replica answers: one that is still catching up (a node
    // that just rejoined) may not have the value yet. Read until it is there or 10 s passed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let read = loop {
        let read = kv
            .get(key)
            .await
            .map_err(|e| DeployError::nats(format!("reading {key}"), e))?;
        if read.as_ref() == Some(&value) || tokio::time::Instant::now() >= deadline {
            break read;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    kv.delete(key)
        .await
        .map_err(|e| DeployError::nats(format!("deleting {key}"), e))?;
    if read.as_ref() != Some(&value) {
        return Err(DeployError::nats(
            format!("round trip of {key}"),
            format!("read back {read:?}, wrote {value:?}"),
        ));
    }
    Ok(())
}

/// As `device`, reads its own `desired-state` key (must be answered) and another device's
/// (must be refused by the server with a permissions violation).
pub async fn device_is_isolated(
    endpoint: &NatsEndpoint,
    device: &DeviceId,
    identity: &NatsIdentity,
) -> Result<(), DeployError> {
    let (tx, mut violations) = mpsc::unbounded_channel();
    let options = ConnectOptions::new()
        .custom_inbox_prefix(device_inbox_prefix(device))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let Event::ServerError(error) = event {
                    let _ = tx.send(error.to_string());
                }
            }
        });
    let client = connect(endpoint, identity, options).await?;

    // In a cluster, a server learns of the stream's direct-get responders on the other nodes
    // through route interest, which can trail a fresh connection (or a node that just
    // rejoined) by a moment: "no responders" then means "not yet", so ask until answered.
    let own = js_api::direct_get(DESIRED_STATE, &format!("{}.harmony-smoke", device.as_str()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            client.request(own.clone(), Bytes::new()),
        )
        .await
        .map_err(|_| {
            DeployError::nats(
                format!("reading own key as {device}"),
                "no answer within 5s",
            )
        })?;
        match answer {
            Ok(_) => break,
            Err(e)
                if e.kind() == async_nats::RequestErrorKind::NoResponders
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(DeployError::nats(
                    format!("reading own key ({own}) as {device}"),
                    e,
                ));
            }
        }
    }

    let other_device: DeviceId = "harmony-smoke-other"
        .parse()
        .map_err(|e| DeployError::nats("building the other device id", e))?;
    let other = js_api::direct_get(
        DESIRED_STATE,
        &format!("{}.harmony-smoke", other_device.as_str()),
    );
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        client.request(other.clone(), Bytes::new()),
    )
    .await;
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(message) = violations.recv().await {
            if message.to_lowercase().contains("permissions violation") && message.contains(&other)
            {
                return Some(message);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    match seen {
        Some(_) => Ok(()),
        None => Err(DeployError::nats(
            format!("checking that {device} cannot read {other}"),
            "the server did not refuse it: device permissions are not applied",
        )),
    }
}
