//! How an [`Attention`] item looks, the same on the overview and the deployments pages: the
//! operator's reason as a badge (with the condition it comes from) and its message, and the
//! failing devices linked to their pages.

use maud::{Markup, html};

use super::layout::{self, Tone};
use crate::service::{Attention, AttentionKind};

/// The colour of a kind of trouble.
pub fn tone(kind: AttentionKind) -> Tone {
    match kind {
        AttentionKind::Refused | AttentionKind::NameConflict | AttentionKind::Failing => Tone::Bad,
        AttentionKind::Stopped | AttentionKind::NoMatchingDevices | AttentionKind::Offline => {
            Tone::Warn
        }
    }
}

/// The items of one deployment, as a list (nothing when there are none).
pub fn list(items: &[Attention]) -> Markup {
    html! {
        @if !items.is_empty() {
            ul class="space-y-1" aria-label="Needs attention" {
                @for item in items {
                    li class="text-sm" data-attention=(item.reason) {
                        (layout::badge(&item.reason, tone(item.kind)))
                        @if let Some(c) = &item.condition {
                            span class="ml-1 text-xs text-slate-500" { (c) }
                        }
                        p class="break-words text-slate-700" { (item.message) }
                        @if !item.devices.is_empty() {
                            ul class="ml-3 list-disc text-xs text-slate-600" {
                                @for (device, error) in &item.devices {
                                    li class="break-words" {
                                        a class="text-blue-700 underline" href={ "/devices/" (device) } { (device) }
                                        ": " (error)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
