//! Property tests: keys round-trip for every valid id, every class of invalid id is refused
//! both by `FromStr` and at the serde boundary, and canonical bytes depend only on the value.

use harmony_fleet_contracts::commands::Verb;
use harmony_fleet_contracts::keys::{
    self, CommandSubject, DesiredKey, HeartbeatKey, InfoKey, StateKey,
};
use harmony_fleet_contracts::payload::{
    InitContainer, PodmanV0, PortMapping, Protocol, ReconcileScore, Service, VolumeMount,
};
use harmony_fleet_contracts::subject;
use harmony_fleet_contracts::{DeploymentName, DeviceId, IdError};
use proptest::prelude::*;
use proptest::sample::select;

pub fn device_id() -> impl Strategy<Value = DeviceId> {
    "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
        .prop_map(|s| s.parse().expect("regex yields valid device ids"))
}

pub fn deployment_name() -> impl Strategy<Value = DeploymentName> {
    "[A-Za-z0-9][A-Za-z0-9_-]{0,252}"
        .prop_map(|s| s.parse().expect("regex yields valid deployment names"))
}

fn verb() -> impl Strategy<Value = Verb> {
    select(Verb::ALL.to_vec())
}

/// Inserts `bad` at a position of `base` chosen by `at`.
fn insert_at(base: &str, at: prop::sample::Index, bad: &str) -> String {
    let i = at.index(base.len() + 1);
    format!("{}{bad}{}", &base[..i], &base[i..])
}

/// A character from a class that no id accepts anywhere.
fn forbidden_everywhere() -> impl Strategy<Value = &'static str> {
    select(vec![
        ".", "*", ">", " ", "\t", "\n", "\u{a0}", "é", "中", "🙂", "/", ":", "$", "\u{0}",
    ])
}

/// Decodes `value` as a JSON string into `T` (the serde boundary).
fn via_serde<T: serde::de::DeserializeOwned>(value: &str) -> Result<T, serde_json::Error> {
    serde_json::from_value(serde_json::Value::String(value.to_owned()))
}

fn assert_device_id_rejected(value: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        value.parse::<DeviceId>().is_err(),
        "FromStr accepted {value:?}"
    );
    prop_assert!(
        DeviceId::try_from(value.to_owned()).is_err(),
        "TryFrom accepted {value:?}"
    );
    prop_assert!(
        via_serde::<DeviceId>(value).is_err(),
        "Deserialize accepted {value:?}"
    );
    Ok(())
}

fn assert_deployment_name_rejected(value: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        value.parse::<DeploymentName>().is_err(),
        "FromStr accepted {value:?}"
    );
    prop_assert!(
        DeploymentName::try_from(value.to_owned()).is_err(),
        "TryFrom accepted {value:?}"
    );
    prop_assert!(
        via_serde::<DeploymentName>(value).is_err(),
        "Deserialize accepted {value:?}"
    );
    Ok(())
}

