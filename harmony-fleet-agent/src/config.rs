//! The agent's TOML configuration: the file format ([`Config`] and its sections), loading with
//! errors that name the file and the offending key, and the conversion to runtime options.
//!
//! Every table denies unknown keys: a misspelt `hearbeat_interval_secs` is an error, not a
//! silently ignored setting, and an unknown `[credentials] type` is rejected, never ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harmony_fleet_contracts::DeviceId;
use harmony_fleet_contracts::bootstrap_token::BootstrapToken;
use serde::Deserialize;

use crate::runtime::PodmanOptions;

/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT_INTERVAL_SECS: u64 = 30;
/// Default interval of the periodic reconcile that restarts crashed containers.
pub const DEFAULT_RECONCILE_INTERVAL_SECS: u64 = 30;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[agent]`: who this device is and where it keeps its state.
    pub agent: AgentSection,
    /// `[nats]`: how to reach the fleet's NATS servers.
    pub nats: NatsSection,
    /// `[labels]`: labels the device reports; deployments select devices by them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `[credentials]`: how the agent authenticates to NATS; absent means no authentication.
    #[serde(default)]
    pub credentials: Option<Credentials>,
    /// `[podman]`: how podman is invoked.
    #[serde(default)]
    pub podman: PodmanSection,
    /// `[metrics]`: the Prometheus endpoint; absent means no endpoint.
    #[serde(default)]
    pub metrics: MetricsSection,
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address of the Prometheus text endpoint (`GET /metrics`), e.g. `127.0.0.1:9101`. Off
    /// when absent; keep it on a local or management address (there is no authentication).
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
    /// A file for node_exporter's textfile collector, e.g.
    /// `/var/lib/prometheus/node-exporter/fleet_agent.prom` (must end in `.prom`; its
    /// directory must exist). Rewritten atomically every `textfile_interval_secs`. Off when
    /// absent.
    #[serde(default)]
    pub textfile: Option<PathBuf>,
    /// Seconds between two writes of `textfile`.
    #[serde(default = "default_textfile_secs")]
    pub textfile_interval_secs: u64,
}

fn default_textfile_secs() -> u64 {
    15
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: None,
            textfile: None,
            textfile_interval_secs: default_textfile_secs(),
        }
    }
}

/// `[agent]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// This device's id (an RFC 1123 label); the agent only touches keys and subjects
    /// carrying it.
    pub device_id: DeviceId,
    /// Directory for the persisted desired state (created if missing).
    pub data_dir: PathBuf,
    /// When `false`, the agent reports and serves commands but never touches containers
    /// (useful to enroll a device before it runs workloads).
    #[serde(default = "default_true")]
    pub runtime_enabled: bool,
    /// Seconds between heartbeats.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_interval_secs: u64,
    /// Seconds between periodic reconciles (restarting crashed containers, refreshing state).
    #[serde(default = "default_reconcile_secs")]
    pub reconcile_interval_secs: u64,
    /// Mean seconds between listings of the desired state when no change notice arrives
    /// (each wait is jittered ±50 %). Bounds how long a lost notice goes unnoticed.
    #[serde(default = "default_resync_secs")]
    pub resync_interval_secs: u64,
}

/// `[nats]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSection {
    /// Server URLs; all are given to the client, which picks and fails over among them.
    pub urls: Vec<String>,
    /// Longest wait between two reconnect attempts, in milliseconds (the backoff doubles up
    /// to this).
    #[serde(default = "default_reconnect_max_delay_ms")]
    pub reconnect_max_delay_ms: u64,
    /// Seconds between client pings; a dead server is noticed after about two of them.
    #[serde(default = "default_ping_interval_secs")]
    pub ping_interval_secs: u64,
    /// CA (PEM) the servers' certificates must chain to. Set: TLS is required and the server
    /// verified; unset: the client accepts what the server offers (development).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// `[credentials]`, tagged by `type`: `nkey` (the device's own key and an issued credential,
