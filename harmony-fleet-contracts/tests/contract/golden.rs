//! Golden tests: the literal names and JSON shapes of MISSION.md §5, written out in full.
//! A failure here means the wire contract changed: agents and operators in the field would no
//! longer understand each other. Change the contract on purpose (new payload variant, new
//! optional field), never by accident.

use std::collections::BTreeMap;

use harmony_fleet_contracts::buckets::{self, BucketSpec, Writer};
use harmony_fleet_contracts::commands::{
    CommandError, CommandReply, ErrorKind, ExecReply, ExecRequest, LogsReply, LogsRequest,
    PingReply, ServiceLogs, Verb,
};
use harmony_fleet_contracts::device::{AgentVersion, DeviceInfo, Inventory};
use harmony_fleet_contracts::heartbeat::{self, Heartbeat};
use harmony_fleet_contracts::keys;
use harmony_fleet_contracts::payload::{
    InitContainer, PodmanV0, PortMapping, Protocol, PullPolicy, ReconcileScore, RestartPolicy,
    Service, StopPolicy, StopSignal, VolumeMount,
};
use harmony_fleet_contracts::permissions::{
    device_inbox_prefix, device_permissions, operator_permissions,
};
use harmony_fleet_contracts::state::{DeploymentState, Phase};
use harmony_fleet_contracts::{
    ContentHash, DeploymentName, DesiredIndex, DeviceId, jetstream, notice,
};
use jiff::Timestamp;
use pretty_assertions::assert_eq;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn device() -> DeviceId {
    "pi-1".parse().expect("valid device id")
}

fn deployment() -> DeploymentName {
    "web".parse().expect("valid deployment name")
}

fn ts(s: &str) -> Timestamp {
    s.parse().expect("valid RFC 3339 timestamp")
}

/// `value` serialises to exactly `expected`, and `expected` deserialises back to `value`.
fn assert_json<T>(value: &T, expected: Value)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    assert_eq!(serde_json::to_value(value).expect("serialises"), expected);
    assert_eq!(
        &serde_json::from_value::<T>(expected).expect("expected JSON deserialises"),
        value
    );
}

#[test]
fn bucket_names_are_the_published_ones() {
    assert_eq!(buckets::DESIRED_STATE, "desired-state");
    assert_eq!(buckets::DEVICE_INFO, "device-info");
    assert_eq!(buckets::DEVICE_STATE, "device-state");
    assert_eq!(buckets::DEVICE_HEARTBEAT, "device-heartbeat");
    assert_eq!(
        buckets::ALL.map(|b| b.name),
        [
            "desired-state",
            "device-info",
            "device-state",
            "device-heartbeat"
        ]
    );
    assert_eq!(
        buckets::stream_name(buckets::DEVICE_STATE),
        "KV_device-state"
    );
}

/// name, writer, key format, history, value size, direct, rollup, keys per device.
type PinnedSpec = (
    &'static str,
    Writer,
    &'static str,
    i64,
    i32,
    bool,
    bool,
    u32,
    i32,
);

#[test]
fn bucket_specs_are_pinned() {
    let summary: Vec<PinnedSpec> = buckets::ALL
        .iter()
        .map(|s: &BucketSpec| {
            (
                s.name,
                s.writer,
                s.key_format,
                s.history,
                s.max_value_size,
                s.allow_direct,
                s.allow_rollup,
                s.keys_per_device,
                s.budget_value_size,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "desired-state",
                Writer::Operator,
                "<device>.<deployment>",
                1,
                262_144,
                true,
                true,
                0,
                0
            ),
            (
                "device-info",
                Writer::Agent,
                "info.<device>",
                1,
                65_536,
                true,
                false,
                1,
                4096
            ),
            (
                "device-state",
                Writer::Agent,
                "state.<device>.<deployment>",
                1,
                16_384,
                true,
                false,
                64,
                1024
            ),
            (
                "device-heartbeat",
                Writer::Agent,
                "heartbeat.<device>",
                1,
                256,
                true,
                false,
                1,
                256
            ),
        ]
    );
}

