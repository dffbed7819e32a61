//! Command line and environment: clap arguments, validated into a typed [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::Error;

/// `--version`: the crate version, and `+web-frontend` when the dashboard is compiled in (how
/// deploy tooling tells whether `--web-listen` will serve anything).
pub const VERSION: &str = if cfg!(feature = "web-frontend") {
    concat!(env!("CARGO_PKG_VERSION"), " +web-frontend")
} else {
    env!("CARGO_PKG_VERSION")
};

/// `harmony-fleet-operator [run|gen-crd|serve-web]`.
#[derive(Debug, Parser)]
#[command(
    name = "harmony-fleet-operator",
    version = VERSION,
    about = "harmony fleet operator: Deployments and Devices reconciled through NATS KV"
)]
pub struct Cli {
    /// What to do (default: `run`).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Arguments of `run` when no subcommand is given.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at start; boxing would only complicate the call sites"
)]
pub enum Command {
    /// Run the operator (the default).
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML.
    GenCrd,
    /// Serve only the dashboard (feature `web-frontend`): against NATS and Kubernetes, or
    /// against seeded in-memory data with `--mock`.
    ServeWeb(ServeWebArgs),
}

/// Who may use the dashboard. Without a token or basic auth it is open, which is refused
/// beyond loopback unless `--allow-unauthenticated` says an authenticating proxy guards it.
#[derive(Debug, Clone, Default, Args)]
pub struct WebAccessArgs {
    /// Bearer token for the dashboard (`Authorization: Bearer …`, or paste it on /login).
    #[arg(long = "web-token", env = "FLEET_WEB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// `user:password` for HTTP basic auth on the dashboard.
    #[arg(
        long = "web-basic-auth",
        env = "FLEET_WEB_BASIC_AUTH",
        hide_env_values = true
    )]
    pub basic_auth: Option<String>,
    /// Serve the dashboard without authentication beyond loopback (only behind an
    /// authenticating proxy, e.g. an OIDC proxy, that is the only way in).
    #[arg(long, env = "FLEET_WEB_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// The URL(s) people open the dashboard at, e.g. `https://fleet.example.com` (comma
    /// separated). Requests are answered only for these hosts, the listen address, and
    /// loopback names (`localhost`, `127.0.0.1`, `[::1]`, any port); state-changing requests
    /// and the shell only from these origins. Anything else is refused (DNS-rebinding guard).
    #[arg(
        long = "web-public-url",
        env = "FLEET_WEB_PUBLIC_URL",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub public_urls: Vec<String>,
    /// How long a dashboard sign-in session lasts, in minutes (sessions live in the process:
    /// a restart signs everyone out).
    #[arg(
        long = "web-session-minutes",
        env = "FLEET_WEB_SESSION_MINUTES",
        default_value_t = 480
    )]
    pub session_minutes: u64,
}

/// Flags of `serve-web`.
#[derive(Debug, Clone, Args)]
pub struct ServeWebArgs {
    /// Address of the dashboard.
    #[arg(long, env = "FLEET_WEB_LISTEN", default_value = "127.0.0.1:18080")]
    pub listen: SocketAddr,
    /// Serve seeded in-memory data (10 devices, 4 deployments) instead of a real fleet.
    #[arg(long)]
    pub mock: bool,
    /// Serve the stylesheet from this file instead of the embedded one (restyling).
    #[arg(long, value_name = "PATH")]
    pub css_from: Option<PathBuf>,
    /// Reload open tabs when the server restarts (development).
    #[arg(long)]
    pub live_reload: bool,
    /// NATS server URLs (comma separated); required without `--mock`.
    #[arg(long = "nats-url", env = "FLEET_NATS_URL", value_delimiter = ',')]
    pub nats_urls: Vec<String>,
    /// NATS user.
    #[arg(long, env = "FLEET_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password (prefer the environment variable over the flag).
    #[arg(long, env = "FLEET_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// Only show Deployments of this namespace (default: every namespace).
    #[arg(long, env = "FLEET_NAMESPACE")]
    pub namespace: Option<String>,
    /// A device is offline when its last heartbeat is older than this many seconds.
    #[arg(long, env = "FLEET_HEARTBEAT_TIMEOUT_SECS", default_value_t = 90)]
    pub heartbeat_timeout_secs: u64,
    /// Who may use the dashboard.
    #[command(flatten)]
    pub access: WebAccessArgs,
}

