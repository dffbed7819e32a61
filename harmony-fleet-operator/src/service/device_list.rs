//! The devices page's filtering and paging, as one pure function over the fleet view.
//!
//! A fleet of 100k devices cannot be sent to the browser, so the server filters (label
//! selector, status, free text) and cuts one page. [`select`] does both in one pass over
//! whatever the service keeps, borrowing: it reads each device through [`DeviceFacts`] (so the
//! real service's view and the mock's map both qualify), checks the cheap filters first, and
//! keeps only the page's rows. The caller turns those few rows into
//! [`DeviceSummary`](super::DeviceSummary) values; nothing is cloned for the other 99 950.
//!
//! [`parse_selector`] reads the label filter the way `kubectl -l` does (`k=v`, `k!=v`, `k`,
//! `!k`, `k in (a,b)`, `k notin (a,b)`, comma-separated), into the operator's own
//! [`Selector`], so the page and a Deployment's `targetSelector` mean the same thing.

use std::collections::BTreeSet;

use harmony_fleet_contracts::ids::DeviceId;

use super::{DeviceQuery, StatusFilter};
use crate::index::{Labels, Operator, Requirement, Selector};

/// What the device list filters on, read lazily: `online` and `failing` may cost a lookup
/// each, so they are asked only when a status filter needs them.
pub trait DeviceFacts {
    /// Device id.
    fn id(&self) -> &DeviceId;
    /// Labels the agent reports.
    fn labels(&self) -> &Labels;
    /// A heartbeat arrived within the timeout.
    fn online(&self) -> bool;
    /// The operator writes no desired state for it.
    fn blacklisted(&self) -> bool;
    /// At least one of its deployments reports `Failed`.
    fn failing(&self) -> bool;
    /// Architecture and agent version, which free text also searches.
    fn text_fields(&self) -> [&str; 2];
}

/// One page of the filtered list, and where it sits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection<T> {
    /// The page's devices, in the order they came.
    pub items: Vec<T>,
    /// How many devices pass the filters.
    pub total_matched: usize,
    /// 1-based page shown (the last page when the one asked for is past the end).
    pub page: usize,
    /// Pages in total (at least 1).
    pub pages: usize,
    /// Rows per page.
    pub per_page: usize,
}

/// Whether `device` passes the status filter.
pub fn status_matches(filter: StatusFilter, device: &impl DeviceFacts) -> bool {
    match filter {
        StatusFilter::Online => device.online(),
        StatusFilter::Offline => !device.online(),
        StatusFilter::Blacklisted => device.blacklisted(),
        StatusFilter::Failing => device.failing(),
    }
}

/// Whether `device` passes every filter of `query` (label selector, then free text, then
/// status: the cheapest first).
pub fn matches(query: &DeviceQuery, needle: &str, device: &impl DeviceFacts) -> bool {
    query.labels.matches(device.labels())
        && (needle.is_empty() || text_matches(needle, device))
        && query.status.is_none_or(|s| status_matches(s, device))
}

/// Free text: `needle` (already lower-case) in the id, a label key or value, the
/// architecture or the agent version, ignoring ASCII case.
fn text_matches(needle: &str, device: &impl DeviceFacts) -> bool {
    contains_ignore_case(device.id().as_str(), needle)
        || device
            .labels()
            .iter()
            .any(|(k, v)| contains_ignore_case(k, needle) || contains_ignore_case(v, needle))
        || device
            .text_fields()
            .iter()
            .any(|f| contains_ignore_case(f, needle))
}

/// `haystack` contains `needle` (lower-case), ASCII case ignored; no allocation per device.
fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    n.is_empty()
        || h.windows(n.len())
            .any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b))
}

/// Filters `devices` by `query` and cuts the page it asks for, in one pass. A page past the
/// end gives the last page (a filter that shrank the list keeps showing rows).
pub fn select<T: DeviceFacts>(
    devices: impl IntoIterator<Item = T>,
    query: &DeviceQuery,
) -> Selection<T> {
    let per_page = query.effective_per_page();
    let wanted = query.page.max(1) - 1;
    let needle = query.text.trim().to_ascii_lowercase();
    let mut total = 0usize;
    let mut items = Vec::new();
    // The page being filled as matches go by: the wanted one, or the latest one (so a page
    // past the end can fall back to the last page without a second pass).
    let mut window = Vec::new();
    for device in devices {
        if !matches(query, &needle, &device) {
            continue;
        }
        let position = total;
        total += 1;
        if position / per_page == wanted {
            items.push(device);
        } else if items.is_empty() {
            if position.is_multiple_of(per_page) {
                window.clear();
            }
            window.push(device);
        }
    }
    let pages = total.div_ceil(per_page).max(1);
    let page = if items.is_empty() && total > 0 {
        items = window;
        pages
    } else {
        wanted + 1
    };
    Selection {
        items,
        total_matched: total,
        page,
        pages,
        per_page,
    }
}

