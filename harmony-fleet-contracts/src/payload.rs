//! The Score payload stored in `desired-state`: what a device must run.
//!
//! On the wire it is adjacently tagged, `{"type": "PodmanV0", "data": {…}}`, so a later
//! incompatible shape becomes a new variant (`PodmanV1`) instead of a silent reinterpretation.
//!
//! Evolution rules, which keep both old readers and content hashes stable:
//! - fields are camelCase; every optional field has `#[serde(default)]`;
//! - a field equal to its default is **omitted** when serialised, so adding a new optional
//!   field does not change the bytes (nor the hash, nor the containers) of existing payloads;
//! - unknown fields are ignored by readers (no `deny_unknown_fields`).
//!
//! [`ReconcileScore::to_canonical_json`] gives the bytes the operator writes and
//! [`ReconcileScore::content_hash`] their SHA-256; [`ReconcileScore::decode`] is what the agent
//! calls on the bytes it receives (parse, then [`validate`](ReconcileScore::validate)).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::canonical::{CanonicalError, ContentHash, to_canonical_json};
use crate::validation::{Collector, ValidationErrors};

/// Default time an init container may run before the deployment fails.
pub const DEFAULT_INIT_TIMEOUT_SECONDS: u32 = 300;
/// Longest init-container timeout accepted (one day).
pub const MAX_INIT_TIMEOUT_SECONDS: u32 = 86_400;
/// Default wait between the stop signal and SIGKILL.
pub const DEFAULT_GRACE_SECONDS: u32 = 30;
/// Longest grace period accepted (one hour).
pub const MAX_GRACE_SECONDS: u32 = 3_600;
/// Longest service / init-container name (a DNS label).
pub const MAX_NAME_LEN: usize = 63;

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn default_init_timeout() -> u32 {
    DEFAULT_INIT_TIMEOUT_SECONDS
}

fn is_default_init_timeout(value: &u32) -> bool {
    *value == DEFAULT_INIT_TIMEOUT_SECONDS
}

fn default_grace() -> u32 {
    DEFAULT_GRACE_SECONDS
}

fn is_default_grace(value: &u32) -> bool {
    *value == DEFAULT_GRACE_SECONDS
}

/// The desired-state value: one variant per payload generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(tag = "type", content = "data")]
#[non_exhaustive]
pub enum ReconcileScore {
    /// Containers run by podman.
    PodmanV0(PodmanV0),
    /// The agent itself: a new build it installs and restarts into (adr/0043).
    AgentV0(AgentV0),
}

/// The payload could not be accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// Not JSON, an unknown `type`, or a field of the wrong type.
    #[error(
        "desired-state payload cannot be decoded: {0}; expected {{\"type\": \"PodmanV0\", \
         \"data\": {{\"services\": [...]}}}} (an unknown type means the agent is older than \
         the operator: upgrade the agent)"
    )]
    Decode(#[source] serde_json::Error),
    /// Decoded, but some field is invalid.
    #[error("desired-state payload is invalid: {0}")]
    Invalid(#[from] ValidationErrors),
}

impl ReconcileScore {
    /// The `type` tag of this payload.
    pub fn type_name(&self) -> &'static str {
        match self {
            ReconcileScore::PodmanV0(_) => "PodmanV0",
            ReconcileScore::AgentV0(_) => "AgentV0",
        }
    }

    /// Checks every field; see [`PodmanV0::validate`].
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        match self {
            ReconcileScore::PodmanV0(podman) => podman.validate(),
            ReconcileScore::AgentV0(agent) => agent.validate(),
        }
    }

    /// The bytes the operator writes to `desired-state`: canonical JSON of the envelope.
    pub fn to_canonical_json(&self) -> Result<Vec<u8>, CanonicalError> {
        to_canonical_json(self)
    }

    /// SHA-256 of [`Self::to_canonical_json`].
    pub fn content_hash(&self) -> Result<ContentHash, CanonicalError> {
        ContentHash::of_value(self)
    }

    /// Parses bytes from `desired-state` and validates them.
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        let score: Self = serde_json::from_slice(bytes).map_err(PayloadError::Decode)?;
        score.validate()?;
        Ok(score)
    }
}

