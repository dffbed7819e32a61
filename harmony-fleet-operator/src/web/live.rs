//! The live log tail: a panel whose `sse-connect` opens `…/stream`, an SSE endpoint that
//! relays [`LogEvent`]s from the service as `line` events (HTML fragments appended by the
//! HTMX SSE extension) and ends with an `end` event (`sse-close`).
//!
//! Closing the tab drops the SSE body, which drops the [`LogStream`](crate::service::LogStream)
//! and so closes the session on the device.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt};
use harmony_fleet_contracts::ids::DeploymentName;
use maud::{Markup, html};

use super::devices::device_id;
use super::{WebError, WebResult, WebState};
use crate::service::{LogEvent, ServiceError};

fn deployment_name(raw: &str) -> Result<DeploymentName, WebError> {
    raw.parse().map_err(|_| {
        WebError(ServiceError::NotFound {
            what: format!("deployment {raw:?}"),
        })
    })
}

/// The panel that follows a deployment's logs (an HTMX fragment).
pub async fn panel(Path((id, deployment)): Path<(String, String)>) -> WebResult<Markup> {
    let id = device_id(&id)?;
    let deployment = deployment_name(&deployment)?;
    Ok(html! {
        div hx-ext="sse" sse-connect={ "/devices/" (id) "/logs/" (deployment) "/stream" } sse-close="end" data-log-panel {
            div class="mb-2 flex items-center justify-between gap-2" {
                p class="text-sm" { "Following " strong { (deployment) } " on " (id) }
                button type="button" data-logs-stop class="rounded border border-slate-300 px-2 py-1 text-xs" { "Stop" }
            }
            div id="log-lines" role="log" aria-live="polite" aria-label={ "Logs of " (deployment) }
                sse-swap="line" hx-swap="beforeend"
                class="h-64 overflow-y-auto rounded bg-slate-900 p-2 font-mono text-xs text-slate-100" {}
        }
    })
}

fn line_event(service: &str, line: &str, tone: &str) -> Event {
    let markup = html! {
        div class={ "whitespace-pre-wrap break-all " (tone) } data-log-line {
            @if !service.is_empty() { span class="text-slate-400" { (service) " | " } }
            (line)
        }
    };
    Event::default().event("line").data(markup.into_string())
}

fn to_events(event: LogEvent) -> Vec<Event> {
    match event {
        LogEvent::Line { service, line } => vec![line_event(&service, &line, "")],
        LogEvent::Dropped => vec![line_event(
            "",
            "… lines were dropped (the browser could not keep up)",
            "text-amber-300",
        )],
        LogEvent::Ended => vec![
            line_event(
                "",
                "— the containers stopped; the tail ended —",
                "text-amber-300",
            ),
            Event::default().event("end").data("ended"),
        ],
        LogEvent::Error(message) => vec![
            line_event("", &format!("— {message} —"), "text-red-300"),
            Event::default().event("end").data("error"),
        ],
    }
}

/// The SSE endpoint of the panel.
pub async fn stream(
    State(state): State<WebState>,
    Path((id, deployment)): Path<(String, String)>,
) -> WebResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let id = device_id(&id)?;
    let deployment = deployment_name(&deployment)?;
    let events: BoxStream<'static, LogEvent> =
        match state.service.stream_logs(&id, &deployment).await {
            Ok(stream) => stream,
            // Answer the failure inside the stream: an HTTP error would make EventSource retry
            // forever without telling the user why.
            Err(e) => stream::iter([LogEvent::Error(e.to_string())]).boxed(),
        };
    let body = events
        .flat_map(|event| stream::iter(to_events(event)))
        .map(Ok::<_, Infallible>);
    Ok(Sse::new(body).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