#[test]
fn key_formats_are_the_published_ones() {
    let (d, n) = (device(), deployment());
    assert_eq!(keys::desired_key(&d, &n), "pi-1.web");
    assert_eq!(keys::info_key(&d), "info.pi-1");
    assert_eq!(keys::state_key(&d, &n), "state.pi-1.web");
    assert_eq!(keys::heartbeat_key(&d), "heartbeat.pi-1");
    assert_eq!(
        buckets::kv_subject(buckets::DEVICE_STATE, &keys::state_key(&d, &n)),
        "$KV.device-state.state.pi-1.web"
    );
}

#[test]
fn notice_subject_and_index_are_pinned() {
    assert_eq!(notice::NOTIFY_PREFIX, "desired-notify");
    assert_eq!(notice::notify_subject(&device()), "desired-notify.pi-1");
    assert_eq!(notice::NOTIFY_ALL, "desired-notify.*");
    assert_eq!(notice::index_key(&device()), "pi-1");
    let mut index = DesiredIndex::default();
    index
        .deployments
        .insert(deployment(), ContentHash::of_bytes(b"{}"));
    assert_json(
        &index,
        json!({"deployments": {
            "web": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        }}),
    );
    assert_eq!(
        String::from_utf8(index.to_bytes()).unwrap(),
        r#"{"deployments":{"web":"44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}}"#
    );
}

#[test]
fn watch_patterns_are_pinned() {
    let d = device();
    assert_eq!(keys::desired_device_pattern(&d), "pi-1.>");
    assert_eq!(keys::state_device_pattern(&d), "state.pi-1.>");
    assert_eq!(keys::DESIRED_ALL, ">");
    assert_eq!(keys::INFO_ALL, "info.*");
    assert_eq!(keys::STATE_ALL, "state.>");
    assert_eq!(keys::HEARTBEAT_ALL, "heartbeat.*");
    assert_eq!(
        jetstream::desired_watch_filter(&d),
        "$KV.desired-state.pi-1.>"
    );
}

#[test]
fn command_subjects_and_verbs_are_the_published_ones() {
    let d = device();
    assert_eq!(
        Verb::ALL.map(Verb::as_str),
        ["ping", "exec", "logs", "logs-stream", "shell"]
    );
    assert_eq!(
        keys::command_subject(&d, Verb::Ping),
        "device-commands.pi-1.ping"
    );
    assert_eq!(
        keys::command_subject(&d, Verb::Exec),
        "device-commands.pi-1.exec"
    );
    assert_eq!(
        keys::command_subject(&d, Verb::Logs),
        "device-commands.pi-1.logs"
    );
    assert_eq!(keys::command_serve_pattern(&d), "device-commands.pi-1.>");
    assert_eq!(keys::COMMANDS_ALL, "device-commands.>");
    assert_eq!(device_inbox_prefix(&d), "_INBOX_pi-1");
}

fn full_payload() -> ReconcileScore {
    let mut web = Service::new("web", "docker.io/library/nginx:1.27");
    web.command = vec!["/docker-entrypoint.sh".into()];
    web.args = vec!["nginx".into(), "-g".into(), "daemon off;".into()];
    web.env = BTreeMap::from([
        ("TZ".to_owned(), "UTC".to_owned()),
        ("LOG_LEVEL".to_owned(), "info".to_owned()),
    ]);
    web.ports = vec![
        PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: None,
        },
        PortMapping {
            host_port: 5353,
            container_port: 53,
            protocol: Protocol::Udp,
            host_ip: Some("127.0.0.1".parse().expect("valid IP")),
        },
    ];
    web.volumes = vec![
        VolumeMount {
            source: "web-data".into(),
            target: "/usr/share/nginx/html".into(),
            read_only: true,
        },
        VolumeMount {
            source: "/srv/certs".into(),
            target: "/etc/certs".into(),
            read_only: false,
        },
    ];
    web.restart_policy = RestartPolicy::OnFailure;
    web.pull_policy = PullPolicy::Always;

    let mut migrate = InitContainer::new("migrate", "registry.example.com/tools:2");
    migrate.command = vec!["sh".into(), "-c".into()];
    migrate.args = vec!["migrate up".into()];
    migrate.env = BTreeMap::from([("DB".to_owned(), "/data/db".to_owned())]);
    migrate.volumes = vec![VolumeMount {
        source: "web-data".into(),
        target: "/data".into(),
        read_only: false,
    }];
    migrate.pull_policy = PullPolicy::Never;
    migrate.timeout_seconds = 120;

    ReconcileScore::PodmanV0(PodmanV0 {
        services: vec![web, Service::new("sidecar", "busybox:1.36")],
        init_containers: vec![migrate],
        stop_policy: StopPolicy {
            signal: StopSignal::Quit,
            grace_seconds: 10,
        },
    })
}