/// Default time a new agent binary has to heartbeat before it is reverted.
pub const DEFAULT_HEARTBEAT_DEADLINE_SECONDS: u32 = 60;
/// Shortest heartbeat deadline accepted.
pub const MIN_HEARTBEAT_DEADLINE_SECONDS: u32 = 5;
/// Longest heartbeat deadline accepted (one hour).
pub const MAX_HEARTBEAT_DEADLINE_SECONDS: u32 = 3_600;
/// Longest agent version string.
pub const MAX_VERSION_LEN: usize = 64;

fn default_heartbeat_deadline() -> u32 {
    DEFAULT_HEARTBEAT_DEADLINE_SECONDS
}

fn is_default_heartbeat_deadline(value: &u32) -> bool {
    *value == DEFAULT_HEARTBEAT_DEADLINE_SECONDS
}

/// A build of the agent for the devices to run (adr/0043). Each device picks the binary of its
/// architecture from the `agent-binaries` object store ([`crate::binaries`]), checks its
/// SHA-256, runs its self-test, swaps it in atomically and restarts through systemd. A new
/// binary that does not heartbeat within [`Self::heartbeat_deadline_seconds`] is replaced by
/// the previous one, and the device reports the deployment `Failed` with the reason. Rolled out
/// like any Deployment: its batches and failure thresholds apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct AgentV0 {
    /// The version the build reports (`fleet-agent --version`), e.g. `0.1.1`: shown in status
    /// and checked by the self-test.
    pub version: String,
    /// The build for each architecture, as the agent names its own (`x86_64`, `aarch64`,
    /// `arm`): the SHA-256 (64 lowercase hex digits) it is stored under. A device whose
    /// architecture is missing reports `Failed`.
    pub binaries: BTreeMap<String, String>,
    /// How long the new binary has to heartbeat before the previous one is put back (5 to
    /// 3600 s).
    #[serde(
        default = "default_heartbeat_deadline",
        skip_serializing_if = "is_default_heartbeat_deadline"
    )]
    pub heartbeat_deadline_seconds: u32,
}

impl AgentV0 {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = Collector::default();
        errors.check(
            !self.version.is_empty()
                && self.version.len() <= MAX_VERSION_LEN
                && self
                    .version
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".+-_".contains(&b)),
            || "version".to_owned(),
            || {
                format!(
                    "must be 1 to {MAX_VERSION_LEN} characters of letters, digits, '.', '+',                      '-', '_' (what `fleet-agent --version` prints, e.g. 0.1.1)"
                )
            },
        );
        if self.binaries.is_empty() {
            errors.push(
                "binaries",
                "must name at least one architecture's build, e.g. {\"x86_64\": \"<sha256>\"}                  (the name `harmony-fleet-deploy agent publish` prints)",
            );
        }
        for (arch, sha256) in &self.binaries {
            errors.check(
                !arch.is_empty()
                    && arch.len() <= 32
                    && arch
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                || format!("binaries.{arch}"),
                || {
                    "architecture must be lowercase letters, digits and '_' as Rust names it                      (x86_64, aarch64, arm)"
                        .to_owned()
                },
            );
            errors.check(
                crate::binaries::is_sha256_hex(sha256),
                || format!("binaries.{arch}"),
                || {
                    format!(
                        "must be the build's SHA-256 as 64 lowercase hex digits (got {}                          characters)",
                        sha256.len()
                    )
                },
            );
        }
        errors.check(
            (MIN_HEARTBEAT_DEADLINE_SECONDS..=MAX_HEARTBEAT_DEADLINE_SECONDS)
                .contains(&self.heartbeat_deadline_seconds),
            || "heartbeatDeadlineSeconds".to_owned(),
            || {
                format!(
                    "must be between {MIN_HEARTBEAT_DEADLINE_SECONDS} and                      {MAX_HEARTBEAT_DEADLINE_SECONDS} seconds"
                )
            },
        );
        errors.finish()
    }
}

