//! What needs attention (overview and deployments, read from the mock's operator-shaped
//! statuses) and the devices page's server-side filters and pages.

use axum::body::Body;
use axum::http::{Request, StatusCode};

use super::{get, router, send};

#[tokio::test]
async fn overview_names_every_deployment_needing_attention_with_reason_and_message() {
    let reply = get(router(), "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(!reply.body.contains("Nothing needs attention"));
    for needle in [
        r#"data-deployment="vision/thermal""#,
        r#"data-attention="InvalidScore""#,
        "spec.score is invalid: services[0].image must not be empty",
        r#"data-attention="NameConflict""#,
        "deployment name `web` is already used by namespace `apps`",
        r#"data-attention="NoMatchingDevices""#,
        "no device matches targetSelector",
        r#"data-attention="FailureCriteriaExceeded""#,
        r#"data-attention="DevicesFailing""#,
        "2 devices failed; latest: pi-02: image registry.local/camera:2.1 not found",
        r#"data-attention="DevicesOffline""#,
        r#"href="/devices/pi-03""#,
    ] {
        assert!(reply.body.contains(needle), "overview misses {needle}");
    }
}

#[tokio::test]
async fn deployment_rows_say_why_instead_of_no_status_yet() {
    let reply = get(router(), "/deployments").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(!reply.body.contains("no status yet"), "{}", reply.body);
    for needle in [
        "InvalidScore",
        "spec.score is invalid",
        "NameConflict",
        "rename this one",
        "NoMatchingDevices",
        "no device matches targetSelector",
    ] {
        assert!(
            reply.body.contains(needle),
            "deployments page misses {needle}"
        );
    }
    let reply = get(router(), "/deployments/apps/kiosk").await;
    assert!(reply.body.contains("0 / 0"));
    assert!(reply.body.contains("no device matches targetSelector"));
    let reply = get(router(), "/deployments/vision/thermal").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains("services[0].image must not be empty"));
}

fn rows(body: &str) -> Vec<String> {
    body.match_indices(r#"<tr id="device-"#)
        .map(|(i, _)| {
            let rest = &body[i + r#"<tr id="device-"#.len()..];
            rest[..rest.find('"').unwrap_or(0)].to_owned()
        })
        .collect()
}

#[tokio::test]
async fn devices_are_paged_on_the_server_with_links_that_keep_the_filters() {
    let reply = get(router(), "/devices?per_page=3&page=2&label=arch%3Daarch64").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(rows(&reply.body), ["pi-04", "pi-05", "pi-06"]);
    assert!(
        reply
            .body
            .contains("8 matching device(s), 4–6 shown (page 2 of 3)")
    );
    assert!(reply.body.contains(r#"aria-label="Previous page""#));
    assert!(reply.body.contains(r#"aria-label="Next page""#));
    // Links keep the filters and ask HTMX to replace only the results.
    assert!(
        reply.body.contains(
            r#"hx-get="/devices?label=arch%3Daarch64&amp;status=&amp;q=&amp;page=3&amp;per_page=3""#
        ),
        "{}",
        reply.body
    );
    // Past the end: the last page.
    let reply = get(router(), "/devices?per_page=3&page=99").await;
    assert_eq!(rows(&reply.body), ["vm-02"]);
    // Garbage page numbers are the first page, not a 400.
    let reply = get(router(), "/devices?page=abc&per_page=-1").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(rows(&reply.body).len(), 10);
}

#[tokio::test]
async fn free_text_selectors_and_status_filter_together_through_htmx() {
    let request =
        Request::get("/devices?q=PI-0&label=site!%3Dplant-3,line%20in%20(line-b)&status=online")
            .header("hx-request", "true")
            .header("hx-target", "device-results")
            .body(Body::empty())
            .expect("request");
    let reply = send(router(), request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(!reply.body.contains("<html"));
    assert_eq!(rows(&reply.body), ["pi-07"]);
    let reply = get(router(), "/devices?q=x86").await;
    assert_eq!(rows(&reply.body), ["vm-01", "vm-02"]);
}

#[tokio::test]
async fn a_bad_label_selector_says_what_to_write() {
    let reply = get(router(), "/devices?label=site%20in%20plant-3").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body.contains("<html"), "the page, with the message");
    assert!(reply.body.contains("write the values in parentheses"));
    assert!(rows(&reply.body).is_empty());
}
