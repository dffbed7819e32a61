//! [`AppConfig`]: the greeter's settings, checked before anything is written, and rendered
//! into the environment and the fleet payload ([`ReconcileScore`]) its devices run.

use std::collections::BTreeMap;

use harmony_fleet_contracts::ReconcileScore;
use harmony_fleet_contracts::payload::{PodmanV0, PortMapping, PullPolicy, Service};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The port the greeter listens on inside its container (the demo image's `httpd`).
pub const CONTAINER_PORT: u32 = 8080;

/// Longest app name: the ConfigMap `<name>-config` must still be a 63-byte label.
pub const NAME_MAX_LEN: usize = 56;

/// Longest greeting, in bytes.
pub const GREETING_MAX_LEN: usize = 256;

/// The app's image runs this: it writes the greeting where `httpd` serves `/` and hands over to
/// the demo image's `/bin/serve` (which stops at once on SIGTERM). The greeting travels in the
/// environment, never through the shell's parser.
const ENTRYPOINT: &str = r#"printf '%s\n' "$GREETING" > /www/index.html && exec /bin/serve"#;

/// The greeter's settings: what it says, where it listens, which image runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppConfig {
    /// The app's name: its fleet Deployment is called so, its ConfigMap `<name>-config`.
    pub name: String,
    /// Namespace of the Deployment and the ConfigMap (created if missing).
    pub namespace: String,
    /// The image. It must provide `/bin/sh`, `printf` and the demo image's `/bin/serve`
    /// (`localhost/fleet-demo:<tag>`, which `LocalAgent` builds on every local device).
    pub image: String,
    /// When devices pull the image (`Never` for the locally built demo image).
    pub pull_policy: PullPolicy,
    /// What the app answers at `/`.
    pub greeting: String,
    /// The port it is published on, at the device's address.
    pub port: u16,
}

/// Why an [`AppConfig`] cannot be deployed; names the field and what would be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("app config `{field}` {reason}")]
pub struct ConfigError {
    /// The field, as in [`AppConfig`].
    pub field: &'static str,
    /// What is wrong and what would be right.
    pub reason: String,
}

impl ConfigError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            field,
            reason: reason.into(),
        }
    }
}

/// The config as the devices get it: the environment of the `web` service, and its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedConfig {
    /// Environment variables of the app's container.
    pub env: BTreeMap<String, String>,
    /// First 12 hex digits of the SHA-256 of the environment (names and values).
    pub digest: String,
}

impl AppConfig {
    /// Checks every field; the first bad one is named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_label("name", &self.name, NAME_MAX_LEN)?;
        check_label("namespace", &self.namespace, 63)?;
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            return Err(ConfigError::new(
                "image",
                format!(
                    "is {:?}; give an image reference without spaces",
                    self.image
                ),
            ));
        }
        if self.greeting.is_empty() || self.greeting.len() > GREETING_MAX_LEN {
            return Err(ConfigError::new(
                "greeting",
                format!(
                    "is {} bytes long; it must have 1 to {GREETING_MAX_LEN} bytes",
                    self.greeting.len()
                ),
            ));
        }
        if self.greeting.chars().any(char::is_control) {
            return Err(ConfigError::new(
                "greeting",
                "contains a control character (a newline?); give one line of text",
            ));
        }
        if self.port == 0 {
            return Err(ConfigError::new(
                "port",
                "is 0; give the port to publish on the device (e.g. 8080)",
            ));
        }
        Ok(())
    }

    /// The app's environment and its digest.
    pub fn render(&self) -> Result<RenderedConfig, ConfigError> {
        self.validate()?;
        let env = BTreeMap::from([
            ("APP_NAME".to_owned(), self.name.clone()),
            ("GREETING".to_owned(), self.greeting.clone()),
            ("PORT".to_owned(), CONTAINER_PORT.to_string()),
        ]);
        let mut hasher = Sha256::new();
        for (key, value) in &env {
            hasher.update(key.as_bytes());
            hasher.update([0]);
            hasher.update(value.as_bytes());
            hasher.update([0]);
        }
        let digest = hex::encode(hasher.finalize())[..12].to_owned();
        Ok(RenderedConfig { env, digest })
    }

    /// The payload every selected device runs: one service `web`, the rendered environment,
    /// published on [`port`](Self::port).
    pub fn payload(&self) -> Result<ReconcileScore, ConfigError> {
        let rendered = self.render()?;
        let mut web = Service::new("web", self.image.clone());
        web.pull_policy = self.pull_policy;
        web.command = vec!["/bin/sh".to_owned(), "-c".to_owned(), ENTRYPOINT.to_owned()];
        web.env = rendered.env;
        web.ports = vec![PortMapping {
            host_port: u32::from(self.port),
            container_port: CONTAINER_PORT,
            protocol: Default::default(),
            host_ip: None,
        }];
        Ok(ReconcileScore::PodmanV0(PodmanV0 {
            services: vec![web],
            init_containers: Vec::new(),
            stop_policy: Default::default(),
        }))
    }

    /// The name of the ConfigMap holding the rendered config.
    pub fn config_map_name(&self) -> String {
        format!("{}-config", self.name)
    }
}

/// An RFC 1123 label: lowercase letters, digits and '-', alphanumeric at both ends.
fn check_label(field: &'static str, value: &str, max: usize) -> Result<(), ConfigError> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !value.is_empty()
        && value.len() <= max
        && value.chars().all(|c| alnum(c) || c == '-')
        && value.starts_with(alnum)
        && value.ends_with(alnum);
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!(
                "is {value:?}; use lowercase letters, digits and '-', starting and ending with a \
                 letter or digit, at most {max} bytes"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AppConfig {
        AppConfig {
            name: "greeter".into(),
            namespace: "fleet-app".into(),
            image: "localhost/fleet-demo:v1".into(),
            pull_policy: PullPolicy::Never,
            greeting: "hello from the fleet".into(),
            port: 8080,
        }
    }

    #[test]
    fn renders_the_greeting_into_the_payload_env() {
        let payload = config().payload().expect("valid");
        payload.validate().expect("a payload the operator accepts");
        let ReconcileScore::PodmanV0(podman) = payload else {
            panic!("the greeter's payload is PodmanV0");
        };
        let web = &podman.services[0];
        assert_eq!(web.env["GREETING"], "hello from the fleet");
        assert_eq!(web.env["PORT"], "8080");
        assert_eq!(web.ports[0].host_port, 8080);
        assert_eq!(web.pull_policy, PullPolicy::Never);
    }

    #[test]
    fn the_digest_follows_the_config() {
        let a = config().render().expect("valid");
        let mut other = config();
        other.greeting = "bye".into();
        let b = other.render().expect("valid");
        assert_eq!(a.digest, config().render().expect("valid").digest);
        assert_ne!(a.digest, b.digest);
        assert_eq!(a.digest.len(), 12);
    }

    #[test]
    fn a_bad_field_is_named() {
        type Breaker = fn(&mut AppConfig);
        let cases: [(Breaker, &str); 5] = [
            (|c| c.name = "Greeter".into(), "name"),
            (|c| c.namespace = String::new(), "namespace"),
            (|c| c.image = "a b".into(), "image"),
            (|c| c.greeting = "two\nlines".into(), "greeting"),
            (|c| c.port = 0, "port"),
        ];
        for (break_it, field) in cases {
            let mut c = config();
            break_it(&mut c);
            let err = c.payload().expect_err(field);
            assert_eq!(err.field, field, "{err}");
            assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
        }
    }
}