/// A set of podman containers: long-running services, optional init containers run first,
/// and how to stop them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PodmanV0 {
    /// Long-running containers. At least one; names unique.
    pub services: Vec<Service>,
    /// Containers run to completion, one after the other in this order, before any service
    /// starts (again on every new revision). A non-zero exit or a timeout fails the
    /// deployment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<InitContainer>,
    /// How the services' containers are stopped on removal or replacement.
    #[serde(default, skip_serializing_if = "is_default")]
    pub stop_policy: StopPolicy,
}

/// One long-running container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// DNS label (lowercase a-z, 0-9, '-'; at most 63), unique in the payload.
    pub name: String,
    /// Image reference, e.g. `docker.io/library/nginx:1.27`.
    pub image: String,
    /// Overrides the image's entrypoint (Kubernetes `command` semantics); empty ⇒ image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Overrides the image's default arguments (Kubernetes `args` semantics); empty ⇒ image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables (sorted by name, so encoding is deterministic).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Published ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    /// Mounted volumes and host paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    /// What podman does when the container exits.
    #[serde(default, skip_serializing_if = "is_default")]
    pub restart_policy: RestartPolicy,
    /// When the image is pulled.
    #[serde(default, skip_serializing_if = "is_default")]
    pub pull_policy: PullPolicy,
}

impl Service {
    /// A service running `image` with every option at its default.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            image: image.into(),
            command: Vec::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            ports: Vec::new(),
            volumes: Vec::new(),
            restart_policy: RestartPolicy::default(),
            pull_policy: PullPolicy::default(),
        }
    }
}

/// A container run to completion before the services start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct InitContainer {
    /// DNS label, unique among init containers and services.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Overrides the image's entrypoint; empty ⇒ image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Overrides the image's default arguments; empty ⇒ image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Mounted volumes and host paths (typically shared with a service to prepare data).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    /// When the image is pulled.
    #[serde(default, skip_serializing_if = "is_default")]
    pub pull_policy: PullPolicy,
    /// Seconds the container may run before it is killed and the deployment fails.
    #[serde(
        default = "default_init_timeout",
        skip_serializing_if = "is_default_init_timeout"
    )]
    pub timeout_seconds: u32,
}

impl InitContainer {
    /// An init container running `image` with every option at its default.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            image: image.into(),
            command: Vec::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            volumes: Vec::new(),
            pull_policy: PullPolicy::default(),
            timeout_seconds: DEFAULT_INIT_TIMEOUT_SECONDS,
        }
    }
}

/// A published port: `hostIp:hostPort → containerPort/protocol`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Port on the device, 1–65535. (A `u32` so an out-of-range value is reported with its
    /// field path by validation instead of a bare decode error.)
    pub host_port: u32,
    /// Port inside the container, 1–65535.
    pub container_port: u32,
    /// Transport protocol.
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: Protocol,
    /// Address to bind on the device; absent ⇒ all addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
}

/// A mount: a named volume or an absolute host path, at an absolute path in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    /// Named volume (`data`, created on first use) or absolute host path (`/srv/data`).
    pub source: String,
    /// Absolute path in the container.
    pub target: String,
    /// Mount read-only.
    #[serde(default, skip_serializing_if = "is_default")]
    pub read_only: bool,
}

/// Transport protocol of a [`PortMapping`] (Kubernetes spelling).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum Protocol {
    /// TCP.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
}

