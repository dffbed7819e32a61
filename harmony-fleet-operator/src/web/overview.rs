//! `/`: what needs attention — offline devices, and every deployment with an attention item
//! (refused by the operator, a name conflict, a stopped rollout, failing or offline devices, a
//! selector matching nothing) with the operator's reason and message — and the fleet's size
//! at a glance.

use axum::extract::State;
use maud::{Markup, html};

use super::attention;
use super::layout::{self, Nav};
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
        @if o.offline_total == 0 && o.attention.is_empty() {
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
            section aria-labelledby="deployments-h" class="rounded-lg border border-slate-200 bg-white p-4 md:col-span-2" {
                h3 id="deployments-h" class="mb-2 font-semibold" { "Deployments (" (o.attention.len()) ")" }
                ul class="space-y-3" {
                    @for d in &o.attention {
                        li data-deployment={ (d.id.namespace) "/" (d.id.name) } {
                            (deployment_link(d))
                            (attention::list(&d.attention))
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(&state, "Overview", Nav::Overview, body))
}
