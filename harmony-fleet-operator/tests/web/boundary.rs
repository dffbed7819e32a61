//! The boundary every dashboard request crosses first: a foreign `Host` gets 421, a foreign
//! `Origin` or a missing CSRF token on a state-changing request (or the shell upgrade) gets
//! 403 — on every route, each with a positive control that the same request from the
//! dashboard's own page is answered.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};

use super::{CSRF, LISTEN, router, send};

/// One request per route of the dashboard, built for a given Host and Origin.
#[derive(Clone)]
struct Route {
    method: Method,
    path: &'static str,
    /// Form body of a POST.
    form: &'static str,
    /// The WebSocket handshake headers.
    upgrade: bool,
    /// What the route answers a request from the dashboard's own page (`oneshot` cannot
    /// complete a WebSocket upgrade: axum answers 426 without a real connection, after every
    /// check has passed).
    ok: StatusCode,
}

const fn get(path: &'static str, ok: StatusCode) -> Route {
    Route {
        method: Method::GET,
        path,
        form: "",
        upgrade: false,
        ok,
    }
}

const fn post(path: &'static str, form: &'static str, ok: StatusCode) -> Route {
    Route {
        method: Method::POST,
        path,
        form,
        upgrade: false,
        ok,
    }
}

/// Every route of `web::app`, as the dashboard's pages call them.
const ROUTES: &[Route] = &[
    get("/", StatusCode::OK),
    get("/devices", StatusCode::OK),
    get("/devices/pi-01", StatusCode::OK),
    post(
        "/devices/pi-01/blacklist",
        "blacklisted=true",
        StatusCode::OK,
    ),
    post("/devices/pi-01/exec", "command=id", StatusCode::OK),
    get("/devices/pi-01/logs/web", StatusCode::OK),
    get("/devices/pi-04/logs/web/stream", StatusCode::OK),
    Route {
        method: Method::GET,
        path: "/devices/pi-01/shell",
        form: "",
        upgrade: true,
        ok: StatusCode::UPGRADE_REQUIRED,
    },
    get("/deployments", StatusCode::OK),
    get("/deployments/apps/telemetry", StatusCode::OK),
    get("/assets/app.css", StatusCode::OK),
    get("/favicon.ico", StatusCode::NO_CONTENT),
    get("/_live-reload", StatusCode::NOT_FOUND),
    get("/login", StatusCode::OK),
    // Open auth: a token login is refused as wrong (401), after the boundary let it through.
    post("/login", "token=x", StatusCode::UNAUTHORIZED),
];

impl Route {
    fn changes_state(&self) -> bool {
        self.method == Method::POST || self.upgrade
    }

    fn request(&self, host: &str, origin: Option<&str>, csrf: Option<&str>) -> Request<Body> {
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(self.path)
            .header(header::HOST, host)
            .header("hx-request", "true");
        if let Some(origin) = origin {
            builder = builder.header(header::ORIGIN, origin);
        }
        if let Some(csrf) = csrf {
            builder = builder.header("x-csrf-token", csrf);
        }
        if self.upgrade {
            builder = builder
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, "websocket")
                .header(header::SEC_WEBSOCKET_VERSION, "13")
                .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==");
        }
        let body = if self.method == Method::POST {
            builder = builder.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            Body::from(self.form)
        } else {
            Body::empty()
        };
        builder.body(body).expect("request")
    }
}

fn own_origin() -> String {
    format!("http://{LISTEN}")
}

#[tokio::test]
async fn every_route_answers_the_dashboards_own_page() {
    for route in ROUTES {
        let origin = own_origin();
        let reply = send(router(), route.request(LISTEN, Some(&origin), Some(CSRF))).await;
        assert_eq!(reply.status, route.ok, "{} {}", route.method, route.path);
    }
}

#[tokio::test]
async fn every_route_refuses_a_foreign_host_with_421() {
    for host in ["evil.test:18080", "evil.test", "localhost.evil.test:18080"] {
        for route in ROUTES {
            // Even with the right token and an Origin matching the forged Host (a rebinding
            // page is same-origin with itself).
            let origin = format!("http://{host}");
            let reply = send(router(), route.request(host, Some(&origin), Some(CSRF))).await;
            assert_eq!(
                reply.status,
                StatusCode::MISDIRECTED_REQUEST,
                "{} {} with Host {host}",
                route.method,
                route.path
            );
            assert!(
                reply.body.contains("127.0.0.1:18080"),
                "the refusal says where the dashboard is: {}",
                reply.body
            );
        }
    }
}

