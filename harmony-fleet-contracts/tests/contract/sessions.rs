//! Golden tests of the session protocol (`logs-stream`, `shell`): the literal JSON of every
//! request and reply, and the proof that sessions need no permission beyond the command
//! subjects every device template already has.

use harmony_fleet_contracts::commands::{CommandReply, Verb};
use harmony_fleet_contracts::keys;
use harmony_fleet_contracts::permissions::{device_permissions, operator_permissions};
use harmony_fleet_contracts::sessions::{
    LogChunk, LogLine, LogsStreamRequest, SessionAck, SessionId, SessionOpened, ShellChunk,
    ShellRequest,
};
use harmony_fleet_contracts::{DeploymentName, DeviceId};
use pretty_assertions::assert_eq;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn session() -> SessionId {
    "s-0001".parse().expect("valid session id")
}

fn assert_json<T>(value: &T, expected: Value)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    assert_eq!(serde_json::to_value(value).expect("serialises"), expected);
    let back: T = serde_json::from_value(expected).expect("deserialises");
    assert_eq!(&back, value);
}

#[test]
fn session_verbs_keep_their_published_subjects() {
    let device: DeviceId = "pi-1".parse().unwrap();
    assert_eq!(
        keys::command_subject(&device, Verb::LogsStream),
        "device-commands.pi-1.logs-stream"
    );
    assert_eq!(
        keys::command_subject(&device, Verb::Shell),
        "device-commands.pi-1.shell"
    );
}

#[test]
fn sessions_need_no_permission_beyond_the_command_subjects() {
    let device: DeviceId = "pi-1".parse().unwrap();
    let perms = device_permissions(&device);
    let operator = operator_permissions();
    for verb in [Verb::LogsStream, Verb::Shell] {
        let subject = keys::command_subject(&device, verb);
        assert!(perms.allows_subscribe(&subject), "{subject}");
        assert!(operator.allows_publish(&subject), "{subject}");
        let other = keys::command_subject(&"pi-2".parse().unwrap(), verb);
        assert!(!perms.allows_subscribe(&other), "{other}");
    }
    // Every session reply is a reply to a request: covered by allow_responses.
    assert!(perms.allow_responses);
}

#[test]
fn logs_stream_requests_have_the_published_shape() {
    let deployment: DeploymentName = "web".parse().unwrap();
    assert_json(
        &LogsStreamRequest::Open {
            deployment: deployment.clone(),
            service: Some("nginx".into()),
            tail_lines: Some(20),
        },
        json!({"op": "open", "deployment": "web", "service": "nginx", "tailLines": 20}),
    );
    assert_json(
        &LogsStreamRequest::Open {
            deployment,
            service: None,
            tail_lines: None,
        },
        json!({"op": "open", "deployment": "web"}),
    );
    assert_json(
        &LogsStreamRequest::Poll {
            session: session(),
            wait_ms: Some(2000),
        },
        json!({"op": "poll", "session": "s-0001", "waitMs": 2000}),
    );
    assert_json(
        &LogsStreamRequest::Close { session: session() },
        json!({"op": "close", "session": "s-0001"}),
    );
}

#[test]
fn shell_requests_have_the_published_shape() {
    assert_json(
        &ShellRequest::Open { cols: 80, rows: 24 },
        json!({"op": "open", "cols": 80, "rows": 24}),
    );
    assert_json(
        &ShellRequest::Input {
            session: session(),
            data: "echo hi\r".into(),
        },
        json!({"op": "input", "session": "s-0001", "data": "echo hi\r"}),
    );
    assert_json(
        &ShellRequest::Resize {
            session: session(),
            cols: 120,
            rows: 40,
        },
        json!({"op": "resize", "session": "s-0001", "cols": 120, "rows": 40}),
    );
    assert_json(
        &ShellRequest::Poll {
            session: session(),
            wait_ms: None,
        },
        json!({"op": "poll", "session": "s-0001"}),
    );
    assert_json(
        &ShellRequest::Close { session: session() },
        json!({"op": "close", "session": "s-0001"}),
    );
}

#[test]
fn session_replies_have_the_published_shape() {
    assert_json(
        &CommandReply::Result(SessionOpened { session: session() }),
        json!({"result": {"session": "s-0001"}}),
    );
    assert_json(&CommandReply::Result(SessionAck {}), json!({"result": {}}));
    assert_json(
        &CommandReply::Result(LogChunk {
            lines: vec![LogLine {
                service: "nginx".into(),
                line: "GET / 200".into(),
            }],
            dropped: true,
            ended: false,
        }),
        json!({"result": {"lines": [{"service": "nginx", "line": "GET / 200"}], "dropped": true}}),
    );
    assert_json(
        &CommandReply::Result(ShellChunk {
            data: "hi\r\n".into(),
            dropped: false,
            ended: true,
            exit_code: Some(0),
        }),
        json!({"result": {"data": "hi\r\n", "ended": true, "exitCode": 0}}),
    );
}

#[test]
fn unknown_ops_are_rejected_not_ignored() {
    assert!(serde_json::from_value::<ShellRequest>(json!({"op": "reboot"})).is_err());
    assert!(
        serde_json::from_value::<LogsStreamRequest>(json!({"op": "poll", "session": "a.b"}))
            .is_err()
    );
}