#[test]
fn full_podman_payload_has_the_published_shape() {
    let expected = json!({
        "type": "PodmanV0",
        "data": {
            "services": [
                {
                    "name": "web",
                    "image": "docker.io/library/nginx:1.27",
                    "command": ["/docker-entrypoint.sh"],
                    "args": ["nginx", "-g", "daemon off;"],
                    "env": {"LOG_LEVEL": "info", "TZ": "UTC"},
                    "ports": [
                        {"hostPort": 8080, "containerPort": 80},
                        {"hostPort": 5353, "containerPort": 53, "protocol": "UDP",
                         "hostIp": "127.0.0.1"}
                    ],
                    "volumes": [
                        {"source": "web-data", "target": "/usr/share/nginx/html",
                         "readOnly": true},
                        {"source": "/srv/certs", "target": "/etc/certs"}
                    ],
                    "restartPolicy": "OnFailure",
                    "pullPolicy": "Always"
                },
                {"name": "sidecar", "image": "busybox:1.36"}
            ],
            "initContainers": [
                {
                    "name": "migrate",
                    "image": "registry.example.com/tools:2",
                    "command": ["sh", "-c"],
                    "args": ["migrate up"],
                    "env": {"DB": "/data/db"},
                    "volumes": [{"source": "web-data", "target": "/data"}],
                    "pullPolicy": "Never",
                    "timeoutSeconds": 120
                }
            ],
            "stopPolicy": {"signal": "SIGQUIT", "graceSeconds": 10}
        }
    });
    let score = full_payload();
    assert_eq!(score.validate(), Ok(()));
    assert_json(&score, expected);
}

#[test]
fn full_podman_payload_canonical_bytes_and_hash_are_pinned() {
    let score = full_payload();
    let canonical = String::from_utf8(score.to_canonical_json().unwrap()).unwrap();
    let expected = concat!(
        r#"{"data":{"initContainers":[{"args":["migrate up"],"command":["sh","-c"],"#,
        r#""env":{"DB":"/data/db"},"image":"registry.example.com/tools:2","name":"migrate","#,
        r#""pullPolicy":"Never","timeoutSeconds":120,"#,
        r#""volumes":[{"source":"web-data","target":"/data"}]}],"#,
        r#""services":[{"args":["nginx","-g","daemon off;"],"command":["/docker-entrypoint.sh"],"#,
        r#""env":{"LOG_LEVEL":"info","TZ":"UTC"},"image":"docker.io/library/nginx:1.27","#,
        r#""name":"web","ports":[{"containerPort":80,"hostPort":8080},"#,
        r#"{"containerPort":53,"hostIp":"127.0.0.1","hostPort":5353,"protocol":"UDP"}],"#,
        r#""pullPolicy":"Always","restartPolicy":"OnFailure","#,
        r#""volumes":[{"readOnly":true,"source":"web-data","target":"/usr/share/nginx/html"},"#,
        r#"{"source":"/srv/certs","target":"/etc/certs"}]},"#,
        r#"{"image":"busybox:1.36","name":"sidecar"}],"#,
        r#""stopPolicy":{"graceSeconds":10,"signal":"SIGQUIT"}},"type":"PodmanV0"}"#,
    );
    assert_eq!(canonical, expected);
    assert_eq!(
        score.content_hash().unwrap(),
        ContentHash::of_bytes(expected.as_bytes())
    );
    assert_eq!(
        &*score.content_hash().unwrap().hex(),
        FULL_PAYLOAD_HASH,
        "the canonical encoding changed: every agent would restart its containers"
    );
}

