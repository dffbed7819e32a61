//! The reports snapshot's format (adr/0052): every report the core holds, and the
//! `device-state` stream sequence it holds them up to, so that a cold start reads this one
//! object and the messages after that sequence instead of every report.
//!
//! Binary, because it holds a million reports: a table of the revisions (32 bytes each) and
//! one of the devices, then the reports grouped by deployment, each naming its device and
//! revision by their place in the tables. Integers are LEB128 varints. About 6 bytes a report
//! (1.1M reports: ~8 MB).
//!
//! ```text
//! "HFRS" format stream_created seq
//! revisions: n, n × 32 bytes
//! devices:   n, n × (len, utf-8)
//! groups:    n, n × (len, utf-8 deployment name, reports: m (4 bytes LE), m × report)
//! report:    device, revision, flags [error: len, utf-8] [at: zigzag seconds, nanoseconds]
//! flags:     outcome (0 in progress, 1 succeeded, 2 failed) | 4 error | 8 at
//! ```
//!
//! Decoding checks every name, index and length, so a damaged object is refused (the cold
//! start then reads every report) instead of loading wrong reports.

use foldhash::{HashMap, HashMapExt};

use harmony_fleet_contracts::canonical::ContentHash;
use harmony_fleet_contracts::ids::{DeploymentName, DeviceId};
use jiff::Timestamp;

use crate::aggregate::Report;
use crate::rollout::Outcome;

/// What the object starts with.
const MAGIC: &[u8; 4] = b"HFRS";

/// The format this build writes and reads.
pub const SNAPSHOT_FORMAT: u64 = 1;

const OUTCOME_MASK: u8 = 3;
const HAS_ERROR: u8 = 4;
const HAS_AT: u8 = 8;

/// Which `device-state` messages a snapshot accounts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportsMark {
    /// When the `device-state` stream was created (Unix nanoseconds): a stream deleted and
    /// created again numbers its messages from 1, and a snapshot of the old one is not used.
    pub stream_created: u64,
    /// The stream sequence of the last message whose report it holds.
    pub seq: u64,
}

/// A failed report's error and time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedDetail {
    /// The error the device reported.
    pub error: Option<String>,
    /// When its state changed.
    pub at: Option<Timestamp>,
}

/// One report, its device and revision named by their place in the snapshot's tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedReport {
    /// Index into [`ReportsSnapshot::devices`].
    pub device: u32,
    /// Index into [`ReportsSnapshot::revisions`].
    pub rev: u32,
    /// The reported outcome.
    pub outcome: Outcome,
    /// Error and time, for a failed report that has them.
    pub detail: Option<Box<SavedDetail>>,
}

/// A decoded snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportsSnapshot {
    /// What it accounts for.
    pub mark: ReportsMark,
    /// The devices its reports name.
    pub devices: Vec<DeviceId>,
    /// The revisions its reports name.
    pub revisions: Vec<ContentHash>,
    /// The reports, by deployment.
    pub groups: Vec<(DeploymentName, Vec<SavedReport>)>,
}

impl ReportsSnapshot {
    /// How many reports it holds.
    pub fn len(&self) -> usize {
        self.groups.iter().map(|(_, r)| r.len()).sum()
    }

    /// Whether it holds no report.
    pub fn is_empty(&self) -> bool {
        self.groups.iter().all(|(_, r)| r.is_empty())
    }
}

/// Why a snapshot was not decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the reports snapshot does not decode at byte {at}: {what}")]
pub struct SnapshotError {
    /// Where.
    pub at: usize,
    /// What was wrong.
    pub what: String,
}

