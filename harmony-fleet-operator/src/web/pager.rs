//! Page links of a long list (the devices page): previous / next, the first and last page,
//! and the pages around the current one, each an ordinary link that HTMX follows by swapping
//! only the results (so it works without JavaScript too).

use maud::{Markup, html};

/// The page numbers to link, in order; `None` is a gap ("…"). Always the first and last page
/// and two either side of `page`, so a 2000-page list stays a short row.
pub fn window(page: usize, pages: usize) -> Vec<Option<usize>> {
    let pages = pages.max(1);
    let page = page.clamp(1, pages);
    let (from, to) = (page.saturating_sub(2).max(1), (page + 2).min(pages));
    let mut out = Vec::new();
    if from > 1 {
        out.push(Some(1));
        if from > 2 {
            out.push(None);
        }
    }
    out.extend((from..=to).map(Some));
    if to < pages {
        if to + 1 < pages {
            out.push(None);
        }
        out.push(Some(pages));
    }
    out
}

/// The page links; `href(n)` is the URL of page `n`, `target` the element HTMX replaces.
pub fn links(page: usize, pages: usize, target: &str, href: impl Fn(usize) -> String) -> Markup {
    let link = |n: usize, label: &str, aria: String| {
        let url = href(n);
        html! {
            a class="rounded border border-slate-300 px-2 py-1 hover:bg-slate-100" href=(url)
                hx-get=(url) hx-target=(target) hx-swap="outerHTML" hx-push-url="true"
                aria-label=(aria) { (label) }
        }
    };
    html! {
        @if pages > 1 {
            nav aria-label="Pages" class="mt-3 flex flex-wrap items-center gap-1 text-sm" {
                @if page > 1 { (link(page - 1, "Previous", "Previous page".into())) }
                @for n in window(page, pages) {
                    @match n {
                        Some(n) if n == page => {
                            span aria-current="page" class="rounded bg-slate-900 px-2 py-1 text-white" { (n) }
                        }
                        Some(n) => (link(n, &n.to_string(), format!("Page {n}"))),
                        None => span class="px-1 text-slate-500" aria-hidden="true" { "…" },
                    }
                }
                @if page < pages { (link(page + 1, "Next", "Next page".into())) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_keep_both_ends_and_the_neighbourhood() {
        assert_eq!(window(1, 1), [Some(1)]);
        assert_eq!(window(1, 3), [Some(1), Some(2), Some(3)]);
        assert_eq!(
            window(1, 1000),
            [Some(1), Some(2), Some(3), None, Some(1000)]
        );
        assert_eq!(
            window(500, 1000),
            [
                Some(1),
                None,
                Some(498),
                Some(499),
                Some(500),
                Some(501),
                Some(502),
                None,
                Some(1000)
            ]
        );
        assert_eq!(
            window(1000, 1000),
            [Some(1), None, Some(998), Some(999), Some(1000)]
        );
        // No gap where a single page would hide.
        assert_eq!(
            window(4, 7),
            [
                Some(1),
                Some(2),
                Some(3),
                Some(4),
                Some(5),
                Some(6),
                Some(7)
            ]
        );
        // Out-of-range pages are clamped.
        assert_eq!(window(9, 2), [Some(1), Some(2)]);
    }

    #[test]
    fn links_mark_the_current_page_and_use_htmx() {
        let html = links(2, 3, "#results", |n| format!("/devices?page={n}")).into_string();
        assert!(html.contains(r#"aria-current="page""#));
        assert!(html.contains(r#"hx-get="/devices?page=3""#));
        assert!(html.contains("Previous") && html.contains("Next"));
        assert!(
            links(1, 1, "#r", |n| n.to_string())
                .into_string()
                .is_empty()
        );
    }
}