const FULL_PAYLOAD_HASH: &str = "7792b647a4926990ef578eb5cb000853e4f3b270bd6f3852471cc1e4b7d48986";

#[test]
fn minimal_payload_omits_every_default() {
    let score = ReconcileScore::PodmanV0(PodmanV0::new(vec![Service::new("web", "nginx:1.27")]));
    assert_json(
        &score,
        json!({"type": "PodmanV0", "data": {"services": [{"name": "web", "image": "nginx:1.27"}]}}),
    );
    assert_eq!(
        String::from_utf8(score.to_canonical_json().unwrap()).unwrap(),
        r#"{"data":{"services":[{"image":"nginx:1.27","name":"web"}]},"type":"PodmanV0"}"#
    );
}

#[test]
fn defaults_are_filled_in_when_absent() {
    let score: ReconcileScore = serde_json::from_value(json!({
        "type": "PodmanV0",
        "data": {
            "services": [{"name": "web", "image": "nginx", "ports": [{"hostPort": 80, "containerPort": 80}]}],
            "initContainers": [{"name": "init", "image": "busybox"}]
        }
    }))
    .unwrap();
    let ReconcileScore::PodmanV0(p) = score else {
        panic!("not PodmanV0")
    };
    assert_eq!(p.services[0].pull_policy, PullPolicy::IfNotPresent);
    assert_eq!(p.services[0].restart_policy, RestartPolicy::Always);
    assert_eq!(p.services[0].ports[0].protocol, Protocol::Tcp);
    assert_eq!(p.init_containers[0].timeout_seconds, 300);
    assert_eq!(p.stop_policy.signal, StopSignal::Term);
    assert_eq!(p.stop_policy.grace_seconds, 30);
}

#[test]
fn unknown_fields_from_a_newer_operator_are_ignored() {
    let score: ReconcileScore = serde_json::from_value(json!({
        "type": "PodmanV0",
        "data": {"services": [{"name": "web", "image": "nginx", "cpuLimit": "500m"}], "future": 1}
    }))
    .unwrap();
    assert_eq!(score.validate(), Ok(()));
}

#[test]
fn deployment_state_has_the_published_shape() {
    let mut state = DeploymentState::new(Phase::Running, ts("2026-11-26T10:00:00Z"));
    state.payload_hash = Some(ContentHash::of_bytes(b"payload"));
    state.desired_revision = Some(42);
    state.set_last_error("image pull failed: timeout");
    state.container_ids = BTreeMap::from([("web".to_owned(), "3f2a9c".to_owned())]);
    assert_json(
        &state,
        json!({
            "phase": "Running",
            "payloadHash": "239f59ed55e737c77147cf55ad0c1b030b6d7ee748a7426952f9b852d5a935e5",
            "desiredRevision": 42,
            "lastError": "image pull failed: timeout",
            "containerIds": {"web": "3f2a9c"},
            "lastChange": "2026-11-26T10:00:00Z"
        }),
    );
    assert_json(
        &DeploymentState::new(Phase::Pending, ts("2026-11-26T10:00:00Z")),
        json!({"phase": "Pending", "lastChange": "2026-11-26T10:00:00Z"}),
    );
}

#[test]
fn phase_names_are_pinned() {
    let names: Vec<Value> = [
        Phase::Pending,
        Phase::Running,
        Phase::Failed,
        Phase::Removed,
    ]
    .iter()
    .map(|p| serde_json::to_value(p).unwrap())
    .collect();
    assert_eq!(
        names,
        [
            json!("Pending"),
            json!("Running"),
            json!("Failed"),
            json!("Removed")
        ]
    );
}

