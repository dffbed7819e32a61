//! The `agent-binaries` object store: agent builds for self-upgrade ([`AgentV0`]), each stored
//! under its SHA-256 (lowercase hex) as the object name. Deploy tooling writes it; every device
//! may read it and nothing else (adr/0043).
//!
//! Devices cannot create consumers (see [`crate::permissions`]), so they do not read objects
//! the way `async_nats`' object store does (an ordered consumer on the chunks). They read with
//! direct gets, the only read that needs no consumer:
//!
//! | step | subject | body |
//! |---|---|---|
//! | the object's metadata | [`meta_direct_get`]: `$JS.API.DIRECT.GET.OBJ_agent-binaries.$O.agent-binaries.M.<base64url(name)>` | empty |
//! | each chunk, in order | [`chunk_direct_get`]: `$JS.API.DIRECT.GET.OBJ_agent-binaries` | `{"seq": <after the last>, "next_by_subj": "$O.agent-binaries.C.<nuid>"}` |
//!
//! The batch form carries its subject in the body, so it is granted only on this stream, whose
//! contents every device may read anyway (binaries are not secrets; the SHA-256 they are named
//! by is checked by the agent on the bytes it assembled).
//!
//! [`AgentV0`]: crate::payload::AgentV0

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use serde::Deserialize;

use crate::jetstream::API_PREFIX;

/// The object store's bucket name (stream `OBJ_agent-binaries`).
pub const AGENT_BINARIES: &str = "agent-binaries";

/// Largest agent binary a device downloads (bytes). A static agent is ~15 MiB.
pub const MAX_BINARY_BYTES: u64 = 128 * 1024 * 1024;

/// The bucket's byte limit: a few builds of a few architectures. Reserved on each server like
/// the device buckets' (adr/0042).
pub const BUCKET_MAX_BYTES: i64 = 512 * 1024 * 1024;

/// The stream behind the bucket.
pub fn stream_name() -> String {
    format!("OBJ_{AGENT_BINARIES}")
}

/// The subject holding the metadata of object `name`.
pub fn meta_subject(name: &str) -> String {
    format!("$O.{AGENT_BINARIES}.M.{}", URL_SAFE.encode(name))
}

/// The subject holding the chunks of the object whose metadata says `nuid`.
pub fn chunk_subject(nuid: &str) -> String {
    format!("$O.{AGENT_BINARIES}.C.{nuid}")
}

/// Direct get of the metadata of object `name` (the last message on [`meta_subject`]).
pub fn meta_direct_get(name: &str) -> String {
    format!(
        "{API_PREFIX}.DIRECT.GET.{}.{}",
        stream_name(),
        meta_subject(name)
    )
}

/// Every metadata subject, as a permission pattern.
pub fn meta_direct_get_pattern() -> String {
    format!(
        "{API_PREFIX}.DIRECT.GET.{}.$O.{AGENT_BINARIES}.M.>",
        stream_name()
    )
}

/// Direct get with the request in the body: the next chunk (see the module documentation).
pub fn chunk_direct_get() -> String {
    format!("{API_PREFIX}.DIRECT.GET.{}", stream_name())
}

/// The body of a chunk read: the first message on `chunk_subject(nuid)` at or after `seq`.
pub fn chunk_request(nuid: &str, seq: u64) -> Vec<u8> {
    serde_json::json!({ "seq": seq, "next_by_subj": chunk_subject(nuid) })
        .to_string()
        .into_bytes()
}

/// What an object's metadata message holds (the fields the agent needs; the object store
/// writes more).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ObjectMeta {
    /// The object's name: the binary's SHA-256.
    pub name: String,
    /// Where its chunks are ([`chunk_subject`]).
    pub nuid: String,
    /// Total bytes.
    #[serde(default)]
    pub size: u64,
    /// Number of chunk messages.
    #[serde(default)]
    pub chunks: u64,
    /// `true` once deleted (its chunks are gone).
    #[serde(default)]
    pub deleted: bool,
}

/// `true` when `sha256` is a SHA-256 as objects are named: 64 lowercase hex digits.
pub fn is_sha256_hex(sha256: &str) -> bool {
    sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_the_object_stores() {
        assert_eq!(stream_name(), "OBJ_agent-binaries");
        // async-nats and nats.go encode names with URL-safe base64, padded.
        assert_eq!(meta_subject("ab"), "$O.agent-binaries.M.YWI=");
        assert_eq!(chunk_subject("N1"), "$O.agent-binaries.C.N1");
        assert_eq!(
            meta_direct_get("ab"),
            "$JS.API.DIRECT.GET.OBJ_agent-binaries.$O.agent-binaries.M.YWI="
        );
        assert!(crate::subject::matches(
            &meta_direct_get_pattern(),
            &meta_direct_get("ab")
        ));
        let body: serde_json::Value =
            serde_json::from_slice(&chunk_request("N1", 7)).expect("json");
        assert_eq!(body["seq"], 7);
        assert_eq!(body["next_by_subj"], "$O.agent-binaries.C.N1");
    }

    #[test]
    fn object_names_are_lowercase_sha256() {
        assert!(is_sha256_hex(&"a1".repeat(32)));
        assert!(!is_sha256_hex(&"A1".repeat(32)));
        assert!(!is_sha256_hex("a1"));
        assert!(!is_sha256_hex(&"g1".repeat(32)));
    }

    #[test]
    fn reads_the_object_stores_metadata() {
        let meta: ObjectMeta = serde_json::from_str(
            r#"{"name":"x","bucket":"agent-binaries","nuid":"N1","size":300000,"chunks":3,"mtime":"2026-12-07T00:00:00Z","digest":"SHA-256=abc"}"#,
        )
        .expect("meta");
        assert_eq!(
            (meta.nuid.as_str(), meta.size, meta.chunks, meta.deleted),
            ("N1", 300_000, 3, false)
        );
    }
}
