//! `/devices`: the device list with label and status filters (HTMX swaps only the rows), and
//! the blacklist toggle that swaps one row in place.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{Extensions, HeaderMap};
use axum::response::{IntoResponse, Redirect, Response};
use harmony_fleet_contracts::ids::DeviceId;
use maud::{Markup, html};
use serde::Deserialize;

use super::auth::Principal;
use super::layout::{self, Nav};
use super::{WebError, WebResult, WebState};
use crate::service::{
    AuditAction, AuditEntry, DeviceQuery, DeviceSummary, ServiceError, StatusFilter,
};

/// Query string of `/devices`.
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    /// `key` or `key=value`.
    #[serde(default)]
    pub label: String,
    /// `online`, `offline`, `blacklisted`, `failing` or empty.
    #[serde(default)]
    pub status: String,
}

/// Parses a device id from the path, as a 404 when it cannot be one.
pub fn device_id(raw: &str) -> Result<DeviceId, WebError> {
    raw.parse().map_err(|_| {
        WebError(ServiceError::NotFound {
            what: format!("device {raw:?}"),
        })
    })
}

/// The list page, or only its rows for an HTMX filter request.
pub async fn page(
    State(state): State<WebState>,
    headers: HeaderMap,
    Query(filters): Query<Filters>,
) -> WebResult<Markup> {
    let query = DeviceQuery {
        label: DeviceQuery::parse_label(&filters.label),
        status: StatusFilter::parse(&filters.status),
        limit: 0,
    };
    let page = state.service.list_devices(&query).await?;
    let rows = html! {
        tbody id="device-rows" {
            @for d in &page.devices { (row(&state, d)) }
            @if page.devices.is_empty() {
                tr { td colspan="5" class="p-3 text-slate-600" { "No device matches these filters." } }
            }
        }
    };
    if layout::is_htmx(&headers) && headers.get("hx-target").is_some_and(|t| t == "device-rows") {
        return Ok(rows);
    }
    let body = html! {
        form role="search" aria-label="Filter devices" class="mb-4 flex flex-wrap items-end gap-3"
            action="/devices" method="get"
            hx-get="/devices" hx-target="#device-rows" hx-swap="outerHTML" hx-push-url="true"
            hx-trigger="input changed delay:300ms from:#label-filter, change from:#status-filter, submit" {
            div class="flex flex-col" {
                label for="label-filter" class="text-sm font-medium" { "Label" }
                input id="label-filter" name="label" type="search" value=(filters.label)
                    placeholder="site=plant-3" class="rounded border border-slate-300 px-2 py-1";
            }
            div class="flex flex-col" {
                label for="status-filter" class="text-sm font-medium" { "Status" }
                select id="status-filter" name="status" class="rounded border border-slate-300 px-2 py-1" {
                    option value="" selected[query.status.is_none()] { "any" }
                    @for s in StatusFilter::ALL {
                        option value=(s.as_str()) selected[query.status == Some(s)] { (s.as_str()) }
                    }
                }
            }
            button type="submit" class="rounded bg-slate-900 px-3 py-1.5 text-white" { "Filter" }
        }
        p class="mb-2 text-sm text-slate-600" aria-live="polite" {
            (page.total_matched) " matching device(s)"
            @if page.total_matched > page.devices.len() { ", first " (page.devices.len()) " shown" }
        }
        div class="overflow-x-auto rounded-lg border border-slate-200 bg-white" {
            table class="w-full text-left text-sm" {
                caption class="sr-only" { "Devices" }
                thead class="bg-slate-100" {
                    tr {
                        th scope="col" class="p-2" { "Device" }
                        th scope="col" class="p-2" { "Status" }
                        th scope="col" class="hidden p-2 sm:table-cell" { "Labels" }
                        th scope="col" class="p-2" { "Last seen" }
                        th scope="col" class="p-2" { span class="sr-only" { "Actions" } }
                    }
                }
                (rows)
            }
        }
    };
    Ok(layout::page(&state, "Devices", Nav::Devices, body))
}

/// One device row; the blacklist form swaps the row itself.
pub fn row(state: &WebState, d: &DeviceSummary) -> Markup {
    let (label, next) = if d.blacklisted {
        ("Unblacklist", "false")
    } else {
        ("Blacklist", "true")
    };
    html! {
        tr id={ "device-" (d.id) } class="border-t border-slate-200" data-blacklisted=(d.blacklisted) {
            th scope="row" class="p-2 font-medium" {
                a class="text-blue-700 underline" href={ "/devices/" (d.id) } { (d.id) }
                div class="text-xs font-normal text-slate-500" { (d.arch) " · agent " (d.agent_version) }
            }
            td class="p-2" { (layout::device_status(d)) }
            td class="hidden p-2 sm:table-cell" { (layout::labels(&d.labels)) }
            td class="p-2 whitespace-nowrap" { (layout::ago(d.last_seen)) }
            td class="p-2 text-right" {
                form method="post" action={ "/devices/" (d.id) "/blacklist" }
                    hx-post={ "/devices/" (d.id) "/blacklist" } hx-target={ "#device-" (d.id) } hx-swap="outerHTML" {
                    (layout::csrf_field(state))
                    input type="hidden" name="blacklisted" value=(next);
                    button type="submit" aria-label={ (label) " " (d.id) }
                        class="rounded border border-slate-300 px-2 py-1 text-xs hover:bg-slate-100" { (label) }
                }
            }
        }
    }
}

/// Form of the blacklist toggle.
#[derive(Debug, Deserialize)]
pub struct BlacklistForm {
    /// `true` to blacklist, `false` to release.
    pub blacklisted: bool,
}

/// Blacklists or releases a device; answers the new row (HTMX) or redirects back.
pub async fn blacklist(
    State(state): State<WebState>,
    headers: HeaderMap,
    extensions: Extensions,
    Path(id): Path<String>,
    Form(form): Form<BlacklistForm>,
) -> WebResult<Response> {
    let id = device_id(&id)?;
    let summary = state.service.set_blacklisted(&id, form.blacklisted).await?;
    let action = if form.blacklisted {
        AuditAction::Blacklisted
    } else {
        AuditAction::Released
    };
    state
        .service
        .audit(AuditEntry::now(
            Principal::of(&extensions),
            id.clone(),
            action,
        ))
        .await;
    if layout::is_htmx(&headers) {
        Ok(row(&state, &summary).into_response())
    } else {
        Ok(Redirect::to("/devices").into_response())
    }
}
