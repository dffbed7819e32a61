//! HTTP endpoints: `/healthz` (the process serves), `/readyz` (`Recovering` until the cold
//! start has rebuilt the fleet state and collected orphaned keys, then `Converged`; `Failed`
//! for good once one of its tasks ended or panicked) and
//! `/metrics` (Prometheus).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

const RECOVERING: u8 = 0;
const CONVERGED: u8 = 1;
const FAILED: u8 = 2;

/// Shared readiness: `Recovering` until the controller's cold start is over, then `Converged`;
/// `Failed` once a task of the operator ended or panicked (never left).
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicU8>);

impl Readiness {
    /// Marks the operator converged (unless it failed).
    pub fn set_converged(&self) {
        let _ = self
            .0
            .compare_exchange(RECOVERING, CONVERGED, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Marks the operator failed, for good.
    pub fn set_failed(&self) {
        self.0.store(FAILED, Ordering::Release);
    }

    /// Whether the cold start is over and nothing failed.
    pub fn is_converged(&self) -> bool {
        self.0.load(Ordering::Acquire) == CONVERGED
    }

    /// Whether a task of the operator ended or panicked.
    pub fn is_failed(&self) -> bool {
        self.0.load(Ordering::Acquire) == FAILED
    }
}

/// What the handlers read.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Readiness flag.
    pub readiness: Readiness,
    /// Metrics registry.
    pub metrics: Metrics,
}

/// The operator's router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.readiness.is_converged() {
        (StatusCode::OK, "Converged\n")
    } else if state.readiness.is_failed() {
        (StatusCode::SERVICE_UNAVAILABLE, "Failed\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "Recovering\n")
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_body(app: Router, path: &str) -> (StatusCode, String) {
        let response = app
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn readyz_says_recovering_then_converged() {
        let state = AppState {
            readiness: Readiness::default(),
            metrics: Metrics::new(),
        };
        let (status, body) = get_body(app(state.clone()), "/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "Recovering\n")
        );
        state.readiness.set_converged();
        let (status, body) = get_body(app(state.clone()), "/readyz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "Converged\n"));
        state.readiness.set_failed();
        state.readiness.set_converged();
        let (status, body) = get_body(app(state), "/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "Failed\n")
        );
    }

    #[tokio::test]
    async fn metrics_exposes_operator_counters() {
        let state = AppState {
            readiness: Readiness::default(),
            metrics: Metrics::new(),
        };
        state.metrics.kv_write("put", true);
        state.metrics.devices_online.set(3);
        let (status, body) = get_body(app(state), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("fleet_operator_kv_writes_total{op=\"put\",result=\"ok\"} 1"),
            "{body}"
        );
        assert!(body.contains("fleet_operator_devices_online 3"), "{body}");
        let (status, _) = get_body(
            app(AppState {
                readiness: Readiness::default(),
                metrics: Metrics::new(),
            }),
            "/healthz",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
}