/// Encodes `reports` (grouped by deployment as [`FleetState::reports`] lists them; a
/// deployment listed in several runs becomes several groups) with `mark`.
///
/// Runs in the reconcile loop at a million reports, so it hashes no string: the tables are
/// keyed by where each device id's text and each revision live (the core holds one shared copy
/// of each; a copy elsewhere only repeats a table row), and each group is written in place,
/// its count filled in after its reports.
///
/// [`FleetState::reports`]: crate::aggregate::FleetState::reports
pub fn encode<'a>(
    mark: ReportsMark,
    reports: impl IntoIterator<Item = (&'a DeploymentName, &'a DeviceId, Report<&'a ContentHash>)>,
) -> Vec<u8> {
    let mut devices: HashMap<usize, u32> = HashMap::new();
    let mut revisions: HashMap<usize, u32> = HashMap::new();
    let (mut device_table, mut revision_table) = (Vec::new(), Vec::new());
    let mut groups = Vec::new();
    let mut group_count = 0u64;
    // The group being written: its name, where its count goes, how many reports so far.
    let mut current: Option<(&DeploymentName, usize, u32)> = None;
    for (deployment, device, report) in reports {
        if current.is_none_or(|(name, _, _)| name != deployment) {
            if let Some((_, at, count)) = current {
                groups[at..at + 4].copy_from_slice(&count.to_le_bytes());
            }
            put_str(&mut groups, deployment.as_str());
            current = Some((deployment, groups.len(), 0));
            groups.extend_from_slice(&[0; 4]);
            group_count += 1;
        }
        let next = devices.len() as u32;
        let device_at = *devices
            .entry(device.as_str().as_ptr() as usize)
            .or_insert_with(|| {
                put_str(&mut device_table, device.as_str());
                next
            });
        let next = revisions.len() as u32;
        let rev_at = *revisions
            .entry(std::ptr::from_ref(report.rev) as usize)
            .or_insert_with(|| {
                revision_table.extend_from_slice(report.rev.as_bytes());
                next
            });
        if let Some((_, _, count)) = current.as_mut() {
            *count += 1;
        }
        put_report(&mut groups, device_at, rev_at, &report);
    }
    if let Some((_, at, count)) = current {
        groups[at..at + 4].copy_from_slice(&count.to_le_bytes());
    }
    let mut out = Vec::with_capacity(64 + revision_table.len() + device_table.len() + groups.len());
    out.extend_from_slice(MAGIC);
    put_varint(&mut out, SNAPSHOT_FORMAT);
    put_varint(&mut out, mark.stream_created);
    put_varint(&mut out, mark.seq);
    put_varint(&mut out, revisions.len() as u64);
    out.extend_from_slice(&revision_table);
    put_varint(&mut out, devices.len() as u64);
    out.extend_from_slice(&device_table);
    put_varint(&mut out, group_count);
    out.extend_from_slice(&groups);
    out
}

fn put_report(out: &mut Vec<u8>, device: u32, rev: u32, report: &Report<&ContentHash>) {
    put_varint(out, u64::from(device));
    put_varint(out, u64::from(rev));
    let failed = report.outcome == Outcome::Failed;
    let error = report.error.as_ref().filter(|_| failed);
    let at = report.at.filter(|_| failed);
    let mut flags = match report.outcome {
        Outcome::InProgress => 0,
        Outcome::Succeeded => 1,
        Outcome::Failed => 2,
    };
    if error.is_some() {
        flags |= HAS_ERROR;
    }
    if at.is_some() {
        flags |= HAS_AT;
    }
    out.push(flags);
    if let Some(error) = error {
        put_str(out, error);
    }
    if let Some(at) = at {
        put_varint(out, zigzag(at.as_second()));
        put_varint(out, u64::from(at.subsec_nanosecond().unsigned_abs()));
    }
}

/// Only the mark of a snapshot: whether it is worth decoding is decided on it.
pub fn decode_mark(bytes: &[u8]) -> Result<ReportsMark, SnapshotError> {
    let mut r = Reader { bytes, at: 0 };
    r.header()
}

