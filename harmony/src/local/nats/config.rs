//! The nats-server configuration file a local server runs with, generated from data.
//!
//! Authentication is plain data — accounts, users, and per-user publish/subscribe allow/deny
//! lists — so a caller (e.g. the fleet Score with the contract's permission template) can say
//! *who may do what* without writing nats-server syntax. Strings are written JSON-quoted, which
//! nats-server's parser reads as literal strings (no `$variable` expansion).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::local::error::{LocalError, Result};

/// Accounts and users of a nats-server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatsAuthConfig {
    /// Isolated accounts, each with its users.
    #[serde(default)]
    pub accounts: Vec<NatsAccount>,
    /// Users of the global account (`$G`). With no accounts defined, `$G` has JetStream.
    #[serde(default)]
    pub users: Vec<NatsUser>,
    /// The user whose identity unauthenticated connections get.
    #[serde(default)]
    pub no_auth_user: Option<String>,
    /// The account used for system events (`$SYS` requests), if any. In operator mode, the
    /// system account's public key.
    #[serde(default)]
    pub system_account: Option<String>,
    /// Decentralized authentication: trust every account JWT signed by this operator, and every
    /// user JWT signed by such an account. Excludes `accounts`, `users` and `no_auth_user`:
    /// identities live in JWTs, not in this file.
    #[serde(default)]
    pub operator: Option<NatsOperatorTrust>,
    /// Delegate authentication to a service (nats-server's auth callout): every CONNECT not
    /// from `authUsers` is sent to it, and it answers with a signed user JWT.
    #[serde(default)]
    pub auth_callout: Option<NatsAuthCallout>,
}

/// nats-server's `auth_callout` block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatsAuthCallout {
    /// Public account nkey that signs the service's responses.
    pub issuer: String,
    /// Users that bypass the callout (the service's own).
    pub auth_users: Vec<String>,
    /// The account of those users.
    pub account: String,
}

/// Operator mode with a `full` account resolver: account JWTs are stored in a directory next
/// to the JetStream store and updated at run time by system-account requests
/// (`$SYS.REQ.CLAIMS.UPDATE`), so adding a user or revoking one never changes this file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatsOperatorTrust {
    /// The operator JWT (self-signed), inlined.
    pub jwt: String,
    /// Account JWTs the resolver starts with, by account public key (at least the system
    /// account's). A stored JWT that is newer wins over a preloaded one.
    pub preload: Vec<(String, String)>,
}

/// One account: its own subject space (and JetStream if enabled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatsAccount {
    /// Account name.
    pub name: String,
    /// Whether the account may use JetStream (streams, KV).
    #[serde(default = "yes")]
    pub jetstream: bool,
    /// Users authenticating into this account.
    #[serde(default)]
    pub users: Vec<NatsUser>,
}

/// A user/password identity and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatsUser {
    /// User name.
    pub user: String,
    /// Password (plain text: these servers live on loopback for tests and local runs).
    pub password: String,
    /// Restrictions; `None` means unrestricted within the account.
    #[serde(default)]
    pub permissions: Option<NatsPermissions>,
}

/// What a user may publish and subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatsPermissions {
    /// Subjects the user may (allow) or may not (deny) publish to.
    #[serde(default)]
    pub publish: Option<SubjectPermission>,
    /// Subjects the user may (allow) or may not (deny) subscribe to.
    #[serde(default)]
    pub subscribe: Option<SubjectPermission>,
    /// Whether the user may reply to requests it received, without publish permission on the
    /// reply subjects (what a request/reply server such as a device agent needs).
    #[serde(default)]
    pub allow_responses: Option<AllowResponses>,
}

/// Allow and deny lists of subjects (wildcards `*` and `>` allowed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubjectPermission {
    /// Subjects allowed; empty means "all not denied".
    #[serde(default)]
    pub allow: Vec<String>,
    /// Subjects denied (deny wins over allow).
    #[serde(default)]
    pub deny: Vec<String>,
}

/// nats-server's `allow_responses`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AllowResponses {
    /// One response per request, within the server's default expiry.
    Single,
    /// Up to `max` responses per request, within `expires` (server default when `None`).
    Limited {
        /// Responses allowed per request.
        max: u32,
        /// How long after the request responses are allowed.
        #[serde(default, with = "opt_millis")]
        expires: Option<Duration>,
    },
}

fn yes() -> bool {
    true
}

mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// Cluster (routes) section of one member of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSection {
    /// The cluster's name (the same on every member).
    pub name: String,
    /// This member's route port.
    pub port: u16,
    /// The other members' route URLs (`nats-route://host:port`).
    pub routes: Vec<String>,
}