/// adr/0016) or `toml-shared` (a password in this file: development only). Any other type is
/// rejected when the file is read.
#[derive(Clone, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum Credentials {
    /// A user and password written in this file (shared secret).
    #[serde(rename = "toml-shared")]
    TomlShared {
        /// NATS user.
        user: String,
        /// NATS password.
        password: String,
    },
    /// The device's own nkey (`<data_dir>/identity.nk`, created on first start) and the
    /// credential the operator issued for it (`<data_dir>/credential.jwt`). Without a
    /// credential the agent enrolls with the bootstrap identity.
    #[serde(rename = "nkey")]
    Nkey {
        /// The shared bootstrap `.creds` file (it can only ask to enroll). Needed until the
        /// device holds a credential.
        #[serde(default)]
        bootstrap_creds: Option<PathBuf>,
        /// A bootstrap token (`<id>.<secret>`, from `harmony-fleet-deploy token create`) sent
        /// with the enrollment request: the operator approves the key without an admin
        /// (adr/0020). Never logged.
        #[serde(default)]
        bootstrap_token: Option<BootstrapToken>,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::TomlShared { user, .. } => f
                .debug_struct("TomlShared")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Nkey {
                bootstrap_creds,
                bootstrap_token,
            } => f
                .debug_struct("Nkey")
                .field("bootstrap_creds", bootstrap_creds)
                // `BootstrapToken`'s Debug shows its id only.
                .field("bootstrap_token", bootstrap_token)
                .finish(),
        }
    }
}

/// `[podman]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodmanSection {
    /// podman executable (default `podman` from `PATH`).
    #[serde(default)]
    pub binary: Option<PathBuf>,
    /// `--root` for every podman call: separate storage, e.g. for several agents on one host.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// `--runroot` for every podman call.
    #[serde(default)]
    pub runroot: Option<PathBuf>,
    /// `--tmpdir` for every podman call. Give each agent on a shared host its own: podman
    /// keeps its reboot marker there, and another storage's `system reset` on the default
    /// `/run/libpod` makes podman "refresh" (reset) every container of this one.
    #[serde(default)]
    pub tmpdir: Option<PathBuf>,
    /// `CONTAINERS_CONF` for every podman call.
    #[serde(default)]
    pub containers_conf: Option<PathBuf>,
    /// Network namespace (e.g. `/run/netns/dev1`) podman runs in, so this device's containers
    /// publish ports at the device's own address when several devices share a host.
    #[serde(default)]
    pub network_namespace: Option<PathBuf>,
}

fn default_true() -> bool {
    true
}
fn default_heartbeat_secs() -> u64 {
    DEFAULT_HEARTBEAT_INTERVAL_SECS
}
fn default_resync_secs() -> u64 {
    crate::watch::DEFAULT_RESYNC_INTERVAL.as_secs()
}

fn default_reconcile_secs() -> u64 {
    DEFAULT_RECONCILE_INTERVAL_SECS
}
fn default_reconnect_max_delay_ms() -> u64 {
    5_000
}
fn default_ping_interval_secs() -> u64 {
    20
}

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error(
        "cannot read agent config {path}: {source}; pass an existing file with --config or FLEET_AGENT_CONFIG"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the format (the message names the key).
    #[error("invalid agent config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the offending key and its position.
        message: String,
    },
    /// A value parsed but is not usable.
    #[error("invalid agent config {path}: `{key}` {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, as `section.key`.
        key: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

