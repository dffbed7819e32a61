//! What an `AgentV0` deployment asks of this binary: pure, from what the binary is and the
//! markers on disk.

use harmony_fleet_contracts::payload::AgentV0;

use super::{FailedMarker, Pending};

/// The facts the decision needs.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// This binary's architecture (`std::env::consts::ARCH`).
    pub arch: &'a str,
    /// This binary's SHA-256.
    pub own_sha: &'a str,
    /// Whether systemd runs it.
    pub under_systemd: bool,
    /// `pending.json`, if any.
    pub pending: Option<&'a Pending>,
    /// `failed.json`, if any.
    pub failed: Option<&'a FailedMarker>,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// This binary is the wanted build.
    Running,
    /// This binary is the wanted build, installed and waiting for its first heartbeat.
    AwaitConfirm,
    /// Cannot upgrade: the reason, for `lastError`.
    Failed(String),
    /// Download, self-test and swap in this build.
    Install {
        /// The build's SHA-256.
        sha256: String,
        /// The version it must report.
        version: String,
    },
}

/// Decide what `desired` asks of this binary.
pub fn plan(desired: &AgentV0, facts: Facts<'_>) -> Decision {
    let Some(wanted) = desired.binaries.get(facts.arch) else {
        let given: Vec<&str> = desired.binaries.keys().map(String::as_str).collect();
        return Decision::Failed(format!(
            "no agent build for this device's architecture {}: the deployment names builds \
             for {}; publish a {} build and add it to binaries",
            facts.arch,
            given.join(", "),
            facts.arch
        ));
    };
    let on_probation = facts
        .pending
        .is_some_and(|pending| pending.to_sha == facts.own_sha);
    if wanted == facts.own_sha {
        return if on_probation {
            Decision::AwaitConfirm
        } else {
            Decision::Running
        };
    }
    if on_probation {
        // Installing now would make this unconfirmed binary the `previous` one: finish the
        // probation first.
        return Decision::AwaitConfirm;
    }
    if let Some(failed) = facts.failed
        && &failed.to_sha == wanted
    {
        return Decision::Failed(failed.reason.clone());
    }
    if !facts.under_systemd {
        return Decision::Failed(
            "self-upgrade needs the agent to run as a systemd service (Host target, which \
             installs the unit with its upgrade guard); this agent was not started by systemd \
             (no INVOCATION_ID)"
                .to_owned(),
        );
    }
    Decision::Install {
        sha256: wanted.clone(),
        version: desired.version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const OWN: &str = "aa";
    const NEW: &str = "bb";

    fn desired() -> AgentV0 {
        AgentV0 {
            version: "0.1.1".into(),
            binaries: BTreeMap::from([("x86_64".into(), NEW.into()), ("arm".into(), "cc".into())]),
            heartbeat_deadline_seconds: 60,
        }
    }

    fn facts<'a>(own: &'a str) -> Facts<'a> {
        Facts {
            arch: "x86_64",
            own_sha: own,
            under_systemd: true,
            pending: None,
            failed: None,
        }
    }

    fn pending(to: &str) -> Pending {
        Pending {
            deployment: "agent".parse().expect("name"),
            binary_path: "/usr/local/bin/fleet-agent".into(),
            from_sha: OWN.into(),
            from_version: "0.1.0".into(),
            to_sha: to.into(),
            to_version: "0.1.1".into(),
            deadline_unix: 100,
            heartbeat_deadline_seconds: 60,
            starts: 1,
        }
    }

    fn failed(to: &str) -> FailedMarker {
        FailedMarker {
            deployment: "agent".parse().expect("name"),
            to_sha: to.into(),
            to_version: "0.1.1".into(),
            from_version: "0.1.0".into(),
            reason: "did not heartbeat".into(),
        }
    }

    #[test]
    fn the_wanted_build_is_running() {
        assert_eq!(plan(&desired(), facts(NEW)), Decision::Running);
        // Not under systemd does not matter when nothing has to change.
        let facts = Facts {
            under_systemd: false,
            ..facts(NEW)
        };
        assert_eq!(plan(&desired(), facts), Decision::Running);
    }

    #[test]
    fn another_build_is_installed() {
        assert_eq!(
            plan(&desired(), facts(OWN)),
            Decision::Install {
                sha256: NEW.into(),
                version: "0.1.1".into()
            }
        );
    }

    #[test]
    fn a_missing_architecture_names_it_and_the_ones_given() {
        let facts = Facts {
            arch: "riscv64",
            ..facts(OWN)
        };
        let Decision::Failed(reason) = plan(&desired(), facts) else {
            panic!("expected Failed");
        };
        assert!(reason.contains("riscv64"), "{reason}");
        assert!(reason.contains("arm, x86_64"), "{reason}");
    }

    #[test]
    fn without_systemd_there_is_no_upgrade() {
        let facts = Facts {
            under_systemd: false,
            ..facts(OWN)
        };
        let Decision::Failed(reason) = plan(&desired(), facts) else {
            panic!("expected Failed");
        };
        assert!(reason.contains("systemd service (Host target"), "{reason}");
    }

    #[test]
    fn a_reverted_build_is_not_tried_again_but_another_is() {
        let marker = failed(NEW);
        let facts = Facts {
            failed: Some(&marker),
            ..facts(OWN)
        };
        assert_eq!(
            plan(&desired(), facts),
            Decision::Failed("did not heartbeat".into())
        );
        let other = failed("dd");
        let facts = Facts {
            failed: Some(&other),
            ..facts
        };
        assert!(matches!(plan(&desired(), facts), Decision::Install { .. }));
    }

    #[test]
    fn the_new_build_on_probation_awaits_its_confirmation() {
        let marker = pending(NEW);
        let facts = Facts {
            pending: Some(&marker),
            ..facts(NEW)
        };
        assert_eq!(plan(&desired(), facts), Decision::AwaitConfirm);
        // Another build is installed only once this one is confirmed.
        let mut third = desired();
        third.binaries.insert("x86_64".into(), "ee".into());
        assert_eq!(plan(&third, facts), Decision::AwaitConfirm);
        // A pending marker for another build does not concern the running one.
        let other = pending("dd");
        let facts = Facts {
            pending: Some(&other),
            ..facts
        };
        assert_eq!(plan(&desired(), facts), Decision::Running);
    }
}
