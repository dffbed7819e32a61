//! The dashboard (feature `web-frontend`): axum + maud + HTMX (+ SSE extension) + Tailwind
//! v4, no JS framework. Every handler is extract state → call [`FleetService`] → render
//! markup; nothing here reaches past the service.
//!
//! | module | holds |
//! |---|---|
//! | [`layout`] | the page shell, navigation and small rendering helpers |
//! | [`overview`], [`devices`], [`device`], [`deployments`] | the pages and their fragments |
//! | [`attention`] | what needs attention about a deployment, as both pages show it |
//! | [`pager`] | the devices page's page links |
//! | [`live`] | the live log tail (SSE) |
//! | [`shell`] | the interactive shell (WebSocket ↔ [`ShellSession`](crate::service::ShellSession)) |
//! | [`assets`] | CSS/JS embedded by `build.rs`, `--css-from`, live reload |
//! | [`boundary`] | the Host / Origin allow-list and the CSRF token, checked before anything else |
//! | [`auth`] | bearer token / basic auth, who is asking, security headers (CSP) |
//! | [`sessions`] | sign-in sessions (expiring) and the sign-in rate limit |
//! | [`serve`] | `serve-web` and the dashboard inside `run` |

pub mod assets;
pub mod attention;
pub mod auth;
pub mod boundary;
pub mod deployments;
pub mod device;
pub mod devices;
pub mod layout;
pub mod live;
pub mod overview;
pub mod pager;
pub mod serve;
pub mod sessions;
pub mod shell;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::html;

use crate::service::{FleetService, ServiceError};

pub use assets::Assets;
pub use auth::Auth;
pub use boundary::Boundary;
pub use sessions::Sessions;

/// What every handler gets.
#[derive(Clone)]
pub struct WebState {
    /// The only door to the fleet.
    pub service: Arc<dyn FleetService>,
    /// CSS and JS.
    pub assets: Assets,
    /// Who may come in.
    pub auth: Auth,
    /// Which hosts and origins are this dashboard, and its CSRF token.
    pub boundary: Boundary,
    /// Open sign-in sessions and recent failed sign-ins.
    pub sessions: Sessions,
}

impl std::fmt::Debug for WebState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebState")
            .field("assets", &self.assets)
            .finish_non_exhaustive()
    }
}

/// The dashboard's router: pages, fragments, streams and assets behind `state.auth`, and
/// everything behind `state.boundary` (checked first).
pub fn app(state: WebState) -> Router {
    let guarded = state.clone();
    let boundary = state.boundary.clone();
    Router::new()
        .route("/", get(overview::page))
        .route("/devices", get(devices::page))
        .route("/devices/{id}", get(device::page))
        .route("/devices/{id}/blacklist", post(devices::blacklist))
        .route("/devices/{id}/exec", post(device::exec))
        .route("/devices/{id}/logs/{deployment}", get(live::panel))
        .route("/devices/{id}/logs/{deployment}/stream", get(live::stream))
        .route("/devices/{id}/shell", get(shell::upgrade))
        .route("/deployments", get(deployments::page))
        .route("/deployments/{namespace}/{name}", get(deployments::detail))
        .route("/assets/{file}", get(assets::serve))
        .route("/favicon.ico", get(assets::favicon))
        .route("/_live-reload", get(assets::live_reload))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(guarded, auth::guard))
        .layer(axum::middleware::from_fn_with_state(
            boundary,
            boundary::guard,
        ))
        .layer(axum::middleware::from_fn(auth::security_headers))
}

/// A [`ServiceError`] as an HTTP response: status by kind, the message as an alert fragment
/// (HTMX swaps it in place of the expected fragment; see `htmx:beforeSwap` in the JS glue).
#[derive(Debug)]
pub struct WebError(pub ServiceError);

impl From<ServiceError> for WebError {
    fn from(e: ServiceError) -> Self {
        Self(e)
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            ServiceError::NotFound { .. } => StatusCode::NOT_FOUND,
            ServiceError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServiceError::Offline { .. } | ServiceError::NotReady => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::BAD_GATEWAY,
        };
        if status.is_server_error() {
            tracing::warn!(error = %self.0, "dashboard request failed");
        }
        let body = html! {
            div role="alert" class="rounded-md border border-red-300 bg-red-50 p-3 text-sm text-red-800" {
                (self.0.to_string())
            }
        };
        // HTMX swaps error bodies into the page's #flash region instead of the fragment the
        // request targeted (see the `htmx:beforeSwap` handler of the JS glue).
        (
            status,
            [("hx-retarget", "#flash"), ("hx-reswap", "innerHTML")],
            body,
        )
            .into_response()
    }
}

/// Result of a handler.
pub type WebResult<T> = Result<T, WebError>;