#[tokio::test]
async fn loopback_names_on_another_port_are_answered_like_a_port_forward() {
    let reply = send(
        router(),
        get("/", StatusCode::OK).request("localhost:8080", None, None),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    // The page's own origin is then localhost:8080, and it may post.
    let route = &ROUTES[3];
    let reply = send(
        router(),
        route.request("localhost:8080", Some("http://localhost:8080"), Some(CSRF)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

#[tokio::test]
async fn every_state_changing_route_refuses_a_foreign_origin_with_403() {
    for origin in [
        "http://evil.test",
        "http://evil.test:18080",
        "http://localhost:3000",
        "null",
    ] {
        for route in ROUTES.iter().filter(|r| r.changes_state()) {
            let reply = send(router(), route.request(LISTEN, Some(origin), Some(CSRF))).await;
            assert_eq!(
                reply.status,
                StatusCode::FORBIDDEN,
                "{} {} from {origin}",
                route.method,
                route.path
            );
            assert!(reply.body.contains("origin"), "{}", reply.body);
        }
    }
    // Reading pages from a foreign origin is what browsers already prevent (CORS is off); the
    // Host check is what protects them.
    for route in ROUTES.iter().filter(|r| !r.changes_state()) {
        let reply = send(
            router(),
            route.request(LISTEN, Some("http://evil.test"), None),
        )
        .await;
        assert_eq!(reply.status, route.ok, "{} {}", route.method, route.path);
    }
}

#[tokio::test]
async fn cross_site_fetch_metadata_is_refused() {
    for route in ROUTES.iter().filter(|r| r.changes_state()) {
        let mut request = route.request(LISTEN, None, Some(CSRF));
        request
            .headers_mut()
            .insert("sec-fetch-site", "cross-site".parse().expect("header"));
        let reply = send(router(), request).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", route.path);
    }
}

#[tokio::test]
async fn state_changing_requests_need_the_csrf_token() {
    let origin = own_origin();
    for route in ROUTES.iter().filter(|r| r.method == Method::POST) {
        for token in [None, Some("stale-token"), Some("")] {
            let reply = send(router(), route.request(LISTEN, Some(&origin), token)).await;
            assert_eq!(
                reply.status,
                StatusCode::FORBIDDEN,
                "{} {} with token {token:?}",
                route.method,
                route.path
            );
            assert!(reply.body.contains("reload the page"), "{}", reply.body);
        }
        // A non-browser client (no Origin) needs it too.
        let reply = send(router(), route.request(LISTEN, None, None)).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", route.path);
        let reply = send(router(), route.request(LISTEN, None, Some(CSRF))).await;
        assert_eq!(reply.status, route.ok, "{}", route.path);
    }
}

#[tokio::test]
async fn the_reported_exploit_runs_nothing() {
    // What was seen: `curl -H 'Host: evil.test:<port>' -d command=id …/devices/local-2/exec`
    // ran `id` as root on the device.
    let request = Request::post("/devices/pi-01/exec")
        .header(header::HOST, "evil.test:18080")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("command=id"))
        .expect("request");
    let reply = send(router(), request).await;
    assert_eq!(reply.status, StatusCode::MISDIRECTED_REQUEST);
    assert!(
        !reply.body.contains("data-command-result"),
        "{}",
        reply.body
    );
    // The same request with the right Host still lacks the page's token.
    let request = Request::post("/devices/pi-01/exec")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("command=id"))
        .expect("request");
    let reply = send(router(), request).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(
        !reply.body.contains("data-command-result"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn pages_carry_the_token_for_htmx_and_for_plain_forms() {
    let reply = send(
        router(),
        get("/devices", StatusCode::OK).request(LISTEN, None, None),
    )
    .await;
    assert!(
        reply
            .body
            .contains(r#"hx-headers="{&quot;x-csrf-token&quot;:&quot;test-csrf-token&quot;}""#),
        "{}",
        reply.body
    );
    assert!(
        reply
            .body
            .contains(r#"<input type="hidden" name="csrf" value="test-csrf-token">"#),
        "every blacklist form carries the field"
    );
    let reply = send(
        router(),
        get("/login", StatusCode::OK).request(LISTEN, None, None),
    )
    .await;
    assert!(
        reply
            .body
            .contains(r#"name="csrf" value="test-csrf-token""#)
    );
}