/// Flags of `run`. Every flag has an environment variable.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// NATS server URLs (comma separated).
    #[arg(
        long = "nats-url",
        env = "FLEET_NATS_URL",
        value_delimiter = ',',
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_urls: Vec<String>,
    /// NATS user.
    #[arg(long, env = "FLEET_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password (prefer the environment variable over the flag).
    #[arg(long, env = "FLEET_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// NATS `.creds` file (user JWT and seed) of the operator, when nats-server runs in
    /// operator mode (adr/0016). Excludes --nats-user.
    #[arg(long, env = "FLEET_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// CA (PEM) the NATS servers' certificates chain to: TLS is then required and the
    /// servers verified.
    #[arg(long, env = "FLEET_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// Issue device credentials: the signer file (JSON: fleetAccount, fleetSigning,
    /// operatorSigning) harmony-fleet-deploy wrote. Turns the identity service on: enrollment,
    /// renewal and revocation (needs --identity-system-creds).
    #[arg(long, env = "FLEET_IDENTITY_SIGNER")]
    pub identity_signer: Option<PathBuf>,
    /// `.creds` of the system-account user that pushes the fleet account's revocations.
    #[arg(long, env = "FLEET_IDENTITY_SYSTEM_CREDS")]
    pub identity_system_creds: Option<PathBuf>,
    /// Lifetime of issued device credentials, in seconds (agents renew at two thirds).
    #[arg(long, env = "FLEET_CREDENTIAL_LIFETIME_SECS", default_value_t = 30 * 24 * 3600)]
    pub credential_lifetime_secs: u64,
    /// Namespace of the bootstrap token Secrets (`fleet-bootstrap-token-<id>`, adr/0020); the
    /// operator needs get and update on Secrets there.
    #[arg(long, env = "FLEET_TOKEN_NAMESPACE", default_value = harmony_fleet_contracts::bootstrap_token::DEFAULT_NAMESPACE)]
    pub token_namespace: String,
    /// Only reconcile Deployments of this namespace (default: every namespace).
    #[arg(long, env = "FLEET_NAMESPACE")]
    pub namespace: Option<String>,
    /// A device is offline when its last heartbeat is older than this many seconds.
    #[arg(long, env = "FLEET_HEARTBEAT_TIMEOUT_SECS", default_value_t = 90)]
    pub heartbeat_timeout_secs: u64,
    /// How often an online device's `Device.status.lastHeartbeat` (`LAST SEEN`) is refreshed,
    /// in seconds, while the fleet's refreshes fit `--device-writes-per-sec`; a larger fleet is
    /// refreshed less often (every devices / budget seconds). Heartbeats are never a write each.
    #[arg(long, env = "FLEET_LAST_SEEN_REFRESH_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub last_seen_refresh_secs: u64,
    /// `lastHeartbeat` refreshes written to the API server a second, at most, whatever the
    /// fleet's size (online/offline flips, labels and inventory are written at once). Raise it
    /// for a fresher `LAST SEEN` on a large fleet; each write costs the API server and etcd.
    #[arg(long, env = "FLEET_DEVICE_WRITES_PER_SEC", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub device_writes_per_sec: u32,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "FLEET_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Create missing fleet KV buckets from the contract's specs (the cluster install sets it:
    /// only the operator reaches NATS there; locally FleetNatsScore creates them).
    #[arg(long, env = "FLEET_CREATE_BUCKETS")]
    pub create_buckets: bool,
    /// With --create-buckets: replicas of each bucket (1, or 3 on a three-node NATS cluster).
    #[arg(long, env = "FLEET_BUCKET_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub bucket_replicas: u8,
    /// With --create-buckets: devices the agent-written buckets' byte limits are sized for
    /// (adr/0018); beyond it, new keys of every device are refused.
    #[arg(long, env = "FLEET_FLEET_CAPACITY", default_value_t = harmony_fleet_contracts::buckets::DEFAULT_FLEET_CAPACITY)]
    pub fleet_capacity: u64,
    /// Do not create or update `Device` resources.
    #[arg(long, env = "FLEET_NO_DEVICE_RESOURCES")]
    pub no_device_resources: bool,
    /// Blacklist a device that writes more than this many distinct `device-state` keys for
    /// deployments it does not have within a minute (each is removed; an honest agent leaves
    /// at most one per deployment just taken from it). Its credential is revoked; an admin
    /// lifts it by removing the annotation fleet.nationtech.io/blacklisted.
    #[arg(long, env = "FLEET_STRAY_REPORT_LIMIT", default_value_t = crate::write_quota::DEFAULT_STRAY_KEY_LIMIT)]
    pub stray_report_limit: u32,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "FLEET_LOG_JSON")]
    pub log_json: bool,
    /// Also serve the dashboard on this address (needs the `web-frontend` feature).
    #[arg(long, env = "FLEET_WEB_LISTEN")]
    pub web_listen: Option<SocketAddr>,
    /// Who may use the dashboard.
    #[command(flatten)]
    pub web_access: WebAccessArgs,
    /// Run several replicas safely: only the holder of a `coordination.k8s.io` Lease writes;
    /// the others keep their caches warm and take over when it stops (at once) or dies (within
    /// about the lease duration). Needs get, create and update on Leases in
    /// --leader-elect-namespace.
    #[arg(long, env = "FLEET_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else `default`).
    #[arg(long, env = "FLEET_LEADER_ELECT_NAMESPACE")]
    pub leader_elect_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, env = "FLEET_LEADER_ELECT_LEASE", default_value = crate::leader::LeaderConfig::DEFAULT_NAME)]
    pub leader_elect_lease: String,
    /// This replica's identity in the Lease (default: $POD_NAME, else `<hostname>-<pid>`).
    #[arg(long, env = "FLEET_LEADER_ELECT_IDENTITY")]
    pub leader_elect_identity: Option<String>,
    /// Seconds a Lease not renewed stays held: how long a dead leader is waited for. The
    /// leader renews every tenth of it and gives up at seven tenths.
    #[arg(long, env = "FLEET_LEADER_ELECT_LEASE_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub leader_elect_lease_secs: u64,
}

