//! Per-device isolation, checked from the contract: every subject the contract produces for
//! device A is allowed by A's template and refused by B's, and the subjects that would leak
//! other devices' data are refused to every device.

use harmony_fleet_contracts::buckets::{self, DESIRED_STATE, DEVICE_INFO, DEVICE_STATE};
use harmony_fleet_contracts::commands::Verb;
use harmony_fleet_contracts::keys;
use harmony_fleet_contracts::permissions::{
    Action, Permissions, Scope, agent_subject_uses, device_permissions, operator_permissions,
};
use harmony_fleet_contracts::{DeploymentName, DeviceId, jetstream, notice};
use proptest::prelude::*;

use super::properties::{deployment_name, device_id};

fn allows(perms: &Permissions, action: Action, subject: &str) -> bool {
    match action {
        Action::Publish => perms.allows_publish(subject),
        Action::Subscribe => perms.allows_subscribe(subject),
    }
}

/// Subjects no device may use: each would expose or alter other devices' data.
fn forbidden_to_devices(
    a: &DeviceId,
    other: &DeviceId,
    n: &DeploymentName,
) -> Vec<(Action, String)> {
    use Action::{Publish, Subscribe};
    vec![
        // Writing desired state is the operator's job, even for the device's own keys.
        (
            Publish,
            buckets::kv_subject(DESIRED_STATE, &keys::desired_key(a, n)),
        ),
        // Another device's reports.
        (
            Publish,
            buckets::kv_subject(DEVICE_STATE, &keys::state_key(other, n)),
        ),
        (
            Publish,
            buckets::kv_subject(DEVICE_INFO, &keys::info_key(other)),
        ),
        // Unnamed consumer: filter hidden in the payload.
        (
            Publish,
            jetstream::consumer_create_unfiltered(DESIRED_STATE),
        ),
        (Publish, jetstream::consumer_create_unfiltered(DEVICE_STATE)),
        // Named consumer with a filter wider than the device or naming another device.
        (
            Publish,
            jetstream::consumer_create(DESIRED_STATE, "c", "$KV.desired-state.>"),
        ),
        (
            Publish,
            jetstream::consumer_create(DESIRED_STATE, "c", "$KV.desired-state.*.web"),
        ),
        (
            Publish,
            jetstream::consumer_create(DESIRED_STATE, "c", &jetstream::desired_watch_filter(other)),
        ),
        (
            Publish,
            jetstream::consumer_create(DEVICE_STATE, "c", "$KV.device-state.>"),
        ),
        // Any consumer at all, even on its own keys: the body names the delivery subject.
        (
            Publish,
            jetstream::consumer_create(DESIRED_STATE, "c", &jetstream::desired_watch_filter(a)),
        ),
        (
            Publish,
            format!(
                "$JS.API.CONSUMER.DURABLE.CREATE.{}.c",
                buckets::stream_name(DESIRED_STATE)
            ),
        ),
        (Publish, jetstream::flow_control(DESIRED_STATE)),
        (Publish, jetstream::ack(DESIRED_STATE)),
        // Stream info lists keys (other devices' ids); names and list enumerate streams.
        (Publish, jetstream::stream_info(DESIRED_STATE)),
        (Publish, jetstream::stream_info(DEVICE_STATE)),
        (Publish, format!("{}.STREAM.NAMES", jetstream::API_PREFIX)),
        (Publish, format!("{}.STREAM.LIST", jetstream::API_PREFIX)),
        (Publish, format!("{}.INFO", jetstream::API_PREFIX)),
        // Another device's index, and notices (the operator's to send).
        (
            Publish,
            jetstream::direct_get(DESIRED_STATE, &notice::index_key(other)),
        ),
        (Publish, notice::notify_subject(a)),
        (Publish, notice::notify_subject(other)),
        (Subscribe, notice::notify_subject(other)),
        (Subscribe, notice::NOTIFY_ALL.to_owned()),
        // Reads whose subject is in the payload, or of other devices.
        (
            Publish,
            format!(
                "$JS.API.STREAM.MSG.GET.{}",
                buckets::stream_name(DESIRED_STATE)
            ),
        ),
        (
            Publish,
            format!("$JS.API.DIRECT.GET.{}", buckets::stream_name(DESIRED_STATE)),
        ),
        (Publish, jetstream::direct_get(DESIRED_STATE, ">")),
        (
            Publish,
            jetstream::direct_get(DESIRED_STATE, &keys::desired_key(other, n)),
        ),
        (
            Publish,
            jetstream::direct_get(DEVICE_STATE, keys::STATE_ALL),
        ),
        // Stream and consumer administration.
        (
            Publish,
            format!(
                "$JS.API.STREAM.PURGE.{}",
                buckets::stream_name(DEVICE_STATE)
            ),
        ),
        (
            Publish,
            format!(
                "$JS.API.STREAM.DELETE.{}",
                buckets::stream_name(DEVICE_STATE)
            ),
        ),
        (
            Publish,
            format!(
                "$JS.API.STREAM.UPDATE.{}",
                buckets::stream_name(DEVICE_STATE)
            ),
        ),
        (
            Publish,
            format!(
                "$JS.API.CONSUMER.DELETE.{}.c",
                buckets::stream_name(DESIRED_STATE)
            ),
        ),
        // Commands to devices, including itself.
        (Publish, keys::command_subject(a, Verb::Exec)),
        (Publish, keys::command_subject(other, Verb::Exec)),
        // Core subscriptions that would see other devices' traffic.
        (Subscribe, ">".to_owned()),
        (Subscribe, "$KV.>".to_owned()),
        (Subscribe, buckets::kv_subject(DESIRED_STATE, ">")),
        (
            Subscribe,
            buckets::kv_subject(DESIRED_STATE, &keys::desired_device_pattern(a)),
        ),
        (Subscribe, keys::COMMANDS_ALL.to_owned()),
        (Subscribe, keys::command_serve_pattern(other)),
        (Subscribe, "_INBOX.>".to_owned()),
        (Subscribe, "_INBOX.*.*".to_owned()),
        (Subscribe, "*.>".to_owned()),
    ]
}

