//! The Podman handle against the real podman (runc, the project's containers.conf): the demo
//! image is built from busybox-static, runs, answers its version over HTTP on a mapped port, and
//! its containers are found and removed by label.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use harmony::local::podman::{DEMO_IMAGE_PORT, PortMapping, RunSpec};
use harmony::local::{Podman, ports, probe};

const DEADLINE: Duration = Duration::from_secs(60);
const LABEL: &str = "harmony.nationtech.io/test";

#[tokio::test]
async fn demo_image_answers_its_version_on_a_mapped_port_and_is_removed_by_label() {
    let podman = Podman::new().expect("containers.conf installed by scripts/install-deps.sh");
    let tag = "v1.2.3-test";
    let image = podman
        .build_demo_image(tag)
        .await
        .expect("build the demo image");
    assert_eq!(image, format!("localhost/fleet-demo:{tag}"));
    // Idempotent: a second build finds the image and changes nothing.
    assert_eq!(podman.build_demo_image(tag).await.expect("rebuild"), image);
    assert!(podman.image_exists(&image).await.expect("image exists"));

    let run_id = format!("demo-{}", std::process::id());
    let host_port = ports::free_port().expect("port");
    let id = podman
        .run(&RunSpec {
            name: Some(run_id.clone()),
            image: image.clone(),
            labels: vec![(LABEL.to_owned(), run_id.clone())],
            ports: vec![PortMapping {
                host: host_port,
                container: DEMO_IMAGE_PORT,
            }],
            ..RunSpec::default()
        })
        .await
        .expect("podman run");
    assert!(!id.is_empty());

    let listed = podman.ps_by_label(LABEL, &run_id).await.expect("ps");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].names, vec![run_id.clone()]);

    let addr = SocketAddr::from(([127, 0, 0, 1], host_port));
    let deadline = Instant::now() + DEADLINE;
    let body = loop {
        match probe::http_get(addr, "/", Duration::from_secs(2)).await {
            Ok(response) if response.status == 200 => break response.body,
            other => {
                assert!(Instant::now() < deadline, "no HTTP answer: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(body, tag);

    // The serve script exits on SIGTERM, so a 10 s grace is never used up.
    let started = Instant::now();
    let removed = podman.rm_by_label(LABEL, &run_id, 10).await.expect("rm");
    assert_eq!(removed, vec![id]);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "graceful stop took {:?}",
        started.elapsed()
    );
    assert!(
        podman
            .ps_by_label(LABEL, &run_id)
            .await
            .expect("ps")
            .is_empty()
    );
}

#[tokio::test]
async fn a_failing_podman_command_reports_its_stderr() {
    let podman = Podman::new().expect("containers.conf");
    let err = podman
        .run(&RunSpec {
            image: "localhost/fleet-demo:does-not-exist-anywhere".into(),
            ..RunSpec::default()
        })
        .await
        .expect_err("no such image, and no registry");
    let message = err.to_string();
    assert!(message.contains("podman run"), "{message}");
    assert!(message.contains("does-not-exist-anywhere"), "{message}");
}
