//! The page shell (head, skip link, navigation, main landmark) and the small helpers every
//! page uses: badges, relative times, the HTMX request check.

use axum::http::HeaderMap;
use harmony_fleet_contracts::state::Phase;
use jiff::Timestamp;
use maud::{DOCTYPE, Markup, html};

use super::WebState;
use super::boundary::{CSRF_FIELD, CSRF_HEADER};
use crate::service::DeviceSummary;

/// Which navigation entry is current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nav {
    /// `/`.
    Overview,
    /// `/devices`.
    Devices,
    /// `/deployments`.
    Deployments,
}

/// The hidden form field that carries the CSRF token, for forms posted without JavaScript.
pub fn csrf_field(state: &WebState) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(state.boundary.csrf.as_str()); }
}

/// A full page: `title`, the navigation with `nav` current, and `body` in `<main>`. The body
/// carries the CSRF token in `hx-headers`, so every HTMX request sends it.
pub fn page(state: &WebState, title: &str, nav: Nav, body: Markup) -> Markup {
    let assets = &state.assets;
    let hx_headers = serde_json::json!({ CSRF_HEADER: state.boundary.csrf.as_str() }).to_string();
    let link = |href: &str, label: &str, this: Nav| {
        let current = nav == this;
        html! {
            a href=(href)
                aria-current=[current.then_some("page")]
                class={ "rounded px-3 py-2 text-sm font-medium "
                    (if current { "bg-slate-900 text-white" } else { "text-slate-700 hover:bg-slate-200" }) } {
                (label)
            }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false}"#;
                title { (title) " · harmony fleet" }
                link rel="stylesheet" href=(assets.url("app.css"));
                link rel="stylesheet" href=(assets.url("xterm.css"));
                script src=(assets.url("htmx.min.js")) defer {}
                script src=(assets.url("sse.js")) defer {}
                script src=(assets.url("xterm.js")) defer {}
                script src=(assets.url("addon-fit.js")) defer {}
                script src=(assets.url("dashboard.js")) defer {}
            }
            body class="min-h-screen bg-slate-50 text-slate-900" hx-headers=(hx_headers)
                data-live-reload=[assets.live_reload().then_some("true")] {
                a href="#main" class="sr-only focus:not-sr-only focus:absolute focus:p-2 focus:bg-white" { "Skip to content" }
                header class="border-b border-slate-200 bg-white" {
                    div class="mx-auto flex max-w-6xl flex-wrap items-center gap-2 px-4 py-3" {
                        span class="mr-4 font-semibold" { "harmony fleet" }
                        nav aria-label="Main" class="flex flex-wrap gap-1" {
                            (link("/", "Overview", Nav::Overview))
                            (link("/devices", "Devices", Nav::Devices))
                            (link("/deployments", "Deployments", Nav::Deployments))
                        }
                    }
                }
                main id="main" class="mx-auto max-w-6xl px-4 py-6" {
                    h1 class="mb-4 text-2xl font-semibold" { (title) }
                    div id="flash" class="mb-4" aria-live="assertive" {}
                    (body)
                }
            }
        }
    }
}

/// Whether the request came from HTMX (so a fragment is wanted, not a page).
pub fn is_htmx(headers: &HeaderMap) -> bool {
    headers.get("hx-request").is_some_and(|v| v == "true")
}

/// `3 s ago`, `5 min ago`, `2 h ago`, `4 d ago`, or `never`.
pub fn ago(at: Option<Timestamp>) -> String {
    let Some(at) = at else {
        return "never".into();
    };
    let secs = Timestamp::now().duration_since(at).as_secs().max(0);
    match secs {
        s if s < 60 => format!("{s} s ago"),
        s if s < 3_600 => format!("{} min ago", s / 60),
        s if s < 86_400 => format!("{} h ago", s / 3_600),
        s => format!("{} d ago", s / 86_400),
    }
}

/// A small coloured label.
pub fn badge(text: &str, tone: Tone) -> Markup {
    let colours = match tone {
        Tone::Good => "bg-green-100 text-green-800",
        Tone::Bad => "bg-red-100 text-red-800",
        Tone::Warn => "bg-amber-100 text-amber-800",
        Tone::Muted => "bg-slate-200 text-slate-700",
    };
    html! {
        span class={ "inline-block rounded px-2 py-0.5 text-xs font-medium " (colours) } { (text) }
    }
}

/// Colour of a [`badge`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    /// Fine.
    Good,
    /// Broken.
    Bad,
    /// Needs a look.
    Warn,
    /// Neutral.
    Muted,
}

/// Online/offline and blacklisted badges of a device.
pub fn device_status(d: &DeviceSummary) -> Markup {
    html! {
        span class="inline-flex flex-wrap gap-1" {
            @if d.online { (badge("online", Tone::Good)) } @else { (badge("offline", Tone::Bad)) }
            @if d.blacklisted { (badge("blacklisted", Tone::Warn)) }
            @if d.deployments.failed > 0 { (badge(&format!("{} failing", d.deployments.failed), Tone::Bad)) }
        }
    }
}

/// A deployment phase on a device.
pub fn phase(phase: Option<Phase>) -> Markup {
    match phase {
        Some(Phase::Running) => badge("Running", Tone::Good),
        Some(Phase::Failed) => badge("Failed", Tone::Bad),
        Some(Phase::Pending) => badge("Pending", Tone::Warn),
        Some(Phase::Removed) => badge("Removed", Tone::Muted),
        Some(_) => badge("Unknown", Tone::Muted),
        None => badge("No report", Tone::Muted),
    }
}

/// Labels as `k=v` chips.
pub fn labels(labels: &std::collections::BTreeMap<String, String>) -> Markup {
    html! {
        ul class="flex flex-wrap gap-1" aria-label="Labels" {
            @for (k, v) in labels {
                li class="rounded bg-slate-100 px-1.5 py-0.5 font-mono text-xs" { (k) "=" (v) }
            }
        }
    }
}