/// A label filter that cannot be read, naming the term and what would be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A term has no key (`=v`, `!`, `in (a)`).
    #[error("label filter term {term:?} has no key: write key=value, key!=value, key or !key")]
    NoKey {
        /// The term as typed.
        term: String,
    },
    /// A key with characters a label key cannot have.
    #[error(
        "label filter term {term:?}: {key:?} is not a label key (letters, digits, '-', '_', '.', '/')"
    )]
    BadKey {
        /// The term as typed.
        term: String,
        /// The key read from it.
        key: String,
    },
    /// `in`/`notin` without a closed `( … )` list.
    #[error("label filter term {term:?}: write the values in parentheses, e.g. site in (a, b)")]
    BadSet {
        /// The term as typed.
        term: String,
    },
    /// Parentheses that do not pair up.
    #[error("label filter {text:?} has unbalanced parentheses")]
    Unbalanced {
        /// The whole filter.
        text: String,
    },
}

/// Reads a `kubectl -l` style selector: comma-separated `k=v` (or `k==v`), `k!=v`, `k`, `!k`,
/// `k in (a,b)`, `k notin (a,b)`; all must hold. Blank text selects every device.
pub fn parse_selector(text: &str) -> Result<Selector, SelectorError> {
    let mut selector = Selector::default();
    for term in split_terms(text)? {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        let requirement = parse_term(term)?;
        match requirement {
            Term::Equals(k, v) => {
                selector.match_labels.insert(k, v);
            }
            Term::Requirement(r) => selector.match_expressions.push(r),
        }
    }
    Ok(selector)
}

enum Term {
    Equals(String, String),
    Requirement(Requirement),
}

/// Splits on commas outside parentheses.
fn split_terms(text: &str) -> Result<Vec<&str>, SelectorError> {
    let unbalanced = || SelectorError::Unbalanced {
        text: text.to_owned(),
    };
    let (mut terms, mut depth, mut start) = (Vec::new(), 0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or_else(unbalanced)?,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(unbalanced());
    }
    terms.push(&text[start..]);
    Ok(terms)
}

