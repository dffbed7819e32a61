//! The seeded fleet the mock serves (`serve-web --mock`, the dashboard's tests).

use super::*;

impl MockFleetService {
    /// The seeded fleet: 10 devices (7 online, 2 offline, 1 blacklisted; 2 failing) and 7
    /// deployments (`web` complete, `telemetry` progressing in waves, `camera` paused after
    /// failures, `edge-proxy` complete all at once; `vision/thermal` refused with
    /// `InvalidScore`, `lab/web` refused with `NameConflict`, `apps/kiosk` matching no device).
    pub fn new() -> Self {
        let now = Timestamp::now();
        let ago = |secs: i64| now - SignedDuration::from_secs(secs);
        let mut devices = BTreeMap::new();
        let specs: [(&str, &str, &str, bool, i64, bool, &str); 10] = [
            ("pi-01", "plant-3", "line-a", true, 4, false, "aarch64"),
            ("pi-02", "plant-3", "line-a", true, 7, false, "aarch64"),
            ("pi-03", "plant-3", "line-b", true, 2, false, "aarch64"),
            ("pi-04", "plant-3", "line-b", false, 3_600, false, "aarch64"),
            ("pi-05", "plant-7", "line-a", true, 11, false, "aarch64"),
            ("pi-06", "plant-7", "line-a", true, 5, true, "aarch64"),
            ("pi-07", "plant-7", "line-b", true, 9, false, "aarch64"),
            (
                "pi-08",
                "plant-7",
                "line-b",
                false,
                86_400 * 2,
                false,
                "aarch64",
            ),
            ("vm-01", "lab", "ci", true, 1, false, "x86_64"),
            ("vm-02", "lab", "ci", true, 3, false, "x86_64"),
        ];
        for (name, site, line, online, seen, blacklisted, arch) in specs {
            let labels = BTreeMap::from([
                ("site".to_owned(), site.to_owned()),
                ("line".to_owned(), line.to_owned()),
                ("arch".to_owned(), arch.to_owned()),
            ]);
            let mut runs = Vec::new();
            if site == "plant-3" {
                runs.push(("web".to_owned(), Phase::Running, None, true));
                let camera = match name {
                    "pi-02" | "pi-03" => (
                        Phase::Failed,
                        Some(
                            "image registry.local/camera:2.1 not found: manifest unknown"
                                .to_owned(),
                        ),
                    ),
                    _ => (Phase::Running, None),
                };
                runs.push(("camera".to_owned(), camera.0, camera.1, name != "pi-04"));
            }
            if site == "plant-7" {
                let (phase, on_target) = match name {
                    "pi-05" => (Phase::Running, true),
                    "pi-07" => (Phase::Pending, true),
                    _ => (Phase::Running, false),
                };
                runs.push(("telemetry".to_owned(), phase, None, on_target));
            }
            if site != "lab" || name == "vm-01" {
                runs.push(("edge-proxy".to_owned(), Phase::Running, None, true));
            }
            let held = if blacklisted {
                std::mem::take(&mut runs)
            } else {
                Vec::new()
            };
            let device = MockDevice {
                id: id(name),
                labels,
                online,
                last_seen: ago(seen),
                blacklisted,
                arch,
                runs,
                held,
            };
            devices.insert(device.id.clone(), device);
        }
        let deployment = |ns: &str,
                          name: &str,
                          selector: &str,
                          images: &[&str],
                          rollout: RolloutView,
                          waves: Vec<(String, WaveState)>,
                          services: &[&str]| MockDeployment {
            summary: DeploymentSummary {
                id: DeploymentRef {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                },
                matched: 0,
                succeeded: 0,
                failed: 0,
                pending: 0,
                offline: 0,
                rollout: Some(rollout),
                last_error: None,
                attention: Vec::new(),
                images: images.iter().map(|s| (*s).to_owned()).collect(),
                selector: selector.to_owned(),
            },
            waves,
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            conditions: Vec::new(),
            serving: true,
        };
        let rollout =
            |phase: RolloutPhase, reason: Option<&str>, current: u32, total: u32, rev: &str| {
                RolloutView {
                    phase,
                    reason: reason.map(str::to_owned),
                    current_batch: current,
                    total_batches: total,
                    updated: 0,
                    revision: rev.to_owned(),
                }
            };
        let mut deployments = vec![
            deployment(
                "apps",
                "web",
                "site=plant-3",
                &["registry.local/web:1.4.2"],
                rollout(RolloutPhase::Complete, None, 1, 1, "sha256:7d1e0c4a"),
                vec![("every device".into(), WaveState::Done)],
                &["nginx", "app"],
            ),
            deployment(
                "apps",
                "telemetry",
                "site=plant-7",
                &["registry.local/telemetry:0.9.0"],
                rollout(RolloutPhase::Progressing, None, 2, 3, "sha256:51b2aa90"),
                vec![
                    ("1 device".into(), WaveState::Done),
                    ("50%".into(), WaveState::Active),
                    ("the rest".into(), WaveState::Waiting),
                ],
                &["collector"],
            ),
            deployment(
                "vision",
                "camera",
                "site=plant-3",
                &["registry.local/camera:2.1"],
                rollout(
                    RolloutPhase::Paused,
                    Some("2 of 3 completed devices failed (67% > maxFailedPercent 0%)"),
                    1,
                    2,
                    "sha256:c0ffee12",
                ),
                vec![
                    ("line=line-b".into(), WaveState::Active),
                    ("the rest".into(), WaveState::Waiting),
                ],
                &["camera"],
            ),
            deployment(
                "infra",
                "edge-proxy",
                "site In (plant-3, plant-7), or vm-01",
                &["registry.local/edge-proxy:3.0.1"],
                rollout(RolloutPhase::Complete, None, 1, 1, "sha256:ab12cd34"),
                vec![("every device".into(), WaveState::Done)],
                &["proxy"],
            ),
        ];
        if let Some(camera) = deployments
            .iter_mut()
            .find(|d| d.summary.id.name == "camera")
        {
            camera.conditions.push((
                "Paused",
                true,
                "FailureCriteriaExceeded",
                "2 of 3 completed devices failed (67% > maxFailedPercent 0%)".into(),
            ));
        }
        let refused =
            |ns: &str, name: &str, selector: &str, reason: &'static str, message: String| {
                let mut d = deployment(
                    ns,
                    name,
                    selector,
                    &[],
                    RolloutView::default(),
                    Vec::new(),
                    &[],
                );
                d.summary.rollout = None;
                d.serving = false;
                d.conditions.push(("Ready", false, reason, message));
                d
            };
        deployments.push(refused(
            "vision",
            "thermal",
            "site=plant-3",
            "InvalidScore",
            "spec.score is invalid: services[0].image must not be empty".into(),
        ));
        deployments.push(refused(
            "lab",
            "web",
            "site=lab",
            "NameConflict",
            "deployment name `web` is already used by namespace `apps`: names are fleet-wide \
             (they become desired-state keys); rename this one"
                .into(),
        ));
        let mut kiosk = deployment(
            "apps",
            "kiosk",
            "site=plant-9",
            &["registry.local/kiosk:1.0"],
            rollout(RolloutPhase::Complete, None, 1, 1, "sha256:0badcafe"),
            vec![("every device".into(), WaveState::Done)],
            &["kiosk"],
        );
        kiosk.conditions.push((
            "Ready",
            true,
            "NoMatchingDevices",
            "no device matches targetSelector".into(),
        ));
        deployments.push(kiosk);
        Self {
            state: Mutex::new(MockState {
                devices,
                deployments,
            }),
            log_interval: Self::LOG_INTERVAL,
            audit: Mutex::new(Vec::new()),
        }
    }
}