#[test]
fn device_info_has_the_published_shape() {
    let info = DeviceInfo {
        device_id: device(),
        labels: BTreeMap::from([
            ("site".to_owned(), "plant-3".to_owned()),
            ("fleet.nationtech.io/role".to_owned(), "edge".to_owned()),
        ]),
        inventory: Inventory {
            hostname: "pi-1.plant-3.local".into(),
            arch: "aarch64".into(),
            os: "linux".into(),
            os_release: Some("Debian GNU/Linux 12 (bookworm)".into()),
            kernel_version: Some("6.6.51+rpt-rpi-2712".into()),
            cpu_count: 4,
            memory_bytes: 8_589_934_592,
        },
        agent_version: AgentVersion::new("0.1.0").unwrap(),
        boot_time: Some(ts("2026-11-26T08:00:00Z")),
        observed_at: ts("2026-11-26T10:00:00.5Z"),
    };
    assert_eq!(info.validate(), Ok(()));
    assert_json(
        &info,
        json!({
            "deviceId": "pi-1",
            "labels": {"fleet.nationtech.io/role": "edge", "site": "plant-3"},
            "inventory": {
                "hostname": "pi-1.plant-3.local",
                "arch": "aarch64",
                "os": "linux",
                "osRelease": "Debian GNU/Linux 12 (bookworm)",
                "kernelVersion": "6.6.51+rpt-rpi-2712",
                "cpuCount": 4,
                "memoryBytes": 8_589_934_592_u64
            },
            "agentVersion": "0.1.0",
            "bootTime": "2026-11-26T08:00:00Z",
            "observedAt": "2026-11-26T10:00:00.5Z"
        }),
    );
}

#[test]
fn heartbeat_has_the_published_shape() {
    let hb = Heartbeat {
        timestamp_ms: 1_764_151_200_000,
        agent_version: AgentVersion::new("0.1.0").unwrap(),
    };
    assert_json(
        &hb,
        json!({"timestampMs": 1_764_151_200_000_u64, "agentVersion": "0.1.0"}),
    );
}

#[test]
fn worst_case_heartbeat_is_under_96_bytes() {
    let hb = Heartbeat {
        timestamp_ms: u64::MAX,
        agent_version: AgentVersion::new("9".repeat(32)).unwrap(),
    };
    let bytes = serde_json::to_vec(&hb).unwrap();
    assert!(
        bytes.len() < heartbeat::MAX_SERIALIZED_LEN,
        "{} bytes: {}",
        bytes.len(),
        String::from_utf8_lossy(&bytes)
    );
    // The longest version is the cap: one more character is refused.
    assert!(AgentVersion::new("9".repeat(33)).is_err());
}

#[test]
fn command_requests_have_the_published_shape() {
    assert_json(
        &ExecRequest {
            command: "uptime".into(),
            deadline_ms: Some(5_000),
            max_output_bytes: Some(4_096),
        },
        json!({"command": "uptime", "deadlineMs": 5000, "maxOutputBytes": 4096}),
    );
    assert_json(&ExecRequest::new("df -h"), json!({"command": "df -h"}));
    assert_json(
        &LogsRequest {
            deployment: deployment(),
            service: Some("nginx".into()),
            tail_lines: Some(50),
        },
        json!({"deployment": "web", "service": "nginx", "tailLines": 50}),
    );
    assert_json(
        &LogsRequest::new(deployment()),
        json!({"deployment": "web"}),
    );
}

#[test]
fn command_replies_have_the_published_shape() {
    assert_json(
        &CommandReply::Result(PingReply {
            device_id: device(),
            agent_version: AgentVersion::new("0.1.0").unwrap(),
            uptime_seconds: 3600,
        }),
        json!({"result": {"deviceId": "pi-1", "agentVersion": "0.1.0", "uptimeSeconds": 3600}}),
    );
    assert_json(
        &CommandReply::Result(ExecReply {
            exit_code: Some(0),
            stdout: "up 3 days\n".into(),
            stderr: String::new(),
            truncated: false,
            timed_out: false,
            duration_ms: 12,
        }),
        json!({"result": {"exitCode": 0, "stdout": "up 3 days\n", "stderr": "",
                          "truncated": false, "timedOut": false, "durationMs": 12}}),
    );
    assert_json(
        &CommandReply::Result(LogsReply {
            services: vec![ServiceLogs {
                service: "nginx".into(),
                container_id: Some("3f2a9c".into()),
                lines: vec!["started".into()],
            }],
            truncated: true,
        }),
        json!({"result": {"services": [{"service": "nginx", "containerId": "3f2a9c",
                                        "lines": ["started"]}], "truncated": true}}),
    );
    assert_json(
        &CommandReply::<ExecReply>::Error(CommandError::new(
            ErrorKind::NotFound,
            "no deployment named web",
        )),
        json!({"error": {"kind": "NotFound", "message": "no deployment named web"}}),
    );
}

