//! `/`: what needs attention — offline devices, deployments with failing devices, rollouts
//! stopped by their failure criteria — and the fleet's size at a glance.

use axum::extract::State;
use maud::{Markup, html};

use super::layout::{self, Nav, Tone};
use super::{WebResult, WebState};
use crate::service::DeploymentSummary;

/// The overview page.
pub async fn page(State(state): State<WebState>) -> WebResult<Markup> {
    let o = state.service.overview().await?;
    let stat = |label: &str, value: String| {
        html! {
            div class="rounded-lg border border-slate-200 bg-white p-4" {
                dt class="text-sm text-slate-600" { (label) }
                dd class="text-2xl font-semibold" { (value) }
            }
        }
    };
    let deployment_link = |d: &DeploymentSummary| {
        html! {
            a class="font-medium text-blue-700 underline" href={ "/deployments/" (d.id.namespace) "/" (d.id.name) } {
                (d.id.namespace) "/" (d.id.name)
            }
        }
    };
    let body = html! {
        dl class="mb-6 grid grid-cols-2 gap-3 sm:grid-cols-4" {
            (stat("Devices", o.devices_total.to_string()))
            (stat("Online", o.devices_online.to_string()))
            (stat("Blacklisted", o.devices_blacklisted.to_string()))
            (stat("Deployments", o.deployments_total.to_string()))
        }
        h2 class="mb-2 text-lg font-semibold" { "Needs attention" }
        @if o.offline.is_empty() && o.failed.is_empty() && o.paused.is_empty() {
            p role="status" class="text-green-800" { "Nothing needs attention: every device is online and every rollout is healthy." }
        }
        div class="grid gap-4 md:grid-cols-3" {
            section aria-labelledby="offline-h" class="rounded-lg border border-slate-200 bg-white p-4" {
                h3 id="offline-h" class="mb-2 font-semibold" { "Offline devices (" (o.offline_total) ")" }
                ul class="space-y-1" {
                    @for d in &o.offline {
                        li class="flex items-center justify-between gap-2" {
                            a class="text-blue-700 underline" href={ "/devices/" (d.id) } { (d.id) }
                            span class="text-sm text-slate-600" { "last seen " (layout::ago(d.last_seen)) }
                        }
                    }
                }
                @if o.offline_total > o.offline.len() {
                    a class="text-sm text-blue-700 underline" href="/devices?status=offline" { "all offline devices" }
                }
            }
            section aria-labelledby="failed-h" class="rounded-lg border border-slate-200 bg-white p-4" {
                h3 id="failed-h" class="mb-2 font-semibold" { "Failing deployments (" (o.failed.len()) ")" }
                ul class="space-y-2" {
                    @for d in &o.failed {
                        li {
                            (deployment_link(d)) " "
                            (layout::badge(&format!("{} failed", d.failed), Tone::Bad))
                            @if let Some(e) = &d.last_error { p class="break-words text-sm text-slate-600" { (e) } }
                        }
                    }
                }
            }
            section aria-labelledby="paused-h" class="rounded-lg border border-slate-200 bg-white p-4" {
                h3 id="paused-h" class="mb-2 font-semibold" { "Stopped rollouts (" (o.paused.len()) ")" }
                ul class="space-y-2" {
                    @for d in &o.paused {
                        li {
                            (deployment_link(d)) " "
                            @if let Some(r) = &d.rollout {
                                (layout::badge(&r.phase, Tone::Warn))
                                @if let Some(reason) = &r.reason { p class="break-words text-sm text-slate-600" { (reason) } }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(&state, "Overview", Nav::Overview, body))
}