proptest! {
    #[test]
    fn each_device_template_allows_its_own_subjects_and_refuses_the_others(
        a in device_id(), b in device_id(), n in deployment_name(),
        inbox in "[A-Za-z0-9]{22}",
    ) {
        prop_assume!(a != b);
        let perms_a = device_permissions(&a);
        let perms_b = device_permissions(&b);
        let operator = operator_permissions();
        for used in agent_subject_uses(&a, &n, &inbox) {
            prop_assert!(
                allows(&perms_a, used.action, &used.subject),
                "{}'s template refuses {:?} {} ({})", a, used.action, used.subject, used.purpose
            );
            match used.scope {
                Scope::Own => prop_assert!(
                    !allows(&perms_b, used.action, &used.subject),
                    "{}'s template allows {}'s {:?} {} ({})", b, a, used.action, used.subject, used.purpose
                ),
                Scope::Shared => prop_assert!(allows(&perms_b, used.action, &used.subject)),
            }
            // Everything a device publishes the operator may publish too (fleet-sim, repair),
            // except requests the operator itself serves.
            let served_by_operator = used.subject.starts_with(harmony_fleet_contracts::identity::IDENTITY_PREFIX);
            if used.action == Action::Publish && !served_by_operator {
                prop_assert!(operator.allows_publish(&used.subject), "operator refuses {}", used.subject);
            }
        }
    }

    #[test]
    fn every_device_template_entry_names_the_device_itself(a in device_id()) {
        // So no entry can name another device, or be shared by all of them, except reading
        // the agent builds every device may read (adr/0043).
        let perms = device_permissions(&a);
        let own_inbox = harmony_fleet_contracts::device_inbox_prefix(&a);
        let shared = [
            harmony_fleet_contracts::binaries::meta_direct_get_pattern(),
            harmony_fleet_contracts::binaries::chunk_direct_get(),
        ];
        for entry in perms.publish.allow.iter().chain(&perms.subscribe.allow) {
            let tokens: Vec<&str> = entry.split('.').collect();
            prop_assert!(
                tokens.contains(&a.as_str())
                    || tokens.first() == Some(&own_inbox.as_str())
                    || shared.contains(entry),
                "{} template entry {} does not name the device", a, entry
            );
        }
    }

    #[test]
    fn no_device_template_allows_subjects_that_reach_other_devices(
        a in device_id(), b in device_id(), n in deployment_name(),
    ) {
        prop_assume!(a != b);
        let perms_a = device_permissions(&a);
        for (action, subject) in forbidden_to_devices(&a, &b, &n) {
            prop_assert!(!allows(&perms_a, action, &subject), "{} may {:?} {}", a, action, subject);
        }
    }

    #[test]
    fn a_device_whose_id_prefixes_another_gets_nothing_of_it(
        a in "[a-z0-9]{1,20}", suffix in "[a-z0-9-]{0,20}[a-z0-9]", n in deployment_name(),
    ) {
        // `pi` vs `pi-1`: token matching, not string prefixes, must separate them.
        let short: DeviceId = a.parse().unwrap();
        let long: DeviceId = format!("{a}{suffix}").parse().unwrap();
        let perms = device_permissions(&short);
        for used in agent_subject_uses(&long, &n, "inbox") {
            if used.scope == Scope::Own {
                prop_assert!(!allows(&perms, used.action, &used.subject), "{} may {:?} {}", short, used.action, used.subject);
            }
        }
    }
}

#[test]
fn the_operator_may_command_every_device_and_read_every_bucket() {
    let operator = operator_permissions();
    let d: DeviceId = "pi-1".parse().unwrap();
    let n: DeploymentName = "web".parse().unwrap();
    for verb in Verb::ALL {
        assert!(operator.allows_publish(&keys::command_subject(&d, verb)));
    }
    assert!(operator.allows_publish(&buckets::kv_subject(
        DESIRED_STATE,
        &keys::desired_key(&d, &n)
    )));
    for pattern in [keys::STATE_ALL, keys::INFO_ALL, keys::HEARTBEAT_ALL] {
        let bucket = match pattern {
            keys::STATE_ALL => DEVICE_STATE,
            keys::INFO_ALL => DEVICE_INFO,
            _ => buckets::DEVICE_HEARTBEAT,
        };
        let filter = buckets::kv_subject(bucket, pattern);
        assert!(operator.allows_publish(&jetstream::consumer_create(bucket, "op", &filter)));
        assert!(operator.allows_publish(&jetstream::consumer_create_unfiltered(bucket)));
    }
}