#[test]
fn error_kind_names_are_pinned() {
    let kinds = [
        ErrorKind::BadRequest,
        ErrorKind::NotFound,
        ErrorKind::Timeout,
        ErrorKind::Runtime,
        ErrorKind::Unsupported,
    ]
    .map(|k| serde_json::to_value(k).unwrap());
    assert_eq!(
        kinds,
        [
            json!("BadRequest"),
            json!("NotFound"),
            json!("Timeout"),
            json!("Runtime"),
            json!("Unsupported")
        ]
    );
}

#[test]
fn device_permission_template_is_pinned() {
    assert_eq!(
        serde_json::to_value(device_permissions(&device())).unwrap(),
        json!({
            "publish": {"allow": [
                "$KV.device-info.info.pi-1",
                "$KV.device-state.state.pi-1.>",
                "$KV.device-heartbeat.heartbeat.pi-1",
                "$JS.API.DIRECT.GET.KV_desired-state.$KV.desired-state.pi-1",
                "$JS.API.DIRECT.GET.KV_desired-state.$KV.desired-state.pi-1.>",
                "$JS.API.DIRECT.GET.KV_device-info.$KV.device-info.info.pi-1",
                "$JS.API.DIRECT.GET.KV_device-state.$KV.device-state.state.pi-1.>",
                "$JS.API.DIRECT.GET.KV_device-heartbeat.$KV.device-heartbeat.heartbeat.pi-1",
                "device-identity.pi-1.renew",
                "$JS.API.DIRECT.GET.OBJ_agent-binaries.$O.agent-binaries.M.>",
                "$JS.API.DIRECT.GET.OBJ_agent-binaries"
            ]},
            "subscribe": {"allow": [
                "_INBOX_pi-1.>",
                "device-commands.pi-1.>",
                "desired-notify.pi-1"
            ]},
            "allow_responses": true
        })
    );
}

#[test]
fn identity_names_are_pinned() {
    use harmony_fleet_contracts::identity::{
        BOOTSTRAP_INBOX_PREFIX, ENROLL_SUBJECT, RENEW_ALL, renew_subject,
    };
    assert_eq!(ENROLL_SUBJECT, "device-enroll");
    assert_eq!(BOOTSTRAP_INBOX_PREFIX, "_ENROLL_INBOX");
    assert_eq!(renew_subject(&device()), "device-identity.pi-1.renew");
    assert_eq!(RENEW_ALL, "device-identity.*.renew");
    assert_eq!(
        serde_json::to_value(harmony_fleet_contracts::identity::bootstrap_permissions()).unwrap(),
        json!({
            "publish": {"allow": ["device-enroll"]},
            "subscribe": {"allow": ["_ENROLL_INBOX.>"]}
        })
    );
}

#[test]
fn operator_permission_template_covers_buckets_and_commands() {
    let op = operator_permissions();
    for bucket in buckets::ALL.map(|b| b.name) {
        for subject in [
            format!("$KV.{bucket}.any.key"),
            format!("$JS.API.STREAM.CREATE.KV_{bucket}"),
            format!("$JS.API.STREAM.INFO.KV_{bucket}"),
            format!("$JS.API.CONSUMER.CREATE.KV_{bucket}"),
            format!("$JS.API.CONSUMER.CREATE.KV_{bucket}.c1.$KV.{bucket}.>"),
            format!("$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.a.b"),
        ] {
            assert!(op.allows_publish(&subject), "{subject}");
        }
        assert!(!op.allows_publish(&format!("$JS.API.STREAM.DELETE.KV_{bucket}")));
    }
    // Its own object store (adr/0052): write, read back, replace.
    for subject in [
        "$O.fleet-operator.C.abc",
        "$O.fleet-operator.M.cmVwb3J0cw==",
        "$JS.API.STREAM.CREATE.OBJ_fleet-operator",
        "$JS.API.STREAM.PURGE.OBJ_fleet-operator",
        "$JS.API.DIRECT.GET.OBJ_fleet-operator.$O.fleet-operator.M.cmVwb3J0cw==",
        "$JS.API.CONSUMER.CREATE.OBJ_fleet-operator",
        "$JS.FC.OBJ_fleet-operator.x.y",
    ] {
        assert!(op.allows_publish(subject), "{subject}");
    }
    assert!(op.allows_publish("device-commands.pi-1.exec"));
    assert!(op.allows_subscribe("_INBOX.abc.*"));
    assert!(!op.allows_subscribe("_INBOX_pi-1.>"));
    assert!(!op.allows_publish("$KV.other-bucket.x"));
}