proptest! {
    #[test]
    fn valid_ids_survive_serde_and_display(d in device_id(), n in deployment_name()) {
        let d2: DeviceId = via_serde(d.as_str()).unwrap();
        prop_assert_eq!(&d2, &d);
        prop_assert_eq!(d.to_string().parse::<DeviceId>().unwrap(), d);
        let n2: DeploymentName = via_serde(n.as_str()).unwrap();
        prop_assert_eq!(&n2, &n);
        prop_assert_eq!(n.to_string().parse::<DeploymentName>().unwrap(), n);
    }

    #[test]
    fn every_key_round_trips(d in device_id(), n in deployment_name(), v in verb()) {
        let desired = keys::desired_key(&d, &n);
        prop_assert_eq!(DesiredKey::parse(&desired).unwrap(), DesiredKey::new(d.clone(), n.clone()));
        let info = keys::info_key(&d);
        prop_assert_eq!(InfoKey::parse(&info).unwrap(), InfoKey::new(d.clone()));
        let state = keys::state_key(&d, &n);
        prop_assert_eq!(StateKey::parse(&state).unwrap(), StateKey::new(d.clone(), n.clone()));
        let hb = keys::heartbeat_key(&d);
        prop_assert_eq!(HeartbeatKey::parse(&hb).unwrap(), HeartbeatKey::new(d.clone()));
        let cmd = keys::command_subject(&d, v);
        prop_assert_eq!(CommandSubject::parse(&cmd).unwrap(), CommandSubject::new(d.clone(), v));
    }

    #[test]
    fn keys_fall_under_their_watch_patterns(d in device_id(), n in deployment_name(), v in verb()) {
        prop_assert!(subject::matches(&keys::desired_device_pattern(&d), &keys::desired_key(&d, &n)));
        prop_assert!(subject::matches(keys::DESIRED_ALL, &keys::desired_key(&d, &n)));
        prop_assert!(subject::matches(keys::INFO_ALL, &keys::info_key(&d)));
        prop_assert!(subject::matches(keys::STATE_ALL, &keys::state_key(&d, &n)));
        prop_assert!(subject::matches(&keys::state_device_pattern(&d), &keys::state_key(&d, &n)));
        prop_assert!(subject::matches(keys::HEARTBEAT_ALL, &keys::heartbeat_key(&d)));
        prop_assert!(subject::matches(&keys::command_serve_pattern(&d), &keys::command_subject(&d, v)));
        prop_assert!(subject::matches(keys::COMMANDS_ALL, &keys::command_subject(&d, v)));
    }

    #[test]
    fn a_device_watch_never_sees_another_devices_keys(
        a in device_id(), b in device_id(), n in deployment_name(),
    ) {
        prop_assume!(a != b);
        prop_assert!(!subject::matches(&keys::desired_device_pattern(&a), &keys::desired_key(&b, &n)));
        prop_assert!(!subject::matches(&keys::state_device_pattern(&a), &keys::state_key(&b, &n)));
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_input(s in ".{0,80}") {
        let _ = DesiredKey::parse(&s);
        let _ = InfoKey::parse(&s);
        let _ = StateKey::parse(&s);
        let _ = HeartbeatKey::parse(&s);
        let _ = CommandSubject::parse(&s);
    }

    #[test]
    fn rejects_device_id_with_uppercase(d in device_id(), at in any::<prop::sample::Index>(), c in "[A-Z]") {
        assert_device_id_rejected(&insert_at(d.as_str(), at, &c))?;
    }

    #[test]
    fn rejects_ids_with_dot_wildcard_whitespace_or_non_ascii(
        d in device_id(), n in deployment_name(),
        at in any::<prop::sample::Index>(), bad in forbidden_everywhere(),
    ) {
        assert_device_id_rejected(&insert_at(d.as_str(), at, bad))?;
        assert_deployment_name_rejected(&insert_at(n.as_str(), at, bad))?;
    }

    #[test]
    fn rejects_device_id_with_underscore(d in device_id(), at in any::<prop::sample::Index>()) {
        assert_device_id_rejected(&insert_at(d.as_str(), at, "_"))?;
    }

    #[test]
    fn rejects_too_long_ids(d in "[a-z0-9]{64,200}", n in "[a-z0-9]{254,400}") {
        assert_device_id_rejected(&d)?;
        assert_deployment_name_rejected(&n)?;
        let device_too_long = matches!(d.parse::<DeviceId>(), Err(IdError::TooLong { .. }));
        let deployment_too_long =
            matches!(n.parse::<DeploymentName>(), Err(IdError::TooLong { .. }));
        prop_assert!(device_too_long && deployment_too_long);
    }

    #[test]
    fn rejects_leading_or_trailing_dash(d in "[a-z0-9]{1,40}", n in "[a-z0-9]{1,40}") {
        assert_device_id_rejected(&format!("-{d}"))?;
        assert_device_id_rejected(&format!("{d}-"))?;
        assert_deployment_name_rejected(&format!("-{n}"))?;
        assert_deployment_name_rejected(&format!("_{n}"))?;
    }

    #[test]
    fn canonical_bytes_depend_only_on_the_value(score in payload()) {
        let bytes = score.to_canonical_json().unwrap();
        // Same value again: same bytes.
        prop_assert_eq!(&score.clone().to_canonical_json().unwrap(), &bytes);
        // Through a differently formatted JSON text and back: same bytes, same hash.
        let pretty = serde_json::to_string_pretty(&serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()).unwrap();
        let back: ReconcileScore = serde_json::from_str(&pretty).unwrap();
        prop_assert_eq!(&back, &score);
        prop_assert_eq!(&back.to_canonical_json().unwrap(), &bytes);
        prop_assert_eq!(back.content_hash().unwrap(), score.content_hash().unwrap());
    }

    #[test]
    fn env_written_in_any_order_gives_sorted_bytes(env in prop::collection::btree_map("[A-Z_]{1,8}", ".{0,8}", 0..8)) {
        // The same env written by a user in ascending and in descending key order (as JSON
        // text, the way it reaches the operator), each checked against bytes spelled out here
        // with the keys sorted, not against another run of the encoder.
        let ascending: Vec<(&String, &String)> = env.iter().collect();
        let descending: Vec<(&String, &String)> = env.iter().rev().collect();
        let entries = |pairs: &[(&String, &String)]| {
            pairs
                .iter()
                .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), serde_json::to_string(v).unwrap()))
                .collect::<Vec<_>>()
                .join(",")
        };
        let written = |pairs: &[(&String, &String)]| {
            format!(
                r#"{{"type": "PodmanV0", "data": {{"services": [{{"name": "web", "image": "nginx", "env": {{{}}}}}]}}}}"#,
                entries(pairs)
            )
        };
        let expected = if env.is_empty() {
            r#"{"data":{"services":[{"image":"nginx","name":"web"}]},"type":"PodmanV0"}"#.to_owned()
        } else {
            format!(
                r#"{{"data":{{"services":[{{"env":{{{}}},"image":"nginx","name":"web"}}]}},"type":"PodmanV0"}}"#,
                entries(&ascending)
            )
        };
        for pairs in [&ascending, &descending] {
            let score: ReconcileScore = serde_json::from_str(&written(pairs)).unwrap();
            let bytes = String::from_utf8(score.to_canonical_json().unwrap()).unwrap();
            prop_assert_eq!(&bytes, &expected);
        }
    }

    #[test]
    fn wildcard_patterns_match_their_instances(tokens in prop::collection::vec("[a-z0-9$_-]{1,6}", 1..6), star in any::<prop::sample::Index>()) {
        let literal = tokens.join(".");
        let mut pattern = tokens.clone();
        pattern[star.index(tokens.len())] = "*".to_owned();
        prop_assert!(subject::matches(&pattern.join("."), &literal));
        let cut = star.index(tokens.len());
        let prefix = tokens[..cut].iter().map(String::as_str).chain([">"]).collect::<Vec<_>>().join(".");
        prop_assert!(subject::matches(&prefix, &literal));
        let longer_full = format!("{literal}.>");
        let longer_one = format!("{literal}.*");
        prop_assert!(!subject::matches(&longer_full, &literal));
        prop_assert!(!subject::matches(&longer_one, &literal));
    }
}

