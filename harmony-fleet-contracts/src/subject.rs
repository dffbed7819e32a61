//! NATS subject syntax: token checks and the `*` / `>` wildcard matcher.
//!
//! The permission templates in [`crate::permissions`] are lists of subject patterns; this matcher
//! lets tests (and tools) check a concrete subject — or a subscription pattern — against them
//! without a server. It follows nats-server's rules:
//!
//! - subjects are `.`-separated, non-empty tokens;
//! - `*` in a pattern matches exactly one token;
//! - `>` in a pattern matches one or more trailing tokens and must be the last token.
//!
//! When the *subject* side itself contains wildcards (a subscription such as `_INBOX_a.>`, or
//! the extended consumer-create subject whose tail is the filter `$KV.b.a.>`), [`matches()`]
//! answers whether the pattern covers **every** subject the wildcard could stand for — the
//! conservative reading, and the one nats-server applies: a `*` or `>` token on the subject
//! side is only covered by a wildcard on the pattern side.

/// Returns `true` when `pattern` (which may contain `*` and `>`) covers `subject`.
///
/// Malformed input (empty tokens, `>` not in last position) never matches, so a typo in a
/// template denies rather than allows.
pub fn matches(pattern: &str, subject: &str) -> bool {
    if !is_valid_subject(pattern) || !is_valid_subject(subject) {
        return false;
    }
    let mut pattern_tokens = pattern.split('.');
    let mut subject_tokens = subject.split('.');
    loop {
        match (pattern_tokens.next(), subject_tokens.next()) {
            (None, None) => return true,
            // `>` needs at least one token to stand for; the subject has one here.
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(token)) => {
                if token == ">" {
                    // A `>` subject token stands for several tokens; `*` covers only one.
                    return false;
                }
            }
            (Some(expected), Some(token)) => {
                if expected != token {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// Returns `true` when `subject` is syntactically valid: non-empty tokens without whitespace,
/// and `>` (if present) only as the whole last token. Wildcards are allowed.
pub fn is_valid_subject(subject: &str) -> bool {
    if subject.is_empty() {
        return false;
    }
    let mut tokens = subject.split('.').peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() || token.chars().any(char::is_whitespace) {
            return false;
        }
        if token.contains('>') && (token != ">" || tokens.peek().is_some()) {
            return false;
        }
        if token.contains('*') && token != "*" {
            return false;
        }
    }
    true
}

/// Returns `true` when `token` can be used as one literal subject token: non-empty, no `.`,
/// no wildcard characters, no whitespace.
pub fn is_literal_token(token: &str) -> bool {
    !token.is_empty()
        && !token
            .chars()
            .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_pattern_matches_only_itself() {
        assert!(matches("a.b.c", "a.b.c"));
        assert!(!matches("a.b.c", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(!matches("a.b.c", "a.b.d"));
    }

    #[test]
    fn star_matches_exactly_one_token() {
        assert!(matches("a.*.c", "a.b.c"));
        assert!(matches("a.*", "a.x"));
        assert!(!matches("a.*", "a"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(!matches("a.*.c", "a.b.d"));
    }

    #[test]
    fn full_wildcard_matches_one_or_more_trailing_tokens() {
        assert!(matches("a.>", "a.b"));
        assert!(matches("a.>", "a.b.c.d"));
        assert!(!matches("a.>", "a"));
        assert!(!matches("a.>", "b.c"));
        assert!(matches(">", "anything.at.all"));
    }

    #[test]
    fn wildcard_subject_is_covered_only_by_wildcard_pattern() {
        assert!(matches("a.>", "a.>"));
        assert!(matches("a.>", "a.*"));
        assert!(matches("a.*", "a.*"));
        assert!(!matches("a.*", "a.>"));
        assert!(!matches("a.b", "a.*"));
        assert!(!matches("a.b.>", "a.>"));
        assert!(matches("x.*.a.b.>", "x.name.a.b.>"));
        assert!(!matches("x.*.a.b.>", "x.name.a.>"));
    }

    #[test]
    fn malformed_subjects_never_match() {
        assert!(!matches("a..b", "a..b"));
        assert!(!matches("a.>.b", "a.x.b"));
        assert!(!matches("", ""));
        assert!(!matches("a.b*", "a.b*"));
        assert!(!matches("a. b", "a. b"));
        assert!(!matches("a.b", "a.b."));
    }

    #[test]
    fn validates_subject_syntax() {
        assert!(is_valid_subject("$JS.API.STREAM.INFO.KV_device-info"));
        assert!(is_valid_subject("a.*.>"));
        assert!(!is_valid_subject("a.>.b"));
        assert!(!is_valid_subject(".a"));
        assert!(!is_valid_subject("a."));
        assert!(!is_valid_subject("a b"));
    }

    #[test]
    fn literal_token_rejects_separators_and_wildcards() {
        assert!(is_literal_token("pi-1"));
        assert!(!is_literal_token("a.b"));
        assert!(!is_literal_token("*"));
        assert!(!is_literal_token(">"));
        assert!(!is_literal_token(""));
        assert!(!is_literal_token("a\tb"));
    }
}