/// Everything one server's configuration file holds.
#[derive(Debug, Clone)]
pub struct ServerConfig<'a> {
    /// The server's unique name (JetStream needs unique names in a cluster).
    pub server_name: &'a str,
    /// Address every listener binds: `127.0.0.1` for local servers, `0.0.0.0` in a pod.
    pub host: &'a str,
    /// Client port.
    pub port: u16,
    /// HTTP monitoring port (`/healthz`, `/varz`).
    pub monitor_port: u16,
    /// JetStream store directory.
    pub store_dir: &'a Path,
    /// JetStream file storage (`max_file_store`, bytes): what stream limits may reserve and
    /// data may fill. `None`: nats-server's default, 75% of the disk's free space when it
    /// starts, so what fits changes from machine to machine.
    pub max_file_store: Option<u64>,
    /// Routes to the other members, when clustered.
    pub cluster: Option<&'a ClusterSection>,
    /// Accounts, users and permissions; `None`: no authentication.
    pub auth: Option<&'a NatsAuthConfig>,
    /// TLS for clients (required) and routes; `None`: plaintext.
    pub tls: Option<&'a NatsTls>,
}

/// Certificate files of a TLS-serving nats-server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatsTls {
    /// Serving certificate (PEM).
    pub cert_file: std::path::PathBuf,
    /// Its key (PEM).
    pub key_file: std::path::PathBuf,
    /// CA that routes' certificates must chain to (PEM).
    pub ca_file: std::path::PathBuf,
}

fn render_tls(out: &mut String, tls: &NatsTls, indent: &str, verify_peer: bool) {
    let _ = writeln!(out, "{indent}tls {{");
    let _ = writeln!(
        out,
        "{indent}  cert_file: {}",
        quote(&tls.cert_file.display().to_string())
    );
    let _ = writeln!(
        out,
        "{indent}  key_file: {}",
        quote(&tls.key_file.display().to_string())
    );
    let _ = writeln!(
        out,
        "{indent}  ca_file: {}",
        quote(&tls.ca_file.display().to_string())
    );
    if verify_peer {
        let _ = writeln!(out, "{indent}  verify: true");
    }
    let _ = writeln!(out, "{indent}  timeout: 5");
    let _ = writeln!(out, "{indent}}}");
}

fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(", "))
}

impl ServerConfig<'_> {
    /// The configuration file's text; rejects auth data nats-server would misread.
    pub fn render(&self) -> Result<String> {
        let mut out = String::new();
        let _ = writeln!(out, "server_name: {}", quote(self.server_name));
        let _ = writeln!(out, "listen: \"{}:{}\"", self.host, self.port);
        let _ = writeln!(out, "http: \"{}:{}\"", self.host, self.monitor_port);
        let _ = writeln!(
            out,
            "jetstream {{\n  store_dir: {}",
            quote(&self.store_dir.display().to_string())
        );
        if let Some(bytes) = self.max_file_store {
            let _ = writeln!(out, "  max_file_store: {bytes}");
        }
        let _ = writeln!(out, "}}");
        if let Some(tls) = self.tls {
            render_tls(&mut out, tls, "", false);
        }
        if let Some(cluster) = self.cluster {
            let _ = writeln!(
                out,
                "cluster {{\n  name: {}\n  listen: \"{}:{}\"\n  routes: {}",
                quote(&cluster.name),
                self.host,
                cluster.port,
                list(&cluster.routes)
            );
            // Routes authenticate each other by certificate: only a server holding a
            // certificate of this CA joins the cluster.
            if let Some(tls) = self.tls {
                render_tls(&mut out, tls, "  ", true);
            }
            out.push_str("}\n");
        }
        if let Some(auth) = self.auth {
            render_auth(&mut out, auth, self.store_dir)?;
        }
        Ok(out)
    }
}

/// `max_control_line` in operator mode (bytes).
pub const OPERATOR_MODE_MAX_CONTROL_LINE: usize = 64 * 1024;

fn render_operator(out: &mut String, trust: &NatsOperatorTrust, store_dir: &Path) -> Result<()> {
    let resolver_dir = store_dir.parent().unwrap_or(store_dir).join("resolver");
    let _ = writeln!(out, "operator: {}", quote(&trust.jwt));
    // A client's CONNECT line carries its JWT, permissions included: a service user's JWT
    // outgrows nats-server's 4 KiB default.
    let _ = writeln!(out, "max_control_line: {OPERATOR_MODE_MAX_CONTROL_LINE}");
    let _ = writeln!(
        out,
        "resolver {{\n  type: full\n  dir: {}\n  allow_delete: false\n  interval: \"2m\"\n  timeout: \"5s\"\n}}",
        quote(&resolver_dir.display().to_string())
    );
    if !trust.preload.is_empty() {
        out.push_str("resolver_preload {\n");
        for (account, jwt) in &trust.preload {
            check_name("account", account)?;
            let _ = writeln!(out, "  {}: {}", quote(account), quote(jwt));
        }
        out.push_str("}\n");
    }
    Ok(())
}

