use super::*;

#[tokio::test]
async fn seeded_fleet_has_mixed_states() {
    let mock = MockFleetService::new();
    let page = mock.list_devices(&DeviceQuery::default()).await.unwrap();
    assert_eq!(page.devices.len(), 10);
    let overview = mock.overview().await.unwrap();
    assert_eq!(overview.offline_total, 2);
    assert_eq!(overview.devices_blacklisted, 1);
    assert_eq!(overview.deployments_total, 7);
    let attention: Vec<(String, Vec<&str>)> = overview
        .attention
        .iter()
        .map(|d| {
            (
                format!("{}/{}", d.id.namespace, d.id.name),
                d.attention.iter().map(|a| a.reason.as_str()).collect(),
            )
        })
        .collect();
    let expected: Vec<(String, Vec<&str>)> = vec![
        ("apps/kiosk".into(), vec!["NoMatchingDevices"]),
        ("apps/telemetry".into(), vec!["DevicesOffline"]),
        ("apps/web".into(), vec!["DevicesOffline"]),
        ("infra/edge-proxy".into(), vec!["DevicesOffline"]),
        ("lab/web".into(), vec!["NameConflict"]),
        (
            "vision/camera".into(),
            vec![
                "FailureCriteriaExceeded",
                "DevicesFailing",
                "DevicesOffline",
            ],
        ),
        ("vision/thermal".into(), vec!["InvalidScore"]),
    ];
    assert_eq!(attention, expected);
}

#[tokio::test]
async fn mock_shell_echoes_and_runs_lines() {
    let mock = MockFleetService::new();
    let mut shell = mock.open_shell(&id("pi-01"), 80, 24).await.unwrap();
    shell
        .input
        .send(ShellInput::Data("echo hi\r".into()))
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains("hi\r\n") || !seen.ends_with("$ ") {
        match shell.output.recv().await {
            Some(ShellEvent::Output(s)) => seen.push_str(&s),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(seen.contains("echo hi\r\nhi\r\n"), "{seen:?}");
}

#[tokio::test]
async fn offline_devices_refuse_commands() {
    let mock = MockFleetService::new();
    let err = mock.run_command(&id("pi-04"), "uptime").await.unwrap_err();
    assert!(matches!(err, ServiceError::Offline { .. }));
}
