//! CSS and JS: embedded at build time by `build.rs` (Tailwind's output, htmx, its SSE
//! extension, xterm.js and our glue, all from `web/`), so an air-gapped cluster needs nothing
//! else. `--css-from PATH` serves the stylesheet from disk instead (restyle without
//! rebuilding); `--live-reload` makes open tabs reload when the server restarts.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream;

use super::WebState;

/// One embedded file: name, bytes, content type.
type Embedded = (&'static str, &'static [u8], &'static str);

macro_rules! asset {
    ($name:literal, $mime:literal) => {
        (
            $name,
            include_bytes!(concat!(env!("OUT_DIR"), "/assets/", $name)),
            $mime,
        )
    };
}

/// Every embedded asset.
static EMBEDDED: &[Embedded] = &[
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("xterm.css", "text/css; charset=utf-8"),
    asset!("htmx.min.js", "text/javascript; charset=utf-8"),
    asset!("sse.js", "text/javascript; charset=utf-8"),
    asset!("xterm.js", "text/javascript; charset=utf-8"),
    asset!("addon-fit.js", "text/javascript; charset=utf-8"),
    asset!("dashboard.js", "text/javascript; charset=utf-8"),
];

/// Hash of the embedded assets (set by `build.rs`), used to bust browser caches.
pub const ASSETS_VERSION: &str = env!("FLEET_WEB_ASSETS_VERSION");

/// Which assets are served and how.
#[derive(Clone, Debug, Default)]
pub struct Assets {
    css_from: Option<Arc<PathBuf>>,
    live_reload: bool,
    boot_id: Arc<String>,
}

impl Assets {
    /// Embedded assets; the stylesheet from `css_from` when given; live reload when asked.
    pub fn new(css_from: Option<PathBuf>, live_reload: bool) -> Self {
        Self {
            css_from: css_from.map(Arc::new),
            live_reload,
            boot_id: Arc::new(format!(
                "{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default()
            )),
        }
    }

    /// The URL of asset `name`, versioned so that it can be cached forever.
    pub fn url(&self, name: &str) -> String {
        format!("/assets/{name}?v={ASSETS_VERSION}")
    }

    /// Whether pages carry the live-reload hook.
    pub fn live_reload(&self) -> bool {
        self.live_reload
    }

    /// The embedded bytes of `name`, if it exists.
    pub fn embedded(name: &str) -> Option<&'static [u8]> {
        EMBEDDED
            .iter()
            .find(|(n, ..)| *n == name)
            .map(|(_, b, _)| *b)
    }
}

/// `GET /assets/{file}`.
pub async fn serve(State(state): State<WebState>, Path(file): Path<String>) -> Response {
    let Some((name, bytes, mime)) = EMBEDDED.iter().find(|(n, ..)| *n == file) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    if *name == "app.css"
        && let Some(path) = &state.assets.css_from
    {
        return match tokio::fs::read(path.as_path()).await {
            Ok(css) => (
                [
                    (header::CONTENT_TYPE, *mime),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                css,
            )
                .into_response(),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("--css-from {}: {e}", path.display()),
            )
                .into_response(),
        };
    }
    let cache = if state.assets.live_reload {
        "no-cache"
    } else {
        "public, max-age=31536000, immutable"
    };
    (
        [
            (header::CONTENT_TYPE, *mime),
            (header::CACHE_CONTROL, cache),
        ],
        *bytes,
    )
        .into_response()
}

/// `GET /favicon.ico`: no icon, and no 404 in every browser console.
pub async fn favicon() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// `GET /_live-reload`: an SSE stream that sends this process's boot id once and then only
/// keep-alives. The page reloads when a reconnect brings a different id (server restarted).
pub async fn live_reload(State(state): State<WebState>) -> Response {
    if !state.assets.live_reload {
        return StatusCode::NOT_FOUND.into_response();
    }
    let boot = Event::default()
        .event("boot")
        .data(state.assets.boot_id.as_str());
    let events =
        futures::StreamExt::chain(stream::iter([Ok::<_, Infallible>(boot)]), stream::pending());
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}