impl Protocol {
    /// Spelling in podman's `-p host:container/proto`.
    pub const fn as_podman(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// What happens when a service's container exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum RestartPolicy {
    /// Always restart (the default: services are meant to keep running).
    #[default]
    Always,
    /// Restart only after a non-zero exit.
    OnFailure,
    /// Restart unless it was stopped on purpose.
    UnlessStopped,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// Spelling of podman's `--restart`.
    pub const fn as_podman(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::UnlessStopped => "unless-stopped",
            RestartPolicy::Never => "no",
        }
    }
}

/// When the image is pulled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum PullPolicy {
    /// Pull only if no local image has that reference (the default: devices may be offline).
    #[default]
    IfNotPresent,
    /// Pull on every start of a new revision.
    Always,
    /// Never pull; the image must have been loaded on the device.
    Never,
}

impl PullPolicy {
    /// Spelling of podman's `--pull`.
    pub const fn as_podman(self) -> &'static str {
        match self {
            PullPolicy::IfNotPresent => "missing",
            PullPolicy::Always => "always",
            PullPolicy::Never => "never",
        }
    }
}

/// How containers are stopped: `signal`, then SIGKILL after `graceSeconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct StopPolicy {
    /// First signal sent.
    #[serde(default, skip_serializing_if = "is_default")]
    pub signal: StopSignal,
    /// Seconds between the signal and SIGKILL (0–3600).
    #[serde(default = "default_grace", skip_serializing_if = "is_default_grace")]
    pub grace_seconds: u32,
}

impl Default for StopPolicy {
    fn default() -> Self {
        Self {
            signal: StopSignal::default(),
            grace_seconds: DEFAULT_GRACE_SECONDS,
        }
    }
}

/// Signals a container may be asked to stop with (SIGKILL is always the last resort, never
/// the first).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum StopSignal {
    /// SIGTERM (the default).
    #[default]
    #[serde(rename = "SIGTERM")]
    Term,
    /// SIGINT.
    #[serde(rename = "SIGINT")]
    Int,
    /// SIGQUIT (e.g. nginx graceful shutdown).
    #[serde(rename = "SIGQUIT")]
    Quit,
    /// SIGHUP.
    #[serde(rename = "SIGHUP")]
    Hup,
    /// SIGUSR1.
    #[serde(rename = "SIGUSR1")]
    Usr1,
    /// SIGUSR2.
    #[serde(rename = "SIGUSR2")]
    Usr2,
    /// SIGWINCH (e.g. Apache httpd graceful stop).
    #[serde(rename = "SIGWINCH")]
    Winch,
}

impl StopSignal {
    /// The name podman's `--stop-signal` and `podman kill --signal` accept.
    pub const fn as_str(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
            StopSignal::Quit => "SIGQUIT",
            StopSignal::Hup => "SIGHUP",
            StopSignal::Usr1 => "SIGUSR1",
            StopSignal::Usr2 => "SIGUSR2",
            StopSignal::Winch => "SIGWINCH",
        }
    }
}

/// RFC 1123 label: lowercase alphanumerics and '-', starting and ending alphanumerically.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn is_volume_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// The fields services and init containers share, borrowed for [`check_container`].
struct ContainerFields<'a> {
    name: &'a str,
    image: &'a str,
    command: &'a [String],
    args: &'a [String],
    env: &'a BTreeMap<String, String>,
    volumes: &'a [VolumeMount],
}

impl<'a> From<&'a Service> for ContainerFields<'a> {
    fn from(s: &'a Service) -> Self {
        Self {
            name: &s.name,
            image: &s.image,
            command: &s.command,
            args: &s.args,
            env: &s.env,
            volumes: &s.volumes,
        }
    }
}

impl<'a> From<&'a InitContainer> for ContainerFields<'a> {
    fn from(c: &'a InitContainer) -> Self {
        Self {
            name: &c.name,
            image: &c.image,
            command: &c.command,
            args: &c.args,
            env: &c.env,
            volumes: &c.volumes,
        }
    }
}

