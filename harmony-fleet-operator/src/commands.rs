//! Client for the device command verbs (`ping`, `exec`, `logs`): core NATS request/reply on
//! `device-commands.<device>.<verb>`, with errors a caller can branch on.
//!
//! "No responders" means no agent serves the device's subjects right now: the device is
//! offline ([`CommandError::DeviceOffline`]), which is a different situation from an agent
//! that is there but too slow ([`CommandError::Timeout`]) or one that answered garbage
//! ([`CommandError::BadReply`]).

use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use harmony_fleet_contracts::commands::{
    self as protocol, CommandReply, ExecReply, ExecRequest, LogsReply, LogsRequest, PingReply,
    PingRequest, Verb,
};
use harmony_fleet_contracts::ids::DeviceId;
use harmony_fleet_contracts::keys;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Timeout of `ping` and `logs` requests.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a command did not return a result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// Nobody serves the device's command subjects: the agent is not connected.
    #[error(
        "device {device} is offline: no agent answers on device-commands.{device}.>; check the device's network and agent"
    )]
    DeviceOffline {
        /// The device.
        device: DeviceId,
    },
    /// The agent is connected but did not answer in time.
    #[error(
        "device {device} did not answer `{verb}` within {after:?}; the agent may be overloaded, retry or raise the deadline"
    )]
    Timeout {
        /// The device.
        device: DeviceId,
        /// The verb.
        verb: Verb,
        /// How long the client waited.
        after: Duration,
    },
    /// The reply could not be decoded.
    #[error(
        "device {device} sent an unreadable `{verb}` reply: {source}; agent and operator versions may be incompatible"
    )]
    BadReply {
        /// The device.
        device: DeviceId,
        /// The verb.
        verb: Verb,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// The request could not be encoded (a bug: requests always serialise).
    #[error("encoding the `{verb}` request to device {device}: {source}")]
    Encode {
        /// The device.
        device: DeviceId,
        /// The verb.
        verb: Verb,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// The agent ran the verb and reports an error (bad request, not found, runtime...).
    #[error("device {device} refused `{verb}`: {source}")]
    Refused {
        /// The device.
        device: DeviceId,
        /// The verb.
        verb: Verb,
        /// The agent's error, with its kind.
        #[source]
        source: protocol::CommandError,
    },
    /// The NATS client failed (disconnected, payload too large, ...).
    #[error("NATS request to device {device} failed: {source}")]
    Nats {
        /// The device.
        device: DeviceId,
        /// The client's error.
        #[source]
        source: async_nats::RequestError,
    },
}

/// Typed command client over one NATS connection. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CommandsClient {
    client: Client,
    timeout: Duration,
}

impl CommandsClient {
    /// A client over `client`, with [`DEFAULT_TIMEOUT`] for `ping` and `logs`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another timeout for `ping` and `logs`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Checks that the device's agent answers; returns its id, version and uptime.
    pub async fn ping(&self, device: &DeviceId) -> Result<PingReply, CommandError> {
        self.request(device, Verb::Ping, &PingRequest {}, self.timeout)
            .await
    }

    /// Runs `sh -c <command>` on the device. Waits for the request's deadline plus a margin.
    pub async fn exec(
        &self,
        device: &DeviceId,
        request: &ExecRequest,
    ) -> Result<ExecReply, CommandError> {
        self.request(device, Verb::Exec, request, request.reply_timeout())
            .await
    }

    /// Tails the logs of a deployment's containers on the device.
    pub async fn logs(
        &self,
        device: &DeviceId,
        request: &LogsRequest,
    ) -> Result<LogsReply, CommandError> {
        self.request(device, Verb::Logs, request, self.timeout)
            .await
    }

    /// Sends any request of the command protocol and decodes its reply; the session verbs
    /// (`logs-stream`, `shell`) use it with their own request and reply types.
    pub async fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        device: &DeviceId,
        verb: Verb,
        request: &Q,
        timeout: Duration,
    ) -> Result<A, CommandError> {
        self.request(device, verb, request, timeout).await
    }

    async fn request<Q: Serialize, A: DeserializeOwned>(
        &self,
        device: &DeviceId,
        verb: Verb,
        request: &Q,
        timeout: Duration,
    ) -> Result<A, CommandError> {
        let payload = serde_json::to_vec(request).map_err(|source| CommandError::Encode {
            device: device.clone(),
            verb,
            source,
        })?;
        let subject = keys::command_subject(device, verb);
        let message = self
            .client
            .send_request(
                subject,
                async_nats::Request::new()
                    .payload(payload.into())
                    .timeout(Some(timeout)),
            )
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::NoResponders => CommandError::DeviceOffline {
                    device: device.clone(),
                },
                RequestErrorKind::TimedOut => CommandError::Timeout {
                    device: device.clone(),
                    verb,
                    after: timeout,
                },
                _ => CommandError::Nats {
                    device: device.clone(),
                    source: e,
                },
            })?;
        let reply: CommandReply<A> =
            serde_json::from_slice(&message.payload).map_err(|source| CommandError::BadReply {
                device: device.clone(),
                verb,
                source,
            })?;
        reply.into_result().map_err(|source| CommandError::Refused {
            device: device.clone(),
            verb,
            source,
        })
    }
}