/// Decodes a snapshot written by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<ReportsSnapshot, SnapshotError> {
    let mut r = Reader { bytes, at: 0 };
    let mark = r.header()?;
    let count = r.count(32)?;
    let mut revisions = Vec::with_capacity(count);
    for _ in 0..count {
        let hash: [u8; 32] = r
            .take(32)?
            .try_into()
            .map_err(|_| r.error("a revision is not 32 bytes"))?;
        revisions.push(ContentHash::from_bytes(hash));
    }
    let count = r.count(2)?;
    let mut devices = Vec::with_capacity(count);
    for _ in 0..count {
        devices.push(r.parsed::<DeviceId>("device id")?);
    }
    let count = r.count(2)?;
    let mut groups = Vec::with_capacity(count);
    for _ in 0..count {
        let name = r.parsed::<DeploymentName>("deployment name")?;
        let count = r.fixed_count(3)?;
        let mut reports = Vec::with_capacity(count);
        for _ in 0..count {
            reports.push(r.report(devices.len(), revisions.len())?);
        }
        groups.push((name, reports));
    }
    if r.at != bytes.len() {
        return Err(r.error("bytes after the last group"));
    }
    Ok(ReportsSnapshot {
        mark,
        devices,
        revisions,
        groups,
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn error(&self, what: &str) -> SnapshotError {
        SnapshotError {
            at: self.at,
            what: what.to_owned(),
        }
    }

    fn header(&mut self) -> Result<ReportsMark, SnapshotError> {
        if self.take(MAGIC.len())? != MAGIC {
            return Err(self.error("not a reports snapshot"));
        }
        let format = self.varint()?;
        if format != SNAPSHOT_FORMAT {
            return Err(self.error(&format!(
                "format {format}; this build reads {SNAPSHOT_FORMAT}"
            )));
        }
        Ok(ReportsMark {
            stream_created: self.varint()?,
            seq: self.varint()?,
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| self.error(&format!("{n} bytes asked, the object ends before")))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, SnapshotError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.error("an integer longer than 64 bits"))
    }

    /// A count of items of at least `min_size` bytes each: no more than the bytes left hold.
    fn count(&mut self, min_size: usize) -> Result<usize, SnapshotError> {
        let n = self.varint()?;
        self.bounded(n, min_size)
    }

    /// [`Self::count`], written as 4 bytes (little-endian).
    fn fixed_count(&mut self, min_size: usize) -> Result<usize, SnapshotError> {
        let bytes: [u8; 4] = self
            .take(4)?
            .try_into()
            .map_err(|_| self.error("a count is not 4 bytes"))?;
        self.bounded(u64::from(u32::from_le_bytes(bytes)), min_size)
    }

    fn bounded(&self, n: u64, min_size: usize) -> Result<usize, SnapshotError> {
        let left = (self.bytes.len() - self.at) / min_size.max(1);
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= left)
            .ok_or_else(|| self.error(&format!("{n} items, more than the bytes left hold")))
    }

    fn str(&mut self) -> Result<&'a str, SnapshotError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| self.error("a string too long"))?;
        let at = self.at;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| SnapshotError {
            at,
            what: "a string that is not UTF-8".to_owned(),
        })
    }

    /// A string parsed as `T` (a device id, a deployment name), named `what` in its error.
    fn parsed<T>(&mut self, what: &str) -> Result<T, SnapshotError>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        let text = self.str()?;
        text.parse()
            .map_err(|e| self.error(&format!("{what} `{text}`: {e}")))
    }

    fn index(&mut self, len: usize, what: &str) -> Result<u32, SnapshotError> {
        let i = self.varint()?;
        u32::try_from(i)
            .ok()
            .filter(|i| (*i as usize) < len)
            .ok_or_else(|| self.error(&format!("{what} {i} of {len}")))
    }

    fn report(&mut self, devices: usize, revisions: usize) -> Result<SavedReport, SnapshotError> {
        let device = self.index(devices, "device")?;
        let rev = self.index(revisions, "revision")?;
        let flags = self.byte()?;
        let outcome = match flags & OUTCOME_MASK {
            0 => Outcome::InProgress,
            1 => Outcome::Succeeded,
            2 => Outcome::Failed,
            other => return Err(self.error(&format!("outcome {other}"))),
        };
        if flags & !(OUTCOME_MASK | HAS_ERROR | HAS_AT) != 0 {
            return Err(self.error(&format!("flags {flags:#x}")));
        }
        let error = match flags & HAS_ERROR {
            0 => None,
            _ => Some(self.str()?.to_owned()),
        };
        let at = match flags & HAS_AT {
            0 => None,
            _ => {
                let seconds = unzigzag(self.varint()?);
                let nanos = i32::try_from(self.varint()?)
                    .map_err(|_| self.error("nanoseconds out of range"))?;
                Some(
                    Timestamp::new(seconds, nanos)
                        .map_err(|e| self.error(&format!("time: {e}")))?,
                )
            }
        };
        let detail = (error.is_some() || at.is_some()).then(|| Box::new(SavedDetail { error, at }));
        Ok(SavedReport {
            device,
            rev,
            outcome,
            detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn device(s: &str) -> DeviceId {
        s.parse().expect("valid device id")
    }

    fn name(s: &str) -> DeploymentName {
        s.parse().expect("valid deployment name")
    }

    fn report(rev: &ContentHash, outcome: Outcome) -> Report<&ContentHash> {
        Report {
            rev,
            outcome,
            error: None,
            at: None,
        }
    }

    const MARK: ReportsMark = ReportsMark {
        stream_created: 1_765_000_000_123_456_789,
        seq: 1_100_000,
    };

    #[test]
    fn reports_come_back_as_they_were_saved() {
        let (web, db) = (name("web"), name("db"));
        let (a, b, c) = (device("pi-a"), device("pi-b"), device("pi-c"));
        let (r1, r2) = (ContentHash::of_bytes(b"1"), ContentHash::of_bytes(b"2"));
        let at = Timestamp::new(1_765_000_000, 42).expect("valid time");
        let failed = Report {
            rev: &r2,
            outcome: Outcome::Failed,
            error: Some("image pull failed: é".to_owned()),
            at: Some(at),
        };
        let reports = vec![
            (&web, &a, report(&r1, Outcome::Succeeded)),
            (&web, &b, failed),
            (&db, &a, report(&r2, Outcome::InProgress)),
            // A failed report without error or time, and one run of `web` again.
            (&web, &c, report(&r1, Outcome::Failed)),
        ];
        let bytes = encode(MARK, reports);
        assert_eq!(decode_mark(&bytes), Ok(MARK));
        let snapshot = decode(&bytes).expect("decodes");
        assert_eq!(snapshot.mark, MARK);
        assert_eq!(snapshot.len(), 4);
        assert_eq!(snapshot.devices, vec![a, b, c]);
        assert_eq!(snapshot.revisions, vec![r1, r2]);
        let saved = |device, rev, outcome, detail: Option<SavedDetail>| SavedReport {
            device,
            rev,
            outcome,
            detail: detail.map(Box::new),
        };
        assert_eq!(
            snapshot.groups,
            vec![
                (
                    web.clone(),
                    vec![
                        saved(0, 0, Outcome::Succeeded, None),
                        saved(
                            1,
                            1,
                            Outcome::Failed,
                            Some(SavedDetail {
                                error: Some("image pull failed: é".to_owned()),
                                at: Some(at),
                            })
                        ),
                    ]
                ),
                (db, vec![saved(0, 1, Outcome::InProgress, None)]),
                (web, vec![saved(2, 0, Outcome::Failed, None)]),
            ]
        );
    }

    #[test]
    fn an_empty_snapshot_is_a_few_bytes() {
        let bytes = encode(MARK, Vec::new());
        let snapshot = decode(&bytes).expect("decodes");
        assert!(snapshot.is_empty());
        assert!(bytes.len() < 24, "{} bytes", bytes.len());
    }

    #[test]
    fn a_report_costs_a_few_bytes() {
        let names: Vec<DeploymentName> = (0..10).map(|i| name(&format!("app-{i}"))).collect();
        let devices: Vec<DeviceId> = (0..1000).map(|i| device(&format!("pi-{i:06}"))).collect();
        let rev = ContentHash::of_bytes(b"v1");
        let rev = &rev;
        let reports = names.iter().flat_map(|n| {
            devices
                .iter()
                .map(move |d| (n, d, report(rev, Outcome::Succeeded)))
        });
        let bytes = encode(MARK, reports);
        // 10,000 reports: ~4 bytes each, plus 1,000 device ids of 10 bytes.
        assert!(
            bytes.len() < 10_000 * 5 + 1000 * 11,
            "{} bytes",
            bytes.len()
        );
        assert_eq!(decode(&bytes).expect("decodes").len(), 10_000);
    }

    #[test]
    fn damaged_snapshots_are_refused_with_where_and_why() {
        let (web, a, r1) = (name("web"), device("pi-a"), ContentHash::of_bytes(b"1"));
        let bytes = encode(MARK, vec![(&web, &a, report(&r1, Outcome::Succeeded))]);
        // Every truncation fails, none panics.
        for end in 0..bytes.len() {
            assert!(decode(&bytes[..end]).is_err(), "cut at {end}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            decode(&longer).map(|_| ()).unwrap_err().what,
            "bytes after the last group"
        );
        let mut other = bytes.clone();
        other[4] = 2;
        assert!(decode(&other).unwrap_err().what.contains("format 2"));
        let mut bad_outcome = bytes.clone();
        let last = bad_outcome.len() - 1;
        bad_outcome[last] = 3;
        assert_eq!(decode(&bad_outcome).unwrap_err().what, "outcome 3");
        let mut bad_index = bytes;
        // The report's device index (one byte before revision and flags).
        let at = bad_index.len() - 3;
        bad_index[at] = 7;
        assert_eq!(decode(&bad_index).unwrap_err().what, "device 7 of 1");
        assert!(decode(b"HFRX").unwrap_err().what.contains("not a reports"));
    }
}