/// NATS connection settings.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// Server URLs.
    pub urls: Vec<String>,
    /// User and password, when the server requires them.
    pub credentials: Option<(String, String)>,
    /// A `.creds` file (operator mode), instead of user and password.
    pub creds_file: Option<PathBuf>,
    /// CA of the servers' TLS certificates (TLS required when set).
    pub ca_file: Option<PathBuf>,
}

/// The identity service's settings (`--identity-signer`).
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    /// The signer seeds file.
    pub signer: PathBuf,
    /// The system user's `.creds` file.
    pub system_creds: PathBuf,
    /// Lifetime of issued credentials.
    pub lifetime: Duration,
    /// Namespace of the bootstrap token Secrets.
    pub token_namespace: String,
}

/// Validated operator configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// NATS settings.
    pub nats: NatsConfig,
    /// Namespace scope (`None`: all namespaces).
    pub namespace: Option<String>,
    /// Heartbeat age after which a device is offline.
    pub heartbeat_timeout: Duration,
    /// `lastHeartbeat` refreshes: the interval wanted and the write budget.
    pub last_seen: crate::registry::RefreshPolicy,
    /// Listen address of the HTTP endpoints.
    pub listen: SocketAddr,
    /// Whether to create missing buckets, and how.
    pub create_buckets: Option<crate::kv::BucketLayout>,
    /// Whether to write `Device` resources.
    pub device_resources: bool,
    /// Distinct stray `device-state` keys per device and minute before it is blacklisted.
    pub stray_report_limit: u32,
    /// The dashboard, when `--web-listen` is set.
    pub web: Option<WebConfig>,
    /// Device credentials, when `--identity-signer` is set.
    pub identity: Option<IdentityConfig>,
    /// Leader election, when `--leader-elect` is set.
    pub leader: Option<crate::leader::LeaderConfig>,
}

/// Where and for whom `run` serves the dashboard.
#[derive(Clone, Debug)]
pub struct WebConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Access settings (validated when the dashboard starts).
    pub access: WebAccessArgs,
}

impl Config {
    /// A configuration for NATS at `url` with every other setting at its default (tests).
    pub fn for_nats(url: impl Into<String>) -> Self {
        Self {
            nats: NatsConfig {
                urls: vec![url.into()],
                credentials: None,
                creds_file: None,
                ca_file: None,
            },
            namespace: None,
            heartbeat_timeout: Duration::from_secs(90),
            last_seen: crate::registry::RefreshPolicy {
                wanted: Duration::from_secs(15),
                per_sec: 50,
            },
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            create_buckets: None,
            device_resources: true,
            stray_report_limit: crate::write_quota::DEFAULT_STRAY_KEY_LIMIT,
            web: None,
            identity: None,
            leader: None,
        }
    }
}