#[test]
fn enroll_request_has_the_published_shape_and_the_token_is_optional() {
    use harmony_fleet_contracts::bootstrap_token::{self, BootstrapToken};
    use harmony_fleet_contracts::identity::EnrollRequest;
    let inventory = json!({
        "hostname": "pi", "arch": "aarch64", "os": "linux", "cpuCount": 4, "memoryBytes": 1024
    });
    let old = json!({
        "deviceId": "pi-1",
        "publicKey": "UABC",
        "inventory": inventory,
        "requestedAt": 1_800_000_000,
        "signature": "c2ln"
    });
    // A request from an agent that predates tokens still parses, and writes back unchanged.
    let request: EnrollRequest = serde_json::from_value(old.clone()).expect("old request parses");
    assert_eq!(request.bootstrap_token, None);
    assert_json(&request, old.clone());

    let mut with_token = old;
    with_token["bootstrapToken"] = json!("abc123.0123456789abcdef");
    let token: BootstrapToken = "abc123.0123456789abcdef".parse().expect("token");
    let request = request.with_bootstrap_token(Some(token));
    assert_json(&request, with_token);
    // The token is not signed: the signed input is the one operators without tokens verify.
    assert_eq!(
        request.signing_input(),
        "harmony-fleet-enroll:pi-1:UABC:1800000000"
    );

    assert_eq!(
        bootstrap_token::SECRET_TYPE,
        "bootstrap.fleet.nationtech.io/token"
    );
    assert_eq!(
        bootstrap_token::SECRET_NAME_PREFIX,
        "fleet-bootstrap-token-"
    );
    assert_eq!(
        [
            bootstrap_token::data_keys::TOKEN_ID,
            bootstrap_token::data_keys::TOKEN_SECRET,
            bootstrap_token::data_keys::EXPIRATION,
            bootstrap_token::data_keys::USAGE_LIMIT,
            bootstrap_token::data_keys::USAGES,
        ],
        [
            "token-id",
            "token-secret",
            "expiration",
            "usage-limit",
            "usages"
        ]
    );
    assert_eq!(
        bootstrap_token::APPROVED_BY_ANNOTATION,
        "fleet.nationtech.io/approved-by-token"
    );
}

#[test]
fn enroll_replies_have_the_published_shape_and_blacklisted_is_additive() {
    use harmony_fleet_contracts::identity::EnrollReply;
    assert_eq!(
        serde_json::to_value(EnrollReply::refused("no")).expect("json"),
        json!({"status": "refused", "reason": "no"}),
        "a plain refusal is the shape older agents read"
    );
    assert_eq!(
        serde_json::to_value(EnrollReply::Refused {
            reason: "blacklisted".into(),
            blacklisted: true,
        })
        .expect("json"),
        json!({"status": "refused", "reason": "blacklisted", "blacklisted": true})
    );
    // From an operator that predates the field: not blacklisted.
    let old: EnrollReply =
        serde_json::from_value(json!({"status": "refused", "reason": "no"})).expect("parse");
    assert_eq!(old, EnrollReply::refused("no"));
    assert_eq!(
        serde_json::to_value(EnrollReply::Pending {
            message: "wait".into()
        })
        .expect("json"),
        json!({"status": "pending", "message": "wait"})
    );
    assert_eq!(
        serde_json::to_value(EnrollReply::Issued {
            jwt: "e.y.j".into()
        })
        .expect("json"),
        json!({"status": "issued", "jwt": "e.y.j"})
    );
}