/// Checks shared by services and init containers.
fn check_container(errors: &mut Collector, path: &str, fields: ContainerFields<'_>) {
    let ContainerFields {
        name,
        image,
        command,
        args,
        env,
        volumes,
    } = fields;
    errors.check(
        is_dns_label(name),
        || format!("{path}.name"),
        || {
            format!(
                "{name:?} must be a DNS label: 1-{MAX_NAME_LEN} lowercase letters, digits or '-', \
                 starting and ending with a letter or digit (e.g. \"web\")"
            )
        },
    );
    if image.is_empty() {
        errors.push(format!("{path}.image"), "must not be empty");
    } else {
        errors.check(
            !image.chars().any(|c| c.is_whitespace() || c.is_control()),
            || format!("{path}.image"),
            || format!("{image:?} must not contain whitespace or control characters"),
        );
    }
    for (field, items) in [("command", command), ("args", args)] {
        for (i, item) in items.iter().enumerate() {
            errors.check(
                !item.contains('\0'),
                || format!("{path}.{field}[{i}]"),
                || "must not contain a NUL byte".to_owned(),
            );
        }
    }
    for (key, value) in env {
        errors.check(
            !key.is_empty() && !key.contains(['=', '\0']),
            || format!("{path}.env[{key:?}]"),
            || "variable name must be non-empty and contain neither '=' nor NUL".to_owned(),
        );
        errors.check(
            !value.contains('\0'),
            || format!("{path}.env[{key:?}]"),
            || "value must not contain a NUL byte".to_owned(),
        );
    }
    for (i, volume) in volumes.iter().enumerate() {
        let vpath = format!("{path}.volumes[{i}]");
        let unsafe_char = |s: &str| s.contains([':', ',', '\0', '\n']);
        if volume.source.starts_with('/') {
            errors.check(
                !unsafe_char(&volume.source),
                || format!("{vpath}.source"),
                || "host path must not contain ':', ',', NUL or newline".to_owned(),
            );
        } else {
            errors.check(
                is_volume_name(&volume.source),
                || format!("{vpath}.source"),
                || {
                    format!(
                        "{:?} must be an absolute host path (\"/srv/data\") or a volume name of \
                         [A-Za-z0-9_.-] starting with a letter or digit (\"data\")",
                        volume.source
                    )
                },
            );
        }
        errors.check(
            volume.target.starts_with('/') && !unsafe_char(&volume.target),
            || format!("{vpath}.target"),
            || {
                format!(
                    "{:?} must be an absolute container path without ':', ',', NUL or newline \
                     (e.g. \"/data\")",
                    volume.target
                )
            },
        );
    }
}

impl PodmanV0 {
    /// A payload running `services` with no init containers and the default stop policy.
    pub fn new(services: Vec<Service>) -> Self {
        Self {
            services,
            init_containers: Vec::new(),
            stop_policy: StopPolicy::default(),
        }
    }

    /// Checks every field and reports every problem with its path (relative to `data`), e.g.
    /// `services[1].image: must not be empty`.
    ///
    /// Rules: at least one service; service and init-container names are DNS labels and
    /// unique across both lists (they become container names); images non-empty without
    /// whitespace; ports 1–65535 and no two mappings on the same host IP, port and protocol;
    /// volume sources are absolute paths or volume names and targets absolute paths; no NUL in
    /// command, args or env; env names without '='; init timeouts 1–86400 s; grace 0–3600 s.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = Collector::default();
        if self.services.is_empty() {
            errors.push(
                "services",
                "must list at least one service: a deployment with nothing to run is a \
                 deletion, delete the Deployment instead",
            );
        }
        let mut names: BTreeSet<&str> = BTreeSet::new();
        let mut bindings: BTreeSet<(Option<IpAddr>, u32, Protocol)> = BTreeSet::new();