impl TryFrom<RunArgs> for Config {
    type Error = Error;

    fn try_from(args: RunArgs) -> Result<Self, Error> {
        let RunArgs {
            nats_urls,
            nats_user,
            nats_password,
            nats_creds,
            nats_ca,
            identity_signer,
            identity_system_creds,
            credential_lifetime_secs,
            token_namespace,
            namespace,
            heartbeat_timeout_secs,
            last_seen_refresh_secs,
            device_writes_per_sec,
            listen,
            create_buckets,
            bucket_replicas,
            fleet_capacity,
            no_device_resources,
            stray_report_limit,
            log_json: _,
            web_listen,
            web_access,
            leader_elect,
            leader_elect_namespace,
            leader_elect_lease,
            leader_elect_identity,
            leader_elect_lease_secs,
        } = args;
        let leader = leader_elect.then(|| {
            let namespace = leader_elect_namespace
                .filter(|n| !n.trim().is_empty())
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| "default".to_owned());
            let identity = leader_elect_identity
                .filter(|n| !n.trim().is_empty())
                .or_else(|| std::env::var("POD_NAME").ok())
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(default_identity);
            let lease = Duration::from_secs(leader_elect_lease_secs);
            crate::leader::LeaderConfig {
                namespace,
                name: leader_elect_lease,
                identity,
                lease_duration: lease,
                renew_deadline: lease * 7 / 10,
                retry_period: (lease / 10).max(Duration::from_millis(200)),
            }
        });
        let urls: Vec<String> = nats_urls
            .into_iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(Error::Config(
                "--nats-url / FLEET_NATS_URL is empty: give at least one nats:// URL".into(),
            ));
        }
        let credentials = match (nats_user, nats_password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::Config(
                    "--nats-user is set but --nats-password / FLEET_NATS_PASSWORD is not".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(Error::Config(
                    "--nats-password is set but --nats-user / FLEET_NATS_USER is not".into(),
                ));
            }
        };
        if credentials.is_some() && nats_creds.is_some() {
            return Err(Error::Config(
                "--nats-creds and --nats-user are both set: a server in operator mode takes the .creds file only".into(),
            ));
        }
        let identity = match (identity_signer, identity_system_creds) {
            (Some(signer), Some(system_creds)) => {
                if credential_lifetime_secs < 10 {
                    return Err(Error::Config(
                        "--credential-lifetime-secs must be at least 10 (default 2592000, 30 days)"
                            .into(),
                    ));
                }
                if token_namespace.trim().is_empty() {
                    return Err(Error::Config(
                        "--token-namespace / FLEET_TOKEN_NAMESPACE is empty: give the namespace of the bootstrap token Secrets (default fleet-system)".into(),
                    ));
                }
                Some(IdentityConfig {
                    signer,
                    system_creds,
                    lifetime: Duration::from_secs(credential_lifetime_secs),
                    token_namespace: token_namespace.trim().to_owned(),
                })
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::Config(
                    "--identity-signer is set but --identity-system-creds / FLEET_IDENTITY_SYSTEM_CREDS is not: the operator needs the system user to push revocations".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(Error::Config(
                    "--identity-system-creds is set but --identity-signer / FLEET_IDENTITY_SIGNER is not".into(),
                ));
            }
        };
        if heartbeat_timeout_secs == 0 {
            return Err(Error::Config(
                "--heartbeat-timeout-secs must be at least 1".into(),
            ));
        }
        Ok(Self {
            nats: NatsConfig {
                urls,
                credentials,
                creds_file: nats_creds,
                ca_file: nats_ca,
            },
            namespace: namespace.filter(|n| !n.is_empty()),
            heartbeat_timeout: Duration::from_secs(heartbeat_timeout_secs),
            last_seen: crate::registry::RefreshPolicy {
                wanted: Duration::from_secs(last_seen_refresh_secs),
                per_sec: device_writes_per_sec,
            },
            listen,
            create_buckets: create_buckets.then_some(crate::kv::BucketLayout {
                replicas: usize::from(bucket_replicas),
                fleet_capacity,
            }),
            device_resources: !no_device_resources,
            stray_report_limit,
            web: web_listen.map(|listen| WebConfig {
                listen,
                access: web_access,
            }),
            identity,
            leader,
        })
    }
}

