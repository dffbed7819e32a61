//! `/deployments`: every deployment with its rollout progress and what needs attention (the
//! operator's reason and message, as on the overview), and one deployment's waves and
//! per-device phase.

use axum::extract::{Path, State};
use harmony_fleet_types::crd::deployment::RolloutPhase;
use maud::{Markup, html};

use super::attention;
use super::layout::{self, Nav, Tone};
use super::{WebResult, WebState};
use crate::service::{DeploymentRef, DeploymentSummary, WaveState};

fn progress(d: &DeploymentSummary) -> Markup {
    let matched = d.matched.max(1);
    html! {
        div class="flex items-center gap-2" {
            progress class="h-2 w-24 sm:w-40" max=(matched) value=(d.succeeded)
                aria-label={ "Succeeded on " (d.id.name) } {}
            span class="text-sm whitespace-nowrap" { (d.succeeded) " / " (d.matched) }
        }
    }
}

/// The rollout's phase; for a resource the operator refuses, the refusal's reason instead (it
/// has no rollout, and "no status yet" would hide that the status says why).
fn rollout_badge(d: &DeploymentSummary) -> Markup {
    if let Some(refusal) = d.attention.iter().find(|a| a.kind.is_refusal()) {
        return layout::badge(&refusal.reason, Tone::Bad);
    }
    match &d.rollout {
        None => layout::badge("no status yet", Tone::Muted),
        Some(r) => {
            let tone = match r.phase {
                RolloutPhase::Complete => Tone::Good,
                RolloutPhase::Progressing => Tone::Warn,
                RolloutPhase::Paused | RolloutPhase::RolledBack | RolloutPhase::Unknown => {
                    Tone::Bad
                }
            };
            html! {
                (layout::badge(r.phase.as_str(), tone))
                @if r.total_batches > 1 {
                    span class="ml-1 text-xs text-slate-600" { "wave " (r.current_batch) " of " (r.total_batches) }
                }
            }
        }
    }
}

/// The list page.
pub async fn page(State(state): State<WebState>) -> WebResult<Markup> {
    let list = state.service.list_deployments().await?;
    let body = html! {
        div class="overflow-x-auto rounded-lg border border-slate-200 bg-white" {
            table class="w-full text-left text-sm" {
                caption class="sr-only" { "Deployments" }
                thead class="bg-slate-100" {
                    tr {
                        th scope="col" class="p-2" { "Deployment" }
                        th scope="col" class="p-2" { "Rollout" }
                        th scope="col" class="p-2" { "Progress" }
                        th scope="col" class="hidden p-2 sm:table-cell" { "Failed" }
                        th scope="col" class="p-2" { "Needs attention" }
                        th scope="col" class="hidden p-2 md:table-cell" { "Targets" }
                    }
                }
                tbody {
                    @for d in &list {
                        tr class="border-t border-slate-200" {
                            th scope="row" class="p-2 font-medium" {
                                a class="text-blue-700 underline" href={ "/deployments/" (d.id.namespace) "/" (d.id.name) } { (d.id.name) }
                                div class="text-xs font-normal text-slate-500" { (d.id.namespace) }
                            }
                            td class="p-2" { (rollout_badge(d)) }
                            td class="p-2" { (progress(d)) }
                            td class="hidden p-2 sm:table-cell" { (d.failed) }
                            td class="p-2" { (attention::list(&d.attention)) }
                            td class="hidden p-2 font-mono text-xs md:table-cell" { (d.selector) }
                        }
                    }
                    @if list.is_empty() {
                        tr { td colspan="6" class="p-3 text-slate-600" { "No deployment yet: apply a fleet Deployment with kubectl." } }
                    }
                }
            }
        }
    };
    Ok(layout::page(&state, "Deployments", Nav::Deployments, body))
}

/// One deployment: rollout waves and per-device phase.
pub async fn detail(
    State(state): State<WebState>,
    Path((namespace, name)): Path<(String, String)>,
) -> WebResult<Markup> {
    let d = state
        .service
        .deployment(&DeploymentRef { namespace, name })
        .await?;
    let s = &d.summary;
    let body = html! {
        div class="mb-4 flex flex-wrap items-center gap-3" {
            (rollout_badge(s)) (progress(s))
            span class="text-sm text-slate-600" { "namespace " (s.id.namespace) }
        }
        @if !s.attention.is_empty() {
            section aria-labelledby="attention-h" class="mb-4 rounded border border-amber-300 bg-amber-50 p-3" {
                h2 id="attention-h" class="mb-1 font-semibold" { "Needs attention" }
                (attention::list(&s.attention))
            }
        }
        div class="grid gap-4 md:grid-cols-3" {
            section aria-labelledby="spec-h" class="rounded-lg border border-slate-200 bg-white p-4" {
                h2 id="spec-h" class="mb-2 font-semibold" { "Target" }
                dl class="space-y-1 text-sm" {
                    div { dt class="text-slate-600" { "Selector" } dd class="font-mono break-all" { (s.selector) } }
                    div { dt class="text-slate-600" { "Images" } dd class="font-mono break-all" {
                        @for i in &s.images { div { (i) } }
                    } }
                    div { dt class="text-slate-600" { "Matched / succeeded / failed / pending" }
                        dd { (s.matched) " / " (s.succeeded) " / " (s.failed) " / " (s.pending) } }
                }
            }
            section aria-labelledby="waves-h" class="rounded-lg border border-slate-200 bg-white p-4 md:col-span-2" {
                h2 id="waves-h" class="mb-2 font-semibold" { "Waves" }
                ol class="space-y-1" {
                    @for w in &d.waves {
                        li class="flex items-center gap-2" data-wave=(w.number) {
                            span class="w-16 text-sm text-slate-600" { "Wave " (w.number) }
                            span class="flex-1" { (w.size) }
                            (layout::badge(w.state.as_str(), match w.state {
                                WaveState::Done => Tone::Good,
                                WaveState::Active => Tone::Warn,
                                WaveState::Waiting => Tone::Muted,
                            }))
                        }
                    }
                }
            }
        }
        section aria-labelledby="devs-h" class="mt-4 overflow-x-auto rounded-lg border border-slate-200 bg-white" {
            h2 id="devs-h" class="p-4 pb-2 font-semibold" { "Devices" }
            table class="w-full text-left text-sm" {
                thead class="bg-slate-100" {
                    tr {
                        th scope="col" class="p-2" { "Device" }
                        th scope="col" class="p-2" { "Phase" }
                        th scope="col" class="p-2" { "Revision" }
                        th scope="col" class="hidden p-2 sm:table-cell" { "Error" }
                    }
                }
                tbody {
                    @for dev in &d.devices {
                        tr class="border-t border-slate-200" {
                            th scope="row" class="p-2 font-medium" { a class="text-blue-700 underline" href={ "/devices/" (dev.device) } { (dev.device) } }
                            td class="p-2" { (layout::phase(dev.phase)) }
                            td class="p-2" { @if dev.on_target { "target" } @else { "previous" } }
                            td class="hidden p-2 break-words text-red-800 sm:table-cell" { (dev.last_error.clone().unwrap_or_default()) }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(
        &state,
        &format!("Deployment {}", s.id.name),
        Nav::Deployments,
        body,
    ))
}