fn service() -> impl Strategy<Value = Service> {
    (
        "[a-z][a-z0-9-]{0,10}[a-z0-9]",
        "[a-z./:0-9-]{1,30}",
        prop::collection::vec(".{0,10}", 0..3),
        prop::collection::btree_map("[A-Z_]{1,8}", ".{0,12}", 0..4),
        prop::collection::vec((1u32..65_536, 1u32..65_536, any::<bool>()), 0..3),
        any::<bool>(),
    )
        .prop_map(|(name, image, args, env, ports, ro)| {
            let mut s = Service::new(name, image);
            s.args = args;
            s.env = env;
            s.ports = ports
                .into_iter()
                .map(|(host_port, container_port, udp)| PortMapping {
                    host_port,
                    container_port,
                    protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
                    host_ip: None,
                })
                .collect();
            s.volumes = vec![VolumeMount {
                source: "data".into(),
                target: "/data".into(),
                read_only: ro,
            }];
            s
        })
}

fn payload() -> impl Strategy<Value = ReconcileScore> {
    (
        prop::collection::vec(service(), 1..4),
        prop::option::of(1u32..1000),
        0u32..100,
    )
        .prop_map(|(services, init_timeout, grace)| {
            let mut p = PodmanV0::new(services);
            if let Some(timeout) = init_timeout {
                let mut init = InitContainer::new("init", "busybox");
                init.timeout_seconds = timeout;
                p.init_containers.push(init);
            }
            p.stop_policy.grace_seconds = grace;
            ReconcileScore::PodmanV0(p)
        })
}

#[test]
fn env_in_reverse_order_gives_these_bytes() {
    let expected = r#"{"data":{"services":[{"env":{"ALPHA":"1","MID":"2","ZED":"3"},"image":"nginx","name":"web"}]},"type":"PodmanV0"}"#;
    for text in [
        r#"{"type":"PodmanV0","data":{"services":[{"name":"web","image":"nginx","env":{"ZED":"3","MID":"2","ALPHA":"1"}}]}}"#,
        r#"{"type":"PodmanV0","data":{"services":[{"name":"web","image":"nginx","env":{"ALPHA":"1","ZED":"3","MID":"2"}}]}}"#,
    ] {
        let score: ReconcileScore = serde_json::from_str(text).expect("valid payload");
        let bytes = score.to_canonical_json().expect("encodes");
        assert_eq!(
            String::from_utf8(bytes).expect("utf-8"),
            expected,
            "from {text}"
        );
    }
}