fn render_auth(out: &mut String, auth: &NatsAuthConfig, store_dir: &Path) -> Result<()> {
    if let Some(trust) = &auth.operator {
        if !auth.accounts.is_empty() || !auth.users.is_empty() || auth.no_auth_user.is_some() {
            return Err(LocalError::Config(
                "nats auth: `operator` (JWT trust) excludes `accounts`, `users` and `noAuthUser`: \
                 issue those identities as JWTs instead"
                    .into(),
            ));
        }
        render_operator(out, trust, store_dir)?;
    }
    if !auth.accounts.is_empty() {
        out.push_str("accounts {\n");
        for account in &auth.accounts {
            check_name("account", &account.name)?;
            let _ = writeln!(out, "  {}: {{", quote(&account.name));
            if account.jetstream {
                out.push_str("    jetstream: enabled\n");
            }
            out.push_str("    users: [\n");
            for user in &account.users {
                render_user(out, user, "      ")?;
            }
            out.push_str("    ]\n  }\n");
        }
        out.push_str("}\n");
    }
    if !auth.users.is_empty() || auth.auth_callout.is_some() {
        out.push_str("authorization {\n");
        if !auth.users.is_empty() {
            out.push_str("  users: [\n");
            for user in &auth.users {
                render_user(out, user, "    ")?;
            }
            out.push_str("  ]\n");
        }
        if let Some(callout) = &auth.auth_callout {
            let _ = writeln!(
                out,
                "  auth_callout {{\n    issuer: {}\n    auth_users: {}\n    account: {}\n  }}",
                quote(&callout.issuer),
                list(&callout.auth_users),
                quote(&callout.account)
            );
        }
        out.push_str("}\n");
    }
    if let Some(user) = &auth.no_auth_user {
        let _ = writeln!(out, "no_auth_user: {}", quote(user));
    }
    if let Some(account) = &auth.system_account {
        let _ = writeln!(out, "system_account: {}", quote(account));
    }
    Ok(())
}

fn render_user(out: &mut String, user: &NatsUser, indent: &str) -> Result<()> {
    check_name("user", &user.user)?;
    let _ = write!(
        out,
        "{indent}{{user: {}, password: {}",
        quote(&user.user),
        quote(&user.password)
    );
    if let Some(p) = &user.permissions {
        out.push_str(", permissions: {");
        let mut parts = Vec::new();
        for (key, perm) in [("publish", &p.publish), ("subscribe", &p.subscribe)] {
            if let Some(perm) = perm {
                let mut inner = Vec::new();
                if !perm.allow.is_empty() {
                    inner.push(format!("allow: {}", list(&perm.allow)));
                }
                if !perm.deny.is_empty() {
                    inner.push(format!("deny: {}", list(&perm.deny)));
                }
                parts.push(format!("{key}: {{{}}}", inner.join(", ")));
            }
        }
        match &p.allow_responses {
            Some(AllowResponses::Single) => parts.push("allow_responses: true".to_owned()),
            Some(AllowResponses::Limited { max, expires }) => {
                let mut inner = vec![format!("max: {max}")];
                if let Some(expires) = expires {
                    inner.push(format!("expires: \"{}ms\"", expires.as_millis()));
                }
                parts.push(format!("allow_responses: {{{}}}", inner.join(", ")));
            }
            None => {}
        }
        out.push_str(&parts.join(", "));
        out.push('}');
    }
    out.push_str("}\n");
    Ok(())
}

fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(LocalError::Config(format!(
            "NATS {what} name {name:?} must be non-empty, without whitespace or control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device_user() -> NatsUser {
        NatsUser {
            user: "dev-1".into(),
            password: "pa\"ss$word".into(),
            permissions: Some(NatsPermissions {
                publish: Some(SubjectPermission {
                    allow: vec!["$KV.device-state.state.dev-1.>".into()],
                    deny: vec![],
                }),
                subscribe: Some(SubjectPermission {
                    allow: vec!["device-commands.dev-1.>".into()],
                    deny: vec!["secret.>".into()],
                }),
                allow_responses: Some(AllowResponses::Limited {
                    max: 5,
                    expires: Some(Duration::from_secs(60)),
                }),
            }),
        }
    }

    #[test]
    fn renders_accounts_users_and_permissions() {
        let auth = NatsAuthConfig {
            accounts: vec![NatsAccount {
                name: "FLEET".into(),
                jetstream: true,
                users: vec![device_user()],
            }],
            users: vec![],
            no_auth_user: None,
            system_account: None,
            operator: None,
            auth_callout: None,
        };
        let text = ServerConfig {
            host: "127.0.0.1",
            server_name: "n1",
            port: 4222,
            monitor_port: 8222,
            store_dir: Path::new("/tmp/js"),
            max_file_store: None,
            cluster: None,
            auth: Some(&auth),
            tls: None,
        }
        .render()
        .expect("render");
        assert!(text.contains("listen: \"127.0.0.1:4222\""), "{text}");
        assert!(
            text.contains("\"FLEET\": {\n    jetstream: enabled"),
            "{text}"
        );
        assert!(text.contains(r#"password: "pa\"ss$word""#), "{text}");
        assert!(
            text.contains(r#"publish: {allow: ["$KV.device-state.state.dev-1.>"]}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"subscribe: {allow: ["device-commands.dev-1.>"], deny: ["secret.>"]}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"allow_responses: {max: 5, expires: "60000ms"}"#),
            "{text}"
        );
    }

    #[test]
    fn rejects_user_names_with_whitespace() {
        let auth = NatsAuthConfig {
            users: vec![NatsUser {
                user: "a b".into(),
                password: "x".into(),
                permissions: None,
            }],
            ..NatsAuthConfig::default()
        };
        let err = ServerConfig {
            host: "127.0.0.1",
            server_name: "n1",
            port: 1,
            monitor_port: 2,
            store_dir: Path::new("/tmp"),
            max_file_store: None,
            cluster: None,
            auth: Some(&auth),
            tls: None,
        }
        .render()
        .expect_err("invalid");
        assert!(err.to_string().contains("\"a b\""), "{err}");
    }

    #[test]
    fn renders_operator_trust_with_a_full_resolver_beside_the_store() {
        let auth = NatsAuthConfig {
            system_account: Some("ASYS".into()),
            operator: Some(NatsOperatorTrust {
                jwt: "eyJop".into(),
                preload: vec![("ASYS".into(), "eyJsys".into())],
            }),
            ..NatsAuthConfig::default()
        };
        let config = |auth: &NatsAuthConfig| {
            ServerConfig {
                host: "127.0.0.1",
                server_name: "n1",
                port: 4222,
                monitor_port: 8222,
                store_dir: Path::new("/data/jetstream"),
                max_file_store: Some(2 << 30),
                cluster: None,
                auth: Some(auth),
                tls: None,
            }
            .render()
        };
        let text = config(&auth).expect("render");
        assert!(
            text.contains(
                "jetstream {\n  store_dir: \"/data/jetstream\"\n  max_file_store: 2147483648\n}"
            ),
            "{text}"
        );
        assert!(text.contains(r#"operator: "eyJop""#), "{text}");
        assert!(
            text.contains("type: full\n  dir: \"/data/resolver\""),
            "{text}"
        );
        assert!(text.contains(r#""ASYS": "eyJsys""#), "{text}");
        assert!(text.contains(r#"system_account: "ASYS""#), "{text}");

        let mixed = NatsAuthConfig {
            users: vec![device_user()],
            ..auth
        };
        let err = config(&mixed).expect_err("operator and users");
        assert!(err.to_string().contains("as JWTs"), "{err}");
    }

    #[test]
    fn renders_an_auth_callout_block() {
        let auth = NatsAuthConfig {
            auth_callout: Some(NatsAuthCallout {
                issuer: "AISSUER".into(),
                auth_users: vec!["auth".into()],
                account: "AUTH".into(),
            }),
            ..NatsAuthConfig::default()
        };
        let text = ServerConfig {
            host: "127.0.0.1",
            server_name: "n1",
            port: 4222,
            monitor_port: 8222,
            store_dir: Path::new("/tmp/js"),
            max_file_store: None,
            cluster: None,
            auth: Some(&auth),
            tls: None,
        }
        .render()
        .expect("render");
        assert!(
            text.contains("authorization {\n  auth_callout {\n    issuer: \"AISSUER\"\n    auth_users: [\"auth\"]\n    account: \"AUTH\"\n  }\n}"),
            "{text}"
        );
    }

    #[test]
    fn renders_cluster_routes() {
        let cluster = ClusterSection {
            name: "harmony-local".into(),
            port: 6222,
            routes: vec![
                "nats-route://127.0.0.1:6223".into(),
                "nats-route://127.0.0.1:6224".into(),
            ],
        };
        let text = ServerConfig {
            host: "127.0.0.1",
            server_name: "n1",
            port: 4222,
            monitor_port: 8222,
            store_dir: Path::new("/tmp/js"),
            max_file_store: None,
            cluster: Some(&cluster),
            auth: None,
            tls: None,
        }
        .render()
        .expect("render");
        assert!(
            text.contains(
                r#"routes: ["nats-route://127.0.0.1:6223", "nats-route://127.0.0.1:6224"]"#
            ),
            "{text}"
        );
    }
}