        for (i, init) in self.init_containers.iter().enumerate() {
            let path = format!("initContainers[{i}]");
            check_container(&mut errors, &path, init.into());
            errors.check(
                names.insert(&init.name),
                || format!("{path}.name"),
                || format!("{:?} is used twice: names must be unique", init.name),
            );
            errors.check(
                (1..=MAX_INIT_TIMEOUT_SECONDS).contains(&init.timeout_seconds),
                || format!("{path}.timeoutSeconds"),
                || {
                    format!(
                        "{} is out of range: use 1 to {MAX_INIT_TIMEOUT_SECONDS} seconds",
                        init.timeout_seconds
                    )
                },
            );
        }

        for (i, service) in self.services.iter().enumerate() {
            let path = format!("services[{i}]");
            check_container(&mut errors, &path, service.into());
            errors.check(
                names.insert(&service.name),
                || format!("{path}.name"),
                || {
                    format!(
                        "{:?} is used twice: service and init-container names must be unique",
                        service.name
                    )
                },
            );
            for (j, port) in service.ports.iter().enumerate() {
                let ppath = format!("{path}.ports[{j}]");
                for (field, value) in [
                    ("hostPort", port.host_port),
                    ("containerPort", port.container_port),
                ] {
                    errors.check(
                        (1..=65_535).contains(&value),
                        || format!("{ppath}.{field}"),
                        || format!("{value} is out of range: ports are 1 to 65535"),
                    );
                }
                errors.check(
                    bindings.insert((port.host_ip, port.host_port, port.protocol)),
                    || format!("{ppath}.hostPort"),
                    || {
                        format!(
                            "{}/{} is published twice on the same host address: each host port \
                             can be bound once",
                            port.host_port,
                            port.protocol.as_podman()
                        )
                    },
                );
            }
        }

        errors.check(
            self.stop_policy.grace_seconds <= MAX_GRACE_SECONDS,
            || "stopPolicy.graceSeconds".to_owned(),
            || {
                format!(
                    "{} is out of range: use 0 to {MAX_GRACE_SECONDS} seconds",
                    self.stop_policy.grace_seconds
                )
            },
        );
        errors.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> PodmanV0 {
        PodmanV0::new(vec![Service::new("web", "nginx:1.27")])
    }

    fn agent() -> AgentV0 {
        AgentV0 {
            version: "0.1.1".into(),
            binaries: BTreeMap::from([("x86_64".into(), "ab".repeat(32))]),
            heartbeat_deadline_seconds: DEFAULT_HEARTBEAT_DEADLINE_SECONDS,
        }
    }

    #[test]
    fn an_agent_build_travels_tagged_and_omits_its_defaults() {
        let score = ReconcileScore::AgentV0(agent());
        let json = String::from_utf8(score.to_canonical_json().expect("json")).expect("utf8");
        assert_eq!(
            json,
            format!(
                r#"{{"data":{{"binaries":{{"x86_64":"{}"}},"version":"0.1.1"}},"type":"AgentV0"}}"#,
                "ab".repeat(32)
            )
        );
        assert_eq!(
            ReconcileScore::decode(json.as_bytes()).expect("decode"),
            score
        );
    }

    #[test]
    fn an_agent_build_names_every_bad_field() {
        let bad = AgentV0 {
            version: "0.1.1 beta".into(),
            binaries: BTreeMap::from([("X86".into(), "AB".repeat(32))]),
            heartbeat_deadline_seconds: 1,
        };
        let err = bad.validate().expect_err("invalid");
        assert!(err.has_path("version"), "{err}");
        assert_eq!(
            err.errors
                .iter()
                .filter(|e| e.path == "binaries.X86")
                .count(),
            2,
            "{err}"
        );
        assert!(err.has_path("heartbeatDeadlineSeconds"), "{err}");
        let empty = AgentV0 {
            binaries: BTreeMap::new(),
            ..agent()
        };
        assert!(
            empty
                .validate()
                .expect_err("no binaries")
                .has_path("binaries")
        );
        assert_eq!(agent().validate(), Ok(()));
    }

    #[test]
    fn minimal_payload_is_valid() {
        assert_eq!(valid().validate(), Ok(()));
    }