impl Config {
    /// Read and validate a config file. Does not connect to anything.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse and validate config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            message: err.to_string().trim_end().to_owned(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: &str| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            problem: problem.to_owned(),
        };
        if self.nats.urls.is_empty() {
            return Err(invalid(
                "nats.urls",
                "is empty; list at least one server, e.g. urls = [\"nats://nats.example:4222\"]",
            ));
        }
        for url in &self.nats.urls {
            if let Err(err) = url.parse::<async_nats::ServerAddr>() {
                return Err(invalid(
                    "nats.urls",
                    &format!("entry {url:?} is not a NATS URL ({err}); use nats://host:4222"),
                ));
            }
        }
        if self.agent.heartbeat_interval_secs == 0 {
            return Err(invalid(
                "agent.heartbeat_interval_secs",
                "must be at least 1 second",
            ));
        }
        if self.agent.reconcile_interval_secs == 0 {
            return Err(invalid(
                "agent.reconcile_interval_secs",
                "must be at least 1 second",
            ));
        }
        if self.agent.resync_interval_secs == 0 {
            return Err(invalid(
                "agent.resync_interval_secs",
                "must be at least 1 second (default 180)",
            ));
        }
        if let Some(file) = &self.metrics.textfile
            && file.extension().is_none_or(|e| e != "prom")
        {
            return Err(invalid(
                "metrics.textfile",
                &format!(
                    "{} does not end in .prom: node_exporter's textfile collector reads only \
                     *.prom files (e.g. /var/lib/prometheus/node-exporter/fleet_agent.prom)",
                    file.display()
                ),
            ));
        }
        if self.metrics.textfile_interval_secs == 0 {
            return Err(invalid(
                "metrics.textfile_interval_secs",
                "must be at least 1 second (default 15)",
            ));
        }
        if self.agent.data_dir.as_os_str().is_empty() {
            return Err(invalid(
                "agent.data_dir",
                "is empty; give a directory the agent may write, e.g. /var/lib/fleet-agent",
            ));
        }
        if let Some(Credentials::TomlShared { user, .. }) = &self.credentials
            && user.is_empty()
        {
            return Err(invalid("credentials.user", "is empty; give the NATS user"));
        }
        if let Some(Credentials::Nkey {
            bootstrap_token: Some(token),
            ..
        }) = &self.credentials
            && token.parts().is_err()
        {
            return Err(invalid(
                "credentials.bootstrap_token",
                "is not <id>.<secret> (6 and 16 characters a-z0-9): copy the token `harmony-fleet-deploy token create` printed, or remove the line to wait for a manual approval",
            ));
        }
        if let Err(errors) = harmony_fleet_contracts::device::validate_labels(&self.labels) {
            return Err(invalid(
                "labels",
                &format!("break the Kubernetes label rules: {errors}"),
            ));
        }
        Ok(())
    }

    /// Heartbeat interval as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.agent.heartbeat_interval_secs)
    }

    /// Mean interval between desired-state listings.
    pub fn resync_interval(&self) -> Duration {
        Duration::from_secs(self.agent.resync_interval_secs.max(1))
    }

    /// Periodic reconcile interval as a duration.
    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_secs(self.agent.reconcile_interval_secs)
    }

    /// The podman options this config asks for.
    pub fn podman_options(&self) -> PodmanOptions {
        let defaults = PodmanOptions::default();
        PodmanOptions {
            binary: self.podman.binary.clone().unwrap_or(defaults.binary),
            root: self.podman.root.clone(),
            runroot: self.podman.runroot.clone(),
            tmpdir: self.podman.tmpdir.clone(),
            containers_conf: self.podman.containers_conf.clone(),
            network_namespace: self.podman.network_namespace.clone(),
            ..defaults
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[agent]
device_id = "pi-001"
data_dir = "/var/lib/fleet-agent"

[nats]
urls = ["nats://a:4222", "nats://b:4222"]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("agent.toml"))
    }

    fn error_of(text: &str) -> String {
        parse(text)
            .expect_err("config must be rejected")
            .to_string()
    }

    #[test]
    fn accepts_minimal_config_with_defaults() {
        let config = parse(MINIMAL).expect("minimal config is valid");
        assert_eq!(config.agent.device_id.as_str(), "pi-001");
        assert!(config.agent.runtime_enabled);
        assert_eq!(config.nats.urls.len(), 2);
        assert_eq!(
            config.heartbeat_interval(),
            Duration::from_secs(DEFAULT_HEARTBEAT_INTERVAL_SECS)
        );
        assert!(config.credentials.is_none());
        assert_eq!(config.podman_options().binary, PathBuf::from("podman"));
    }

    #[test]
    fn accepts_full_config() {
        let text = format!(
            "{MINIMAL}
[labels]
site = \"plant-3\"

[credentials]
type = \"toml-shared\"
user = \"device-pi-001\"
password = \"s3cret\"

[podman]
root = \"/tmp/r\"
runroot = \"/tmp/rr\"
tmpdir = \"/tmp/t\"
containers_conf = \"/etc/c.conf\"
"
        );
        let config = parse(&text).expect("full config is valid");
        assert_eq!(config.labels["site"], "plant-3");
        let Some(Credentials::TomlShared { user, password }) = &config.credentials else {
            panic!("toml-shared credentials expected");
        };
        assert_eq!(
            (user.as_str(), password.as_str()),
            ("device-pi-001", "s3cret")
        );
        assert!(!format!("{config:?}").contains("s3cret"));
        assert_eq!(config.podman_options().root, Some(PathBuf::from("/tmp/r")));
    }

    #[test]
    fn nkey_credentials_name_the_bootstrap_file() {
        let config = parse(&format!(
            "{MINIMAL}\n[credentials]\ntype = \"nkey\"\nbootstrap_creds = \"/etc/fleet/bootstrap.creds\"\n"
        ))
        .expect("nkey config is valid");
        assert!(matches!(
            &config.credentials,
            Some(Credentials::Nkey { bootstrap_creds: Some(p), bootstrap_token: None }) if p == Path::new("/etc/fleet/bootstrap.creds")
        ));
        let message = error_of(&format!(
            "{MINIMAL}\n[credentials]\ntype = \"nkey\"\nseed = \"SU\"\n"
        ));
        assert!(message.contains("seed"), "{message}");
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let text = include_str!("../agent.example.toml");
        let config = parse(text).expect("agent.example.toml is valid");
        assert_eq!(config.agent.device_id.as_str(), "pi-0042");
        assert!(config.credentials.is_some());
    }

    #[test]
    fn rejects_invalid_labels_naming_the_key() {
        let message = error_of(&format!("{MINIMAL}\n[labels]\n\"bad key!\" = \"x\"\n"));
        assert!(message.contains("bad key!"), "{message}");
    }

    #[test]
    fn rejects_unknown_key_naming_it() {
        let text = MINIMAL.replace("[nats]", "hearbeat_interval_secs = 3\n[nats]");
        let message = error_of(&text);
        assert!(message.contains("hearbeat_interval_secs"), "{message}");
        assert!(message.contains("agent.toml"), "{message}");
    }

    #[test]
    fn rejects_unknown_section_naming_it() {
        let message = error_of(&format!("{MINIMAL}\n[telemetry]\nport = 9000\n"));
        assert!(message.contains("telemetry"), "{message}");
    }

    #[test]
    fn a_bootstrap_token_is_read_checked_and_never_debugged() {
        let config = parse(&format!(
            "{MINIMAL}\n[credentials]\ntype = \"nkey\"\nbootstrap_token = \"abc123.0123456789abcdef\"\n"
        ))
        .expect("valid");
        let Some(Credentials::Nkey {
            bootstrap_token: Some(token),
            ..
        }) = &config.credentials
        else {
            panic!("nkey credentials with a token expected");
        };
        assert_eq!(token.expose(), "abc123.0123456789abcdef");
        let shown = format!("{config:?}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(shown.contains("abc123"), "{shown}");

        let err = parse(&format!(
            "{MINIMAL}\n[credentials]\ntype = \"nkey\"\nbootstrap_token = \"not-a-token-secretvalue\"\n"
        ))
        .expect_err("malformed")
        .to_string();
        assert!(err.contains("credentials.bootstrap_token"), "{err}");
        assert!(!err.contains("secretvalue"), "{err}");
    }

    #[test]
    fn rejects_unknown_credentials_type_naming_it() {
        let message = error_of(&format!(
            "{MINIMAL}\n[credentials]\ntype = \"nkey-file\"\npath = \"/x\"\n"
        ));
        assert!(message.contains("nkey-file"), "{message}");
        assert!(message.contains("toml-shared"), "{message}");
    }

    #[test]
    fn rejects_unknown_key_inside_credentials() {
        let message = error_of(&format!(
            "{MINIMAL}\n[credentials]\ntype = \"toml-shared\"\nuser = \"u\"\npassword = \"p\"\ntoken = \"t\"\n"
        ));
        assert!(message.contains("token"), "{message}");
    }

    #[test]
    fn rejects_credentials_without_type() {
        let message = error_of(&format!(
            "{MINIMAL}\n[credentials]\nuser = \"u\"\npassword = \"p\"\n"
        ));
        assert!(message.contains("type"), "{message}");
    }

    #[test]
    fn rejects_invalid_device_id_with_the_rule() {
        let message = error_of(&MINIMAL.replace("pi-001", "Pi_001"));
        assert!(message.contains("device_id"), "{message}");
        assert!(message.contains("lowercase"), "{message}");
    }

    #[test]
    fn rejects_empty_url_list() {
        let message = error_of(
            &MINIMAL.replace("urls = [\"nats://a:4222\", \"nats://b:4222\"]", "urls = []"),
        );
        assert!(message.contains("nats.urls"), "{message}");
    }

    #[test]
    fn rejects_unparsable_url_naming_it() {
        let message = error_of(&MINIMAL.replace("nats://b:4222", "http://b:4222"));
        assert!(message.contains("http://b:4222"), "{message}");
    }

    #[test]
    fn rejects_missing_device_id() {
        let message = error_of(&MINIMAL.replace("device_id = \"pi-001\"\n", ""));
        assert!(message.contains("device_id"), "{message}");
    }

    #[test]
    fn rejects_zero_heartbeat_interval() {
        let message = error_of(&MINIMAL.replace("[nats]", "heartbeat_interval_secs = 0\n[nats]"));
        assert!(
            message.contains("agent.heartbeat_interval_secs"),
            "{message}"
        );
    }
}
