//! The audit trail of what people do to devices through the dashboard: every command run,
//! shell opened or closed, and blacklist change, with who did it and when.
//!
//! Each entry becomes a structured log line (target `audit`) and, with the real service, a
//! Kubernetes Event on the `Device` (`kubectl describe fleetdev <id>` shows it).

use harmony_fleet_contracts::ids::DeviceId;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::crd::device::Device;

/// What was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditAction {
    /// A command ran (`sh -c`).
    Exec,
    /// An interactive shell was opened.
    ShellOpened,
    /// An interactive shell was closed.
    ShellClosed,
    /// The device was blacklisted.
    Blacklisted,
    /// The device's blacklist was lifted.
    Released,
}

impl AuditAction {
    /// The Event reason (PascalCase).
    pub fn reason(self) -> &'static str {
        match self {
            AuditAction::Exec => "CommandRun",
            AuditAction::ShellOpened => "ShellOpened",
            AuditAction::ShellClosed => "ShellClosed",
            AuditAction::Blacklisted => "Blacklisted",
            AuditAction::Released => "BlacklistLifted",
        }
    }
}

/// One audited action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Who: the authenticated identity, or `local` with authentication off.
    pub who: String,
    /// When.
    pub at: Timestamp,
    /// On which device.
    pub device: DeviceId,
    /// What.
    pub action: AuditAction,
    /// The command, for [`AuditAction::Exec`]; empty otherwise.
    pub command: String,
}

impl AuditEntry {
    /// An entry stamped now.
    pub fn now(who: impl Into<String>, device: DeviceId, action: AuditAction) -> Self {
        Self {
            who: who.into(),
            at: Timestamp::now(),
            device,
            action,
            command: String::new(),
        }
    }

    /// With the command that ran.
    #[must_use]
    pub fn with_command(mut self, command: impl Into<String>) -> Self {
        self.command = command.into();
        self
    }

    /// The Event's note: who, and the command (cut to the Event's 1 kB limit).
    pub fn note(&self) -> String {
        let mut note = match self.action {
            AuditAction::Exec => format!("{} ran: {}", self.who, self.command),
            AuditAction::ShellOpened => format!("{} opened a shell", self.who),
            AuditAction::ShellClosed => format!("{} closed a shell", self.who),
            AuditAction::Blacklisted => format!("{} blacklisted the device", self.who),
            AuditAction::Released => format!("{} lifted the blacklist", self.who),
        };
        if note.len() > 1000 {
            let mut cut = 997;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
            note.push('…');
        }
        note
    }

    /// Writes the structured log line.
    pub fn log(&self) {
        tracing::info!(
            target: "audit",
            who = %self.who,
            at = %self.at,
            device = %self.device,
            action = self.action.reason(),
            command = %self.command,
            "dashboard action"
        );
    }
}

/// Publishes audit entries as Events on `Device` resources.
#[derive(Clone)]
pub struct EventAudit {
    recorder: Recorder,
}

impl std::fmt::Debug for EventAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventAudit")
    }
}

impl EventAudit {
    /// Events reported as the dashboard.
    pub fn new(client: kube::Client) -> Self {
        let reporter = Reporter {
            controller: "harmony-fleet-dashboard".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Logs `entry` and publishes it on the device's `Device` resource.
    pub async fn record(&self, entry: &AuditEntry) -> Result<(), kube::Error> {
        entry.log();
        let event = Event {
            type_: EventType::Normal,
            reason: entry.action.reason().into(),
            note: Some(entry.note()),
            action: entry.action.reason().into(),
            secondary: None,
        };
        self.recorder
            .publish(&event, &device_ref(&entry.device))
            .await
    }
}

/// A reference to the (cluster-scoped) `Device` named `device`.
fn device_ref(device: &DeviceId) -> ObjectReference {
    use kube::Resource;
    ObjectReference {
        api_version: Some(Device::api_version(&()).into_owned()),
        kind: Some(Device::kind(&()).into_owned()),
        name: Some(device.to_string()),
        ..ObjectReference::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_name_who_and_what_and_fit_an_event() {
        let device: DeviceId = "pi-1".parse().unwrap();
        let exec =
            AuditEntry::now("ops", device.clone(), AuditAction::Exec).with_command("uname -a");
        assert_eq!(exec.note(), "ops ran: uname -a");
        let long = AuditEntry::now("ops", device.clone(), AuditAction::Exec)
            .with_command("é".repeat(2000));
        assert!(long.note().len() <= 1000, "{}", long.note().len());
        assert_eq!(
            AuditEntry::now("local", device, AuditAction::Released).note(),
            "local lifted the blacklist"
        );
    }

    #[test]
    fn the_reference_names_the_device_resource() {
        let r = device_ref(&"pi-1".parse().unwrap());
        assert_eq!(r.kind.as_deref(), Some("Device"));
        assert_eq!(
            r.api_version.as_deref(),
            Some("fleet.nationtech.io/v1alpha1")
        );
        assert_eq!(r.namespace, None);
    }
}