/// `<hostname>-<pid>`: unique among the replicas on one machine and across machines.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "operator".to_owned());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("harmony-fleet-operator").chain(args.iter().copied()))
            .expect("arguments parse")
    }

    #[test]
    fn run_is_the_default_subcommand() {
        let cli = parse(&["--nats-url", "nats://a:4222,nats://b:4222"]);
        assert!(cli.command.is_none());
        let config = Config::try_from(cli.run).expect("valid");
        assert_eq!(config.nats.urls, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(config.heartbeat_timeout, Duration::from_secs(90));
    }

    #[test]
    fn a_write_budget_or_refresh_interval_of_zero_is_refused_naming_the_flag() {
        for flag in ["--device-writes-per-sec", "--last-seen-refresh-secs"] {
            let err = Cli::try_parse_from(["harmony-fleet-operator", "run", flag, "0"])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(flag) && err.contains("1.."), "{flag}: {err}");
        }
    }

    #[test]
    fn rejects_a_user_without_password() {
        let cli = parse(&["run", "--nats-user", "op"]);
        let Some(Command::Run(args)) = cli.command else {
            panic!("run subcommand");
        };
        let err = Config::try_from(args).expect_err("invalid").to_string();
        assert!(err.contains("FLEET_NATS_PASSWORD"), "{err}");
    }

    #[test]
    fn serve_web_defaults_to_loopback() {
        let Some(Command::ServeWeb(args)) = parse(&["serve-web", "--mock"]).command else {
            panic!("serve-web subcommand");
        };
        assert!(args.mock);
        assert_eq!(args.listen, "127.0.0.1:18080".parse().unwrap());
    }

    #[test]
    fn web_listen_turns_the_dashboard_on_in_run() {
        let cli = parse(&["run", "--web-listen", "0.0.0.0:8081"]);
        let Some(Command::Run(args)) = cli.command else {
            panic!("run subcommand");
        };
        let config = Config::try_from(args).expect("valid");
        assert_eq!(
            config.web.map(|w| w.listen),
            Some("0.0.0.0:8081".parse().unwrap())
        );
    }

    #[test]
    fn identity_needs_both_files() {
        let cli = parse(&["run", "--identity-signer", "/s.json"]);
        let Some(Command::Run(args)) = cli.command else {
            panic!("run subcommand");
        };
        let err = Config::try_from(args).expect_err("invalid").to_string();
        assert!(err.contains("FLEET_IDENTITY_SYSTEM_CREDS"), "{err}");
        let cli = parse(&[
            "run",
            "--identity-signer",
            "/s.json",
            "--identity-system-creds",
            "/sys.creds",
            "--nats-creds",
            "/op.creds",
        ]);
        let Some(Command::Run(args)) = cli.command else {
            panic!("run subcommand");
        };
        let config = Config::try_from(args).expect("valid");
        let identity = config.identity.expect("identity on");
        assert_eq!(identity.lifetime, Duration::from_secs(30 * 24 * 3600));
        assert_eq!(identity.token_namespace, "fleet-system");
        assert_eq!(config.nats.creds_file, Some(PathBuf::from("/op.creds")));
    }

    #[test]
    fn token_namespace_is_a_flag_and_may_not_be_empty() {
        let args = |ns: &str| {
            let cli = parse(&[
                "run",
                "--identity-signer",
                "/s.json",
                "--identity-system-creds",
                "/sys.creds",
                "--token-namespace",
                ns,
            ]);
            let Some(Command::Run(args)) = cli.command else {
                panic!("run subcommand");
            };
            Config::try_from(args)
        };
        let config = args("fleet-prod").expect("valid");
        assert_eq!(
            config.identity.expect("identity on").token_namespace,
            "fleet-prod"
        );
        let err = args(" ").expect_err("empty").to_string();
        assert!(err.contains("--token-namespace"), "{err}");
    }

    #[test]
    fn gen_crd_parses() {
        assert!(matches!(parse(&["gen-crd"]).command, Some(Command::GenCrd)));
    }
}
