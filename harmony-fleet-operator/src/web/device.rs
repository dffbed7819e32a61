//! `/devices/{id}`: one device — inventory, deployments, a command runner, the live log tail
//! ([`super::live`]) and the interactive shell ([`super::shell`]).

use axum::Form;
use axum::extract::{Path, State};
use axum::http::Extensions;
use maud::{Markup, html};
use serde::Deserialize;

use super::auth::Principal;
use super::devices::device_id;
use super::layout::{self, Nav};
use super::{WebResult, WebState};
use crate::service::{AuditAction, AuditEntry};

/// The device page.
pub async fn page(State(state): State<WebState>, Path(id): Path<String>) -> WebResult<Markup> {
    let id = device_id(&id)?;
    let d = state.service.device(&id).await?;
    let s = &d.summary;
    let inv = &d.inventory;
    let fact = |k: &str, v: String| {
        html! { div class="flex gap-2" { dt class="w-28 shrink-0 text-slate-600" { (k) } dd class="break-all" { (v) } } }
    };
    let body = html! {
        div class="mb-4 flex flex-wrap items-center gap-3" {
            (layout::device_status(s))
            span class="text-sm text-slate-600" { "last seen " (layout::ago(s.last_seen)) }
        }
        div class="grid gap-4 md:grid-cols-2" {
            section aria-labelledby="facts-h" class="rounded-lg border border-slate-200 bg-white p-4" {
                h2 id="facts-h" class="mb-2 font-semibold" { "Device" }
                dl class="space-y-1 text-sm" {
                    (fact("Hostname", inv.hostname.clone()))
                    (fact("OS", inv.os_release.clone().unwrap_or_else(|| inv.os.clone())))
                    (fact("Kernel", inv.kernel_version.clone().unwrap_or_default()))
                    (fact("Arch", inv.arch.clone()))
                    (fact("CPUs", inv.cpu_count.to_string()))
                    (fact("Memory", format!("{:.1} GiB", inv.memory_bytes as f64 / (1u64 << 30) as f64)))
                    (fact("Agent", s.agent_version.clone()))
                }
                div class="mt-2" { (layout::labels(&s.labels)) }
            }
            section aria-labelledby="deps-h" class="rounded-lg border border-slate-200 bg-white p-4" {
                h2 id="deps-h" class="mb-2 font-semibold" { "Deployments" }
                @if d.deployments.is_empty() {
                    p class="text-sm text-slate-600" {
                        @if s.blacklisted { "Blacklisted: the operator gives this device no desired state." }
                        @else { "Nothing deployed on this device." }
                    }
                }
                ul class="space-y-2" {
                    @for dep in &d.deployments {
                        li class="flex flex-wrap items-center justify-between gap-2" {
                            span {
                                span class="font-medium" { (dep.deployment) } " " (layout::phase(Some(dep.phase)))
                                @if let Some(e) = &dep.last_error { p class="break-words text-sm text-red-800" { (e) } }
                            }
                            button type="button"
                                hx-get={ "/devices/" (s.id) "/logs/" (dep.deployment) }
                                hx-target="#logs-panel" hx-swap="innerHTML"
                                class="rounded border border-slate-300 px-2 py-1 text-xs hover:bg-slate-100" {
                                "Live logs" span class="sr-only" { " of " (dep.deployment) }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="logs-h" class="mt-4 rounded-lg border border-slate-200 bg-white p-4" {
            h2 id="logs-h" class="mb-2 font-semibold" { "Logs" }
            div id="logs-panel" {
                p class="text-sm text-slate-600" { "Choose “Live logs” on a deployment to follow its containers." }
            }
        }
        section aria-labelledby="cmd-h" class="mt-4 rounded-lg border border-slate-200 bg-white p-4" {
            h2 id="cmd-h" class="mb-2 font-semibold" { "Run a command" }
            form method="post" action={ "/devices/" (s.id) "/exec" }
                hx-post={ "/devices/" (s.id) "/exec" } hx-target="#command-output" hx-swap="innerHTML"
                class="flex flex-wrap items-end gap-2" {
                (layout::csrf_field(&state))
                div class="flex min-w-0 flex-1 flex-col" {
                    label for="command" class="text-sm font-medium" { "Command (sh -c)" }
                    input id="command" name="command" required autocomplete="off"
                        class="rounded border border-slate-300 px-2 py-1 font-mono" placeholder="uptime";
                }
                button type="submit" class="rounded bg-slate-900 px-3 py-1.5 text-white" { "Run" }
            }
            div id="command-output" aria-live="polite" class="mt-2" {}
        }
        section aria-labelledby="shell-h" class="mt-4 rounded-lg border border-slate-200 bg-white p-4" {
            h2 id="shell-h" class="mb-2 font-semibold" { "Shell" }
            div class="mb-2 flex gap-2" {
                button type="button" data-shell-open=(s.id)
                    class="rounded bg-slate-900 px-3 py-1.5 text-white" { "Open shell" }
                button type="button" data-shell-close hidden
                    class="rounded border border-slate-300 px-3 py-1.5" { "Close shell" }
            }
            p data-shell-status role="status" class="mb-2 text-sm text-slate-600" { "Closed." }
            div data-shell-terminal role="application" aria-label={ "Terminal on " (s.id) }
                class="h-80 w-full overflow-hidden rounded bg-black" {}
        }
    };
    Ok(layout::page(
        &state,
        &format!("Device {}", s.id),
        Nav::Devices,
        body,
    ))
}

/// Form of the command runner.
#[derive(Debug, Deserialize)]
pub struct ExecForm {
    /// The shell command line.
    pub command: String,
}

/// Runs a command and answers its output as a fragment.
pub async fn exec(
    State(state): State<WebState>,
    extensions: Extensions,
    Path(id): Path<String>,
    Form(form): Form<ExecForm>,
) -> WebResult<Markup> {
    let id = device_id(&id)?;
    // Recorded before it runs: an attempt on a device that never answers is audited too.
    state
        .service
        .audit(
            AuditEntry::now(Principal::of(&extensions), id.clone(), AuditAction::Exec)
                .with_command(form.command.clone()),
        )
        .await;
    let out = state.service.run_command(&id, &form.command).await?;
    let status = match (out.exit_code, out.timed_out) {
        (_, true) => "timed out".to_owned(),
        (Some(code), _) => format!("exit {code}"),
        (None, _) => "killed".to_owned(),
    };
    Ok(html! {
        div data-command-result {
            p class="text-sm text-slate-600" {
                code { (form.command) } " — " (status) ", " (out.duration_ms) " ms"
                @if out.truncated { " (output truncated)" }
            }
            @if !out.stdout.is_empty() {
                pre aria-label="Standard output" class="mt-1 overflow-x-auto rounded bg-slate-900 p-2 text-sm text-slate-100" { (out.stdout) }
            }
            @if !out.stderr.is_empty() {
                pre aria-label="Standard error" class="mt-1 overflow-x-auto rounded bg-red-950 p-2 text-sm text-red-100" { (out.stderr) }
            }
        }
    })
}
