//! The NATS connection: connect options (every URL, credentials, the device's inbox prefix,
//! reconnect backoff), the [`Link`] state other loops wait on, and writes to the agent's KV
//! buckets.
//!
//! The client connects in the background (`retry_on_initial_connect`), so the agent starts and
//! restores workloads even when no server is reachable. Connection events are logged and turned
//! into a [`Link`] (connected flag + a generation bumped on every (re)connect) that the watch,
//! report and command loops follow: a new generation means "re-sync now".

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use tokio::sync::watch;

use crate::config::{Config, Credentials};
use crate::identity::Credential;

/// Header JetStream KV uses to mark deletes.
const KV_OPERATION_HEADER: &str = "KV-Operation";

/// Connection state as the agent's loops see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Link {
    /// Whether the client is connected right now.
    pub connected: bool,
    /// Bumped on every successful (re)connect: a change means state may have been missed.
    pub generation: u64,
}

/// A NATS client plus the link state derived from its events.
#[derive(Debug, Clone)]
pub struct Connection {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    link: watch::Receiver<Link>,
}

/// Any client error, boxed (the NATS client's error types vary by call).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a KV write failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The message was not accepted by JetStream (no connection, no stream, no permission).
    #[error("cannot write {subject}: {source}; the write is retried when the connection returns")]
    Publish {
        /// Subject written.
        subject: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
}

/// Why the client could not be built (connecting itself happens in the background).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The options were rejected (e.g. an unparsable URL).
    #[error(
        "cannot set up the NATS client for {urls}: {source}; check [nats] urls in the agent config"
    )]
    Options {
        /// The configured URLs.
        urls: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
}

/// Reconnect backoff: 100 ms doubling up to `max`.
fn backoff(attempt: usize, max: Duration) -> Duration {
    let exp = attempt.min(16) as u32;
    Duration::from_millis(100u64.saturating_mul(1u64 << exp)).min(max)
}

/// [`backoff`] drawn from its upper half, so a fleet that lost its server at the same moment
/// does not come back in step.
fn jittered_backoff(attempt: usize, max: Duration) -> Duration {
    crate::watch::jittered(backoff(attempt, max), 0.5, 1.0)
}

impl Connection {
    /// Build the client and start connecting in the background. Returns at once.
    /// `credential`: the device's own credential (`[credentials] type = "nkey"`), read again
    /// on every reconnect.
    pub async fn connect(
        config: &Config,
        inbox_prefix: &str,
        credential: Option<&Credential>,
    ) -> Result<Self, ConnectError> {
        let (link_tx, link) = watch::channel(Link::default());
        let max_delay = Duration::from_millis(config.nats.reconnect_max_delay_ms);
        let device = config.agent.device_id.to_string();
        let base = match credential {
            Some(credential) => credential.connect_options(),
            None => async_nats::ConnectOptions::new(),
        };
        let refused = credential.cloned();
        let mut options = base
            .name(format!("fleet-agent {device}"))
            .custom_inbox_prefix(inbox_prefix)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .ping_interval(Duration::from_secs(config.nats.ping_interval_secs.max(1)))
            .connection_timeout(Duration::from_secs(5))
            .reconnect_delay_callback(move |attempt| jittered_backoff(attempt, max_delay))
            .event_callback(move |event| {
                let link_tx = link_tx.clone();
                let refused = refused.clone();
                async move {
                    let text = event.to_string().to_lowercase();
                    if let Some(credential) = &refused
                        && (text.contains("authorization violation")
                            || text.contains("authentication"))
                    {
                        credential.refused();
                    }
                    match &event {
                        async_nats::Event::Connected => {
                            tracing::info!("connected to NATS");
                            link_tx.send_modify(|link| {
                                link.connected = true;
                                link.generation += 1;
                            });
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("disconnected from NATS; reconnecting with backoff");
                            link_tx.send_modify(|link| link.connected = false);
                        }
                        async_nats::Event::Closed => {
                            tracing::warn!("NATS connection closed");
                            link_tx.send_modify(|link| link.connected = false);
                        }
                        async_nats::Event::ServerError(err)
                            if err.to_string().contains("CONSUMER.DELETE") =>
                        {
                            // async-nats deletes a replaced ordered consumer; devices may not
                            // (consumer names are not device-scoped), and the server expires
                            // the orphan by itself. Expected, so not an error.
                            tracing::debug!(error = %err, "consumer delete refused (expected)");
                        }
                        async_nats::Event::ServerError(err) => {
                            tracing::error!(error = %err, "NATS server error");
                        }
                        async_nats::Event::ClientError(err) => {
                            tracing::error!(error = %err, "NATS client error");
                        }
                        other => tracing::info!(event = %other, "NATS event"),
                    }
                }
            });
        if let Some(ca) = &config.nats.ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some(Credentials::TomlShared { user, password }) = &config.credentials {
            options = options.user_and_password(user.clone(), password.clone());
        }
        let urls = config.nats.urls.join(",");
        let addrs: Vec<async_nats::ServerAddr> = config
            .nats
            .urls
            .iter()
            .map(|url| url.parse())
            .collect::<Result<_, _>>()
            .map_err(|err: std::io::Error| ConnectError::Options {
                urls: urls.clone(),
                source: err.into(),
            })?;
        let client = options
            .connect(addrs)
            .await
            .map_err(|err| ConnectError::Options {
                urls,
                source: err.into(),
            })?;
        let jetstream = jetstream::new(client.clone());
        Ok(Self {
            client,
            jetstream,
            link,
        })
    }