    #[test]
    fn empty_image_is_reported_with_its_path() {
        let mut p = valid();
        p.services.push(Service::new("db", ""));
        let err = p.validate().unwrap_err();
        assert_eq!(err.to_string(), "services[1].image: must not be empty");
    }

    #[test]
    fn reports_every_problem_at_once() {
        let mut p = valid();
        p.services.push(Service::new("Web", "has space"));
        p.services[0].ports.push(PortMapping {
            host_port: 0,
            container_port: 70_000,
            protocol: Protocol::Tcp,
            host_ip: None,
        });
        let err = p.validate().unwrap_err();
        for path in [
            "services[1].name",
            "services[1].image",
            "services[0].ports[0].hostPort",
            "services[0].ports[0].containerPort",
        ] {
            assert!(err.has_path(path), "{path} missing from {err}");
        }
    }

    #[test]
    fn rejects_duplicate_names_across_services_and_init_containers() {
        let mut p = valid();
        p.init_containers.push(InitContainer::new("web", "busybox"));
        let err = p.validate().unwrap_err();
        assert!(err.has_path("services[0].name"), "{err}");
        assert!(err.to_string().contains("used twice"), "{err}");
    }

    #[test]
    fn rejects_the_same_host_port_twice_but_allows_other_protocol() {
        let port = |protocol| PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol,
            host_ip: None,
        };
        let mut p = valid();
        p.services[0].ports = vec![port(Protocol::Tcp), port(Protocol::Udp)];
        assert_eq!(p.validate(), Ok(()));
        p.services.push(Service::new("api", "api:1"));
        p.services[1].ports = vec![port(Protocol::Tcp)];
        assert!(
            p.validate()
                .unwrap_err()
                .has_path("services[1].ports[0].hostPort")
        );
    }

    #[test]
    fn rejects_empty_services() {
        let err = PodmanV0::new(vec![]).validate().unwrap_err();
        assert!(err.has_path("services"));
    }

    #[test]
    fn checks_volumes_env_and_timeouts() {
        let mut p = valid();
        p.services[0].volumes = vec![
            VolumeMount {
                source: "data".into(),
                target: "/data".into(),
                read_only: false,
            },
            VolumeMount {
                source: "../etc".into(),
                target: "rel".into(),
                read_only: true,
            },
        ];
        p.services[0].env.insert("A=B".into(), "x".into());
        let mut init = InitContainer::new("migrate", "tool:1");
        init.timeout_seconds = 0;
        p.init_containers.push(init);
        p.stop_policy.grace_seconds = 99_999;
        let err = p.validate().unwrap_err();
        for path in [
            "services[0].volumes[1].source",
            "services[0].volumes[1].target",
            "services[0].env[\"A=B\"]",
            "initContainers[0].timeoutSeconds",
            "stopPolicy.graceSeconds",
        ] {
            assert!(err.has_path(path), "{path} missing from {err}");
        }
        assert!(!err.has_path("services[0].volumes[0].source"), "{err}");
    }

    #[test]
    fn decode_rejects_unknown_type_with_upgrade_hint() {
        let err = ReconcileScore::decode(br#"{"type":"PodmanV9","data":{}}"#).unwrap_err();
        assert!(matches!(err, PayloadError::Decode(_)));
        assert!(err.to_string().contains("upgrade the agent"), "{err}");
    }

    #[test]
    fn decode_validates() {
        let err =
            ReconcileScore::decode(br#"{"type":"PodmanV0","data":{"services":[]}}"#).unwrap_err();
        assert!(matches!(err, PayloadError::Invalid(_)));
    }

    #[test]
    fn podman_spellings() {
        assert_eq!(RestartPolicy::Never.as_podman(), "no");
        assert_eq!(PullPolicy::IfNotPresent.as_podman(), "missing");
        assert_eq!(Protocol::Udp.as_podman(), "udp");
        assert_eq!(StopSignal::default().as_str(), "SIGTERM");
    }
}
