//! `/devices`: the device list, filtered and paginated on the server (label selector, status,
//! free text; [`crate::service::device_list`]) so it holds a fleet of any size. HTMX swaps
//! only the results (count, rows, page links) when a filter changes or a page link is
//! followed; without JavaScript the same form and links load the full page. The blacklist
//! toggle swaps one row in place.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{Extensions, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use harmony_fleet_contracts::ids::DeviceId;
use maud::{Markup, html};
use serde::{Deserialize, Serialize};

use super::auth::Principal;
use super::layout::{self, Nav};
use super::{WebError, WebResult, WebState, pager};
use crate::service::device_list::parse_selector;
use crate::service::{
    AuditAction, AuditEntry, DevicePage, DeviceQuery, DeviceSummary, ServiceError, StatusFilter,
};

/// Query string of `/devices`. Every field is text, read leniently: a page link edited by
/// hand never gets a bare 400 from the extractor.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct Filters {
    /// Label selector, `kubectl -l` style (`site=plant-3,line!=b`).
    #[serde(default)]
    pub label: String,
    /// `online`, `offline`, `blacklisted`, `failing` or empty.
    #[serde(default)]
    pub status: String,
    /// Free text (id, label, architecture, agent version).
    #[serde(default)]
    pub q: String,
    /// 1-based page (blank or unreadable: the first).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub page: String,
    /// Rows per page (blank or unreadable: the default).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub per_page: String,
}

impl Filters {
    /// The URL of page `page` with these filters.
    pub fn href(&self, page: usize) -> String {
        let with_page = Filters {
            page: page.to_string(),
            ..self.clone()
        };
        let query = serde_urlencoded::to_string(&with_page).unwrap_or_default();
        format!("/devices?{query}")
    }
}

/// The element HTMX replaces on filtering and paging.
const RESULTS: &str = "device-results";

/// Parses a device id from the path, as a 404 when it cannot be one.
pub fn device_id(raw: &str) -> Result<DeviceId, WebError> {
    raw.parse().map_err(|_| {
        WebError(ServiceError::NotFound {
            what: format!("device {raw:?}"),
        })
    })
}

/// The list page, or only its results for an HTMX filter or page request.
pub async fn page(
    State(state): State<WebState>,
    headers: HeaderMap,
    Query(filters): Query<Filters>,
) -> WebResult<Response> {
    let status = StatusFilter::parse(&filters.status);
    let (results, code) = match parse_selector(&filters.label) {
        Ok(labels) => {
            let query = DeviceQuery {
                labels,
                status,
                text: filters.q.clone(),
                page: filters.page.trim().parse().unwrap_or(1),
                per_page: filters.per_page.trim().parse().unwrap_or(0),
            };
            let page = state.service.list_devices(&query).await?;
            (results(&state, &filters, &page), StatusCode::OK)
        }
        Err(e) => (
            html! {
                div id=(RESULTS) {
                    p role="alert" class="rounded-md border border-red-300 bg-red-50 p-3 text-sm text-red-800" { (e.to_string()) }
                    table class="sr-only" { tbody id="device-rows" {} }
                }
            },
            StatusCode::BAD_REQUEST,
        ),
    };
    if layout::is_htmx(&headers) && headers.get("hx-target").is_some_and(|t| t == RESULTS) {
        return Ok((code, results).into_response());
    }
    let body = html! {
        form role="search" aria-label="Filter devices" class="mb-4 flex flex-wrap items-end gap-3"
            action="/devices" method="get"
            hx-get="/devices" hx-target={ "#" (RESULTS) } hx-swap="outerHTML" hx-push-url="true"
            hx-trigger="input changed delay:300ms from:#label-filter, input changed delay:300ms from:#text-filter, change from:#status-filter, submit" {
            div class="flex flex-col" {
                label for="text-filter" class="text-sm font-medium" { "Search" }
                input id="text-filter" name="q" type="search" value=(filters.q)
                    placeholder="id, label, arch" class="rounded border border-slate-300 px-2 py-1";
            }
            div class="flex flex-col" {
                label for="label-filter" class="text-sm font-medium" { "Label" }
                input id="label-filter" name="label" type="search" value=(filters.label)
                    placeholder="site=plant-3,line!=b" class="rounded border border-slate-300 px-2 py-1";
            }
            div class="flex flex-col" {
                label for="status-filter" class="text-sm font-medium" { "Status" }
                select id="status-filter" name="status" class="rounded border border-slate-300 px-2 py-1" {
                    option value="" selected[status.is_none()] { "any" }
                    @for s in StatusFilter::ALL {
                        option value=(s.as_str()) selected[status == Some(s)] { (s.as_str()) }
                    }
                }
            }
            button type="submit" class="rounded bg-slate-900 px-3 py-1.5 text-white" { "Filter" }
        }
        (results)
    };
    Ok((code, layout::page(&state, "Devices", Nav::Devices, body)).into_response())
}

/// The count, the rows and the page links: what a filter or page change replaces.
fn results(state: &WebState, filters: &Filters, page: &DevicePage) -> Markup {
    let first = page.page.saturating_sub(1) * page.per_page + 1;
    let last = first + page.devices.len().saturating_sub(1);
    html! {
        div id=(RESULTS) {
            p class="mb-2 text-sm text-slate-600" aria-live="polite" data-total=(page.total_matched) {
                (page.total_matched) " matching device(s)"
                @if page.pages > 1 {
                    ", " (first) "–" (last) " shown (page " (page.page) " of " (page.pages) ")"
                }
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
                    tbody id="device-rows" {
                        @for d in &page.devices { (row(state, d)) }
                        @if page.devices.is_empty() {
                            tr { td colspan="5" class="p-3 text-slate-600" { "No device matches these filters." } }
                        }
                    }
                }
            }
            (pager::links(page.page, page.pages, &format!("#{RESULTS}"), |n| filters.href(n)))
        }
    }
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