    /// The core NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The link state, to wait on.
    pub fn link(&self) -> watch::Receiver<Link> {
        self.link.clone()
    }

    /// Put `value` under `key` in KV bucket `bucket`, waiting for the JetStream ack. Publishes
    /// to the KV subject directly, so the device needs no stream-info permission.
    pub async fn kv_put(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, PublishError> {
        let subject = harmony_fleet_contracts::buckets::kv_subject(bucket, key);
        let ack = self
            .jetstream
            .publish(subject.clone(), value)
            .await
            .map_err(|err| PublishError::Publish {
                subject: subject.clone(),
                source: err.into(),
            })?;
        let ack = ack.await.map_err(|err| PublishError::Publish {
            subject: subject.clone(),
            source: err.into(),
        })?;
        Ok(ack.sequence)
    }

    /// Delete `key` from KV bucket `bucket` (a tombstone; agent-written buckets refuse purges).
    pub async fn kv_delete(&self, bucket: &str, key: &str) -> Result<(), PublishError> {
        let subject = harmony_fleet_contracts::buckets::kv_subject(bucket, key);
        let mut headers = HeaderMap::new();
        headers.insert(KV_OPERATION_HEADER, "DEL");
        let ack = self
            .jetstream
            .publish_with_headers(subject.clone(), headers, Bytes::new())
            .await
            .map_err(|err| PublishError::Publish {
                subject: subject.clone(),
                source: err.into(),
            })?;
        ack.await.map_err(|err| PublishError::Publish {
            subject: subject.clone(),
            source: err.into(),
        })?;
        Ok(())
    }
}

/// Wait until the link is connected; returns its generation. `None` when the sender is gone.
pub async fn wait_connected(link: &mut watch::Receiver<Link>) -> Option<u64> {
    link.wait_for(|l| l.connected)
        .await
        .ok()
        .map(|l| l.generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let max = Duration::from_secs(5);
        assert_eq!(backoff(0, max), Duration::from_millis(100));
        assert_eq!(backoff(1, max), Duration::from_millis(200));
        assert_eq!(backoff(3, max), Duration::from_millis(800));
        assert_eq!(backoff(10, max), max);
        assert_eq!(backoff(usize::MAX, max), max);
    }

    #[test]
    fn reconnects_are_spread_over_the_upper_half_of_the_backoff() {
        let max = Duration::from_secs(5);
        let draws: Vec<Duration> = (0..100).map(|_| jittered_backoff(10, max)).collect();
        assert!(
            draws
                .iter()
                .all(|d| *d >= Duration::from_millis(2500) && *d <= max)
        );
        assert!(draws.iter().any(|d| *d != draws[0]), "not all the same");
    }
}
