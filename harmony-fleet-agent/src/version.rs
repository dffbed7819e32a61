//! The version this binary reports, and the stamp that sets it after the build.
//!
//! Builds published for self-upgrade may carry a version that is not the crate's (a CI build
//! number, a release candidate). Rather than rebuilding, deploy tooling *stamps* the finished
//! binary: `STAMP` is a fixed-size byte array starting with a unique marker, kept in the
//! binary by `#[used]`, and [`stamp`] writes the version after the marker in the file's bytes.
//! [`current`] reads the array with volatile reads, so the compiler cannot fold the
//! (unstamped, all-NUL) contents into a constant.

/// Total size of the stamp area.
const STAMP_LEN: usize = 128;

/// The marker the stamp area starts with. Only used in const context: the bytes appear once in
/// the binary, inside [`STAMP`].
const MARKER: &[u8] = b"HARMONY-FLEET-AGENT-VERSION-STAMP:";

/// Longest version a stamp holds.
pub const MAX_STAMPED_VERSION: usize = STAMP_LEN - MARKER.len();

const fn unstamped() -> [u8; STAMP_LEN] {
    let mut area = [0u8; STAMP_LEN];
    let mut i = 0;
    while i < MARKER.len() {
        area[i] = MARKER[i];
        i += 1;
    }
    area
}

/// The stamp area: the marker, then the stamped version, NUL-padded (all NULs: unstamped).
#[used]
static STAMP: [u8; STAMP_LEN] = unstamped();

/// The version this binary reports: the stamped one if the binary was stamped, else the
/// crate's version.
pub fn current() -> String {
    let mut version = Vec::with_capacity(MAX_STAMPED_VERSION);
    for i in MARKER.len()..STAMP_LEN {
        let byte = stamp_byte(i);
        if byte == 0 {
            break;
        }
        version.push(byte);
    }
    match String::from_utf8(version) {
        Ok(version) if !version.is_empty() => version,
        _ => env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// The marker's bytes, read from the stamp area at run time (so no second copy of them is
/// compiled into the binary for [`stamp`] to trip over).
fn marker() -> Vec<u8> {
    (0..MARKER.len()).map(stamp_byte).collect()
}

/// Byte `i` of [`STAMP`], read as memory (the file may have been stamped after the build).
/// The crate's one `unsafe`: there is no safe volatile read.
#[allow(unsafe_code)]
fn stamp_byte(i: usize) -> u8 {
    let Some(byte) = STAMP.get(i) else {
        return 0;
    };
    // SAFETY: `byte` is a reference into a live static, so the pointer is valid, aligned and
    // initialised; a volatile read of a `u8` has no other requirement.
    unsafe { std::ptr::read_volatile(byte) }
}

/// Why a binary could not be stamped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StampError {
    /// The version does not fit or has characters a version cannot have.
    #[error(
        "version {version:?} cannot be stamped: it must be 1 to {MAX_STAMPED_VERSION} bytes \
         without NUL (e.g. 0.1.1)"
    )]
    BadVersion {
        /// The rejected version.
        version: String,
    },
    /// No stamp area: not a fleet-agent binary, or one built before stamping existed.
    #[error(
        "the binary has no version stamp area: it is not a fleet-agent binary (or one older \
         than stamping); build fleet-agent from this repository"
    )]
    NoMarker,
    /// More than one stamp area: the file is not a single agent binary.
    #[error(
        "the binary has {count} version stamp areas, expected exactly one: pass a single \
         fleet-agent binary, not an archive or a concatenation"
    )]
    Ambiguous {
        /// How many markers were found.
        count: usize,
    },
}

/// Writes `version` into the stamp area of an agent binary's bytes (NUL-padded), replacing
/// any earlier stamp. The marker must occur exactly once.
pub fn stamp(binary: &mut [u8], version: &str) -> Result<(), StampError> {
    if version.is_empty() || version.len() > MAX_STAMPED_VERSION || version.contains('\0') {
        return Err(StampError::BadVersion {
            version: version.to_owned(),
        });
    }
    let marker = marker();
    let found = find_all(binary, &marker);
    let at = match found.as_slice() {
        [] => return Err(StampError::NoMarker),
        [at] => *at,
        more => return Err(StampError::Ambiguous { count: more.len() }),
    };
    let start = at + marker.len();
    let end = at + STAMP_LEN;
    let Some(area) = binary.get_mut(start..end) else {
        // The marker sits at the very end of the file: truncated, not a whole stamp area.
        return Err(StampError::NoMarker);
    };
    area.fill(0);
    area[..version.len()].copy_from_slice(version.as_bytes());
    Ok(())
}

/// Every offset where `needle` starts in `haystack`.
fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    let Some((&first, _)) = needle.split_first() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = haystack
        .get(from..)
        .and_then(|rest| rest.iter().position(|&b| b == first))
    {
        let at = from + offset;
        if haystack.get(at..at + needle.len()) == Some(needle) {
            found.push(at);
        }
        from = at + 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary_with_marker() -> Vec<u8> {
        let mut bytes = b"\x7fELF some code".to_vec();
        bytes.extend_from_slice(&marker());
        bytes.extend_from_slice(&[0u8; STAMP_LEN]);
        bytes.extend_from_slice(b"more code");
        bytes
    }

    #[test]
    fn an_unstamped_binary_reports_the_crate_version() {
        assert_eq!(current(), env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn stamping_writes_the_version_after_the_marker() {
        let mut bytes = binary_with_marker();
        let len = bytes.len();
        stamp(&mut bytes, "0.1.1-rc.2").expect("stamp");
        let at = find_all(&bytes, &marker())[0] + MARKER.len();
        assert_eq!(&bytes[at..at + 10], b"0.1.1-rc.2");
        assert!(
            bytes[at + 10..at + MAX_STAMPED_VERSION]
                .iter()
                .all(|&b| b == 0)
        );
        assert_eq!(bytes.len(), len);
        // Stamping again replaces the old stamp entirely.
        stamp(&mut bytes, "2").expect("restamp");
        assert_eq!(&bytes[at..at + 2], b"2\0");
        assert!(bytes.ends_with(b"more code"));
    }

    #[test]
    fn stamping_refuses_bad_versions_and_binaries() {
        let mut bytes = binary_with_marker();
        let long = "9".repeat(MAX_STAMPED_VERSION + 1);
        assert!(matches!(
            stamp(&mut bytes, &long),
            Err(StampError::BadVersion { .. })
        ));
        assert!(matches!(
            stamp(&mut bytes, ""),
            Err(StampError::BadVersion { .. })
        ));
        let mut plain = b"no marker here".to_vec();
        assert_eq!(stamp(&mut plain, "1"), Err(StampError::NoMarker));
        let mut twice = binary_with_marker();
        twice.extend(binary_with_marker());
        assert_eq!(
            stamp(&mut twice, "1"),
            Err(StampError::Ambiguous { count: 2 })
        );
    }

    /// The marker must be in the compiled binary exactly once, or deploy tooling could not
    /// stamp it.
    #[test]
    fn this_test_binary_can_be_stamped() {
        let exe = std::env::current_exe().expect("current exe");
        let mut bytes = std::fs::read(&exe).expect("read the test binary");
        stamp(&mut bytes, "9.9.9").expect("the test binary has exactly one stamp area");
    }
}