fn parse_term(term: &str) -> Result<Term, SelectorError> {
    let key_of = |key: &str| -> Result<String, SelectorError> {
        let key = key.trim();
        if key.is_empty() {
            return Err(SelectorError::NoKey {
                term: term.to_owned(),
            });
        }
        let ok = key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if ok {
            Ok(key.to_owned())
        } else {
            Err(SelectorError::BadKey {
                term: term.to_owned(),
                key: key.to_owned(),
            })
        }
    };
    let requirement = |key: &str, operator, values: BTreeSet<String>| {
        Ok(Term::Requirement(Requirement {
            key: key_of(key)?,
            operator,
            values,
        }))
    };
    if let Some((k, v)) = term.split_once("!=") {
        return requirement(k, Operator::NotIn, [v.trim().to_owned()].into());
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Term::Equals(key_of(k)?, v.trim().to_owned()));
    }
    if let Some(k) = term.strip_prefix('!') {
        return requirement(k, Operator::DoesNotExist, BTreeSet::new());
    }
    for (word, operator) in [(" notin ", Operator::NotIn), (" in ", Operator::In)] {
        if let Some((k, rest)) = term.split_once(word) {
            let values = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| SelectorError::BadSet {
                    term: term.to_owned(),
                })?;
            let values = values
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .collect();
            return requirement(k, operator, values);
        }
    }
    if term.contains('(') {
        return Err(SelectorError::BadSet {
            term: term.to_owned(),
        });
    }
    requirement(term, Operator::Exists, BTreeSet::new())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Dev {
        id: DeviceId,
        labels: Labels,
        online: bool,
        blacklisted: bool,
        failing: bool,
    }

    impl DeviceFacts for &Dev {
        fn id(&self) -> &DeviceId {
            &self.id
        }
        fn labels(&self) -> &Labels {
            &self.labels
        }
        fn online(&self) -> bool {
            self.online
        }
        fn blacklisted(&self) -> bool {
            self.blacklisted
        }
        fn failing(&self) -> bool {
            self.failing
        }
        fn text_fields(&self) -> [&str; 2] {
            ["aarch64", "0.1.0"]
        }
    }

    /// `n` devices `dev-0000…`: site `s<i % 3>`, every 4th offline, every 10th failing,
    /// device 7 blacklisted.
    fn fleet(n: usize) -> Vec<Dev> {
        (0..n)
            .map(|i| Dev {
                id: DeviceId::new(format!("dev-{i:04}")).expect("valid id"),
                labels: BTreeMap::from([("site".to_owned(), format!("s{}", i % 3))]),
                online: i % 4 != 0,
                blacklisted: i == 7,
                failing: i % 10 == 0,
            })
            .collect()
    }

    fn ids(s: &Selection<&Dev>) -> Vec<String> {
        s.items.iter().map(|d| d.id.to_string()).collect()
    }

    fn query(labels: &str, status: Option<StatusFilter>, text: &str) -> DeviceQuery {
        DeviceQuery {
            labels: parse_selector(labels).expect("selector"),
            status,
            text: text.to_owned(),
            ..DeviceQuery::default()
        }
    }

    #[test]
    fn pages_cut_the_list_and_count_everything() {
        let fleet = fleet(250);
        let q = DeviceQuery {
            per_page: 100,
            page: 2,
            ..DeviceQuery::default()
        };
        let s = select(&fleet, &q);
        assert_eq!((s.total_matched, s.page, s.pages), (250, 2, 3));
        assert_eq!(s.items.len(), 100);
        assert_eq!(s.items[0].id.as_str(), "dev-0100");
        let last = select(
            &fleet,
            &DeviceQuery {
                page: 3,
                ..q.clone()
            },
        );
        assert_eq!(last.items.len(), 50);
        assert_eq!(last.items[49].id.as_str(), "dev-0249");
    }

    #[test]
    fn a_page_past_the_end_shows_the_last_page_and_page_zero_the_first() {
        let fleet = fleet(250);
        let q = DeviceQuery {
            per_page: 100,
            page: 99,
            ..DeviceQuery::default()
        };
        let s = select(&fleet, &q);
        assert_eq!((s.page, s.pages, s.items.len()), (3, 3, 50));
        assert_eq!(s.items[0].id.as_str(), "dev-0200");
        let first = select(&fleet, &DeviceQuery { page: 0, ..q });
        assert_eq!((first.page, first.items[0].id.as_str()), (1, "dev-0000"));
        // Exactly full pages: past the end is the last full page.
        let s = select(
            &fleet[..200],
            &DeviceQuery {
                per_page: 100,
                page: 5,
                ..DeviceQuery::default()
            },
        );
        assert_eq!(
            (s.page, s.pages, s.items[0].id.as_str()),
            (2, 2, "dev-0100")
        );
    }

    #[test]
    fn nothing_matching_is_one_empty_page() {
        let fleet = fleet(10);
        let s = select(&fleet, &query("site=nowhere", None, ""));
        assert_eq!((s.total_matched, s.page, s.pages), (0, 1, 1));
        assert!(s.items.is_empty());
    }

    #[test]
    fn label_status_and_text_filters_combine() {
        let fleet = fleet(40);
        let s = select(&fleet, &query("site=s0", Some(StatusFilter::Offline), ""));
        // site s0: i % 3 == 0; offline: i % 4 == 0 → i % 12 == 0.
        assert_eq!(ids(&s), ["dev-0000", "dev-0012", "dev-0024", "dev-0036"]);
        let s = select(&fleet, &query("", Some(StatusFilter::Failing), "DEV-002"));
        assert_eq!(ids(&s), ["dev-0020"]);
        let s = select(&fleet, &query("", Some(StatusFilter::Blacklisted), ""));
        assert_eq!(ids(&s), ["dev-0007"]);
        let s = select(&fleet, &query("site!=s0,site!=s1", None, "003"));
        assert_eq!(ids(&s), ["dev-0032", "dev-0035", "dev-0038"]);
        // Free text finds label values and the text fields too.
        assert_eq!(select(&fleet, &query("", None, "S2")).total_matched, 13);
        assert_eq!(select(&fleet, &query("", None, "aarch")).total_matched, 40);
        assert_eq!(select(&fleet, &query("", None, "  ")).total_matched, 40);
    }

    #[test]
    fn selectors_read_like_kubectl() {
        let s = parse_selector(
            "site=plant-3, line==a,arch in (x86_64, aarch64),!gpu,tier,zone notin (z1),env!=prod",
        )
        .expect("parses");
        assert_eq!(
            s.match_labels,
            BTreeMap::from([
                ("site".to_owned(), "plant-3".to_owned()),
                ("line".to_owned(), "a".to_owned())
            ])
        );
        let ops: Vec<(&str, Operator, usize)> = s
            .match_expressions
            .iter()
            .map(|r| (r.key.as_str(), r.operator, r.values.len()))
            .collect();
        assert_eq!(
            ops,
            [
                ("arch", Operator::In, 2),
                ("gpu", Operator::DoesNotExist, 0),
                ("tier", Operator::Exists, 0),
                ("zone", Operator::NotIn, 1),
                ("env", Operator::NotIn, 1),
            ]
        );
        assert_eq!(parse_selector("  ").expect("blank"), Selector::default());
    }

    #[test]
    fn bad_selectors_name_the_term() {
        for (text, needle) in [
            ("=x", "has no key"),
            ("site in a,b", "in parentheses"),
            ("si te=x", "is not a label key"),
            ("site in (a", "unbalanced"),
            ("a)", "unbalanced"),
            ("f(x)", "in parentheses"),
        ] {
            let e = parse_selector(text).expect_err(text).to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn case_is_ignored_without_allocating() {
        assert!(contains_ignore_case("Plant-3", "plant"));
        assert!(!contains_ignore_case("pla", "plant"));
        assert!(contains_ignore_case("x", ""));
    }
}
