//! [`LocalSupervisor`]: the long-lived processes a local topology runs (nats-server, the
//! operator, device agents, the control plane), by name, across invocations of a deploy tool.
//!
//! Two modes, because two kinds of callers exist:
//! - [`SupervisionMode::Owned`] (tests): processes die with the supervisor and with the test
//!   process (parent-death signal), so a crashed run leaves nothing behind.
//! - [`SupervisionMode::Detached`] (`harmony-fleet-deploy local up`): processes outlive the
//!   command that started them. Each is recorded in `<dir>/run/<name>.json` (pid, start time,
//!   spec) so that the next `up` recognises what already runs and `down` stops it.
//!
//! A record is trusted only while its pid is alive *and* started at the recorded time, so a
//! reused pid is never signalled. A process whose spec changed is restarted; an identical one is
//! left alone (what makes Scores idempotent). Ports are reserved by name in `<dir>/ports.json`
//! so a component keeps its port across runs.

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::local::error::{LocalError, Result};
use crate::local::ports;
use crate::local::process::{ProcessSpec, SupervisedProcess};

const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Whether supervised processes die with their supervisor or outlive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SupervisionMode {
    /// Stopped when the supervisor is dropped or the process holding it dies (tests).
    Owned,
    /// Keep running after this process exits; stopped by [`LocalSupervisor::stop_all`].
    Detached,
}

/// What [`LocalSupervisor::ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessChange {
    /// Nothing ran under that name; it was started.
    Started,
    /// It ran with a different spec; it was stopped and started again.
    Restarted,
    /// It already ran with exactly this spec.
    Unchanged,
}

/// What runs under a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessStatus {
    /// The supervisor's name for the process.
    pub name: String,
    /// Its pid (and process group id).
    pub pid: u32,
    /// Whether it is alive right now.
    pub running: bool,
    /// Its log file.
    pub log_file: PathBuf,
}

/// The persisted form of a process: enough to recognise it and to start it again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Record {
    name: String,
    pid: u32,
    /// `starttime` from `/proc/<pid>/stat`: tells our process from a later one with its pid.
    start_ticks: u64,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    current_dir: Option<PathBuf>,
    log_file: PathBuf,
    stop_timeout_ms: u64,
}

impl Record {
    fn of(spec: &ProcessSpec, pid: u32) -> Self {
        let lossy = |s: &std::ffi::OsStr| s.to_string_lossy().into_owned();
        Record {
            name: spec.name.clone(),
            pid,
            start_ticks: if pid == 0 {
                0
            } else {
                start_ticks(pid).unwrap_or(0)
            },
            program: spec.program.clone(),
            args: spec.args.iter().map(|a| lossy(a)).collect(),
            env: spec.env.iter().map(|(k, v)| (lossy(k), lossy(v))).collect(),
            current_dir: spec.current_dir.clone(),
            log_file: spec.log_file.clone(),
            stop_timeout_ms: u64::try_from(spec.stop_timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Same program, arguments, environment and directory: the same process as far as a Score
    /// is concerned.
    fn same_spec(&self, other: &Record) -> bool {
        self.program == other.program
            && self.args == other.args
            && self.env == other.env
            && self.current_dir == other.current_dir
    }

    fn spec(&self, mode: SupervisionMode) -> ProcessSpec {
        let mut spec = ProcessSpec::new(&self.name, &self.program, &self.log_file)
            .args(self.args.iter())
            .stop_timeout(Duration::from_millis(self.stop_timeout_ms))
            .detached(mode == SupervisionMode::Detached);
        for (k, v) in &self.env {
            spec = spec.env(k, v);
        }
        if let Some(dir) = &self.current_dir {
            spec = spec.current_dir(dir);
        }
        spec
    }

    fn alive(&self) -> bool {
        self.start_ticks != 0 && start_ticks(self.pid) == Some(self.start_ticks)
    }

    fn stop_timeout(&self) -> Duration {
        Duration::from_millis(self.stop_timeout_ms)
    }
}

/// Runs named processes for a local topology and remembers them under one directory.
#[derive(Debug)]
pub struct LocalSupervisor {
    dir: PathBuf,
    mode: SupervisionMode,
    /// Processes this supervisor owns (mode `Owned`); dropping the map stops them.
    owned: Mutex<HashMap<String, SupervisedProcess>>,
    /// Serialises port reservations (read-modify-write of `ports.json`).
    ports: Mutex<()>,
}

impl LocalSupervisor {
    /// A supervisor keeping its records under `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>, mode: SupervisionMode) -> Result<Self> {
        let dir = dir.into();
        let run = dir.join("run");
        std::fs::create_dir_all(&run)
            .map_err(|e| LocalError::io(format!("creating {}", run.display()), e))?;
        Ok(LocalSupervisor {
            dir,
            mode,
            owned: Mutex::new(HashMap::new()),
            ports: Mutex::new(()),
        })
    }

    /// The directory holding records, ports and (by convention) the components' data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether processes outlive this supervisor.
    pub fn mode(&self) -> SupervisionMode {
        self.mode
    }

    /// Makes sure a process named `spec.name` runs with exactly `spec`: starts it, restarts it
    /// when its spec changed, or leaves it alone. Readiness is the caller's concern.
    pub async fn ensure(&self, spec: ProcessSpec) -> Result<ProcessChange> {
        let wanted = Record::of(&spec, 0);
        let change = match self.record(&spec.name) {
            Some(running) if running.alive() && running.same_spec(&wanted) => {
                return Ok(ProcessChange::Unchanged);
            }
            Some(running) if running.alive() => {
                tracing::info!(name = %spec.name, "spec changed; restarting");
                self.stop(&spec.name).await?;
                ProcessChange::Restarted
            }
            _ => ProcessChange::Started,
        };
        self.start(spec)?;
        Ok(change)
    }

    /// Stops the process named `name` (SIGTERM to its group, SIGKILL after its timeout) and
    /// forgets it. Returns whether one was running.
    pub async fn stop(&self, name: &str) -> Result<bool> {
        let owned = self.lock_owned().remove(name);
        let was_running = if let Some(mut process) = owned {
            let running = process.is_running();
            process.stop().await;
            running
        } else if let Some(record) = self.record(name) {
            let alive = record.alive();
            if alive {
                terminate_group(&record).await;
            }
            alive
        } else {
            false
        };
        let path = self.record_path(name);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(LocalError::io(format!("removing {}", path.display()), e));
        }
        Ok(was_running)
    }

    /// Stops the process named `name` and starts it again from its recorded spec, on the same
    /// ports and data (e.g. a nats-server restart in a fault test).
    pub async fn restart(&self, name: &str) -> Result<()> {
        let record = self.record(name).ok_or_else(|| LocalError::NotRunning {
            name: name.to_owned(),
        })?;
        self.stop(name).await?;
        self.start(record.spec(self.mode))
    }

    /// Starts a process that was stopped with [`LocalSupervisor::stop`], from `spec`.
    pub fn start(&self, spec: ProcessSpec) -> Result<()> {
        let spec = spec.detached(self.mode == SupervisionMode::Detached);
        let process = SupervisedProcess::spawn(spec.clone())?;
        let record = Record::of(&spec, process.pid());
        self.write_record(&record)?;
        match self.mode {
            SupervisionMode::Owned => {
                self.lock_owned().insert(spec.name.clone(), process);
            }
            SupervisionMode::Detached => {
                process.detach();
            }
        }
        Ok(())
    }

    /// Records a process started elsewhere (e.g. a detached control plane) so that
    /// [`LocalSupervisor::stop_all`] stops it too.
    pub fn adopt(&self, name: &str, pid: u32, log_file: &Path) -> Result<()> {
        let spec = ProcessSpec::new(name, format!("/proc/{pid}/exe"), log_file);
        self.write_record(&Record::of(&spec, pid))
    }

    /// What runs under `name`, if anything was recorded.
    pub fn status(&self, name: &str) -> Option<ProcessStatus> {
        let record = self.record(name)?;
        let running = match self.lock_owned().get_mut(name) {
            Some(process) => process.is_running(),
            None => record.alive(),
        };
        Some(ProcessStatus {
            name: record.name,
            pid: record.pid,
            running,
            log_file: record.log_file,
        })
    }

    /// Every recorded process, sorted by name.
    pub fn list(&self) -> Vec<ProcessStatus> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.join("run"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".json").map(str::to_owned)
            })
            .collect();
        names.sort();
        names.iter().filter_map(|name| self.status(name)).collect()
    }

    /// Stops every recorded process, most recently started first (agents before the operator
    /// before NATS before the control plane). Returns the names of those that were running.
    pub async fn stop_all(&self) -> Result<Vec<String>> {
        let mut records: Vec<Record> = self
            .list()
            .iter()
            .filter_map(|status| self.record(&status.name))
            .collect();
        records.sort_by_key(|r| std::cmp::Reverse(r.start_ticks));
        let mut stopped = Vec::new();
        for record in records {
            if self.stop(&record.name).await? {
                stopped.push(record.name);
            }
        }
        Ok(stopped)
    }

    /// The port reserved for `name`, reserving a free loopback port on first use. Fails when
    /// the reserved port is taken by a process this supervisor does not know.
    pub fn reserve_port(&self, name: &str) -> Result<u16> {
        let _guard = self
            .ports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let path = self.dir.join("ports.json");
        let mut reserved = Self::reserved_ports_in(&self.dir)?;
        if let Some(&port) = reserved.get(name) {
            return Ok(port);
        }
        let taken: Vec<u16> = reserved.values().copied().collect();
        let port = loop {
            let candidate = ports::free_port()?;
            if !taken.contains(&candidate) {
                break candidate;
            }
        };
        reserved.insert(name.to_owned(), port);
        write_json(&path, &reserved)?;
        Ok(port)
    }

    /// The ports reserved under `dir` by name (empty when none were), without opening a
    /// supervisor there.
    pub fn reserved_ports_in(dir: &Path) -> Result<BTreeMap<String, u16>> {
        let path = dir.join("ports.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                LocalError::Config(format!(
                    "{} is not a JSON map of names to ports ({e}); delete it to pick new ports",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(LocalError::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Fails with [`LocalError::PortBusy`] when `port` (reserved for `name`) is held by a
    /// process that is not the one recorded under `name`. A port name may carry a suffix after
    /// `:` (`nats-1:monitor`): the process is the part before it.
    pub fn check_port_free(&self, name: &str, port: u16) -> Result<()> {
        let process = name.split(':').next().unwrap_or(name);
        if self.status(process).is_some_and(|s| s.running) {
            return Ok(());
        }
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => Ok(()),
            Err(_) => Err(LocalError::PortBusy {
                name: name.to_owned(),
                port,
                ports_file: self.dir.join("ports.json"),
            }),
        }
    }

    fn lock_owned(&self) -> std::sync::MutexGuard<'_, HashMap<String, SupervisedProcess>> {
        self.owned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record_path(&self, name: &str) -> PathBuf {
        let file: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join("run").join(format!("{file}.json"))
    }

    fn record(&self, name: &str) -> Option<Record> {
        let bytes = std::fs::read(self.record_path(name)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn write_record(&self, record: &Record) -> Result<()> {
        write_json(&self.record_path(&record.name), record)
    }
}

impl Drop for LocalSupervisor {
    fn drop(&mut self) {
        let owned: Vec<(String, SupervisedProcess)> = self.lock_owned().drain().collect();
        for (name, mut process) in owned {
            process.stop_blocking();
            let _ = std::fs::remove_file(self.record_path(&name));
        }
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| LocalError::Config(format!("serialising {}: {e}", path.display())))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| LocalError::io(format!("writing {}", path.display()), e))
}

/// `starttime` (field 22) of `/proc/<pid>/stat`, or `None` when the process is gone or a
/// zombie.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`; comm may contain spaces and parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    // rest starts at field 3 (state), so field 22 is index 19.
    fields.get(19)?.parse().ok()
}

/// SIGTERM to the recorded process group, SIGKILL after its stop timeout.
async fn terminate_group(record: &Record) {
    let pgid = Pid::from_raw(i32::try_from(record.pid).unwrap_or(i32::MAX));
    let _ = killpg(pgid, Signal::SIGTERM);
    let _ = killpg(pgid, Signal::SIGCONT);
    let deadline = Instant::now() + record.stop_timeout();
    while Instant::now() < deadline {
        if !record.alive() {
            let _ = killpg(pgid, Signal::SIGKILL);
            return;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    tracing::warn!(name = %record.name, pid = record.pid, "process ignored SIGTERM; sending SIGKILL");
    let _ = killpg(pgid, Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while record.alive() && Instant::now() < deadline {
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(dir: &Path, name: &str, arg: &str) -> ProcessSpec {
        ProcessSpec::new(name, "/bin/sh", dir.join(format!("{name}.log")))
            .arg("-c")
            .arg(format!("exec sleep {arg}"))
            .stop_timeout(Duration::from_secs(2))
    }

    #[tokio::test]
    async fn ensure_starts_keeps_and_restarts_on_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let supervisor = LocalSupervisor::new(dir.path(), SupervisionMode::Owned).expect("new");
        let first = supervisor
            .ensure(sleeper(dir.path(), "a", "300"))
            .await
            .expect("start");
        assert_eq!(first, ProcessChange::Started);
        let pid = supervisor.status("a").expect("status").pid;
        let again = supervisor
            .ensure(sleeper(dir.path(), "a", "300"))
            .await
            .expect("again");
        assert_eq!(again, ProcessChange::Unchanged);
        assert_eq!(supervisor.status("a").expect("status").pid, pid);
        let changed = supervisor
            .ensure(sleeper(dir.path(), "a", "301"))
            .await
            .expect("changed");
        assert_eq!(changed, ProcessChange::Restarted);
        assert_ne!(supervisor.status("a").expect("status").pid, pid);
        assert!(start_ticks(pid).is_none(), "old process survived");
    }

    #[tokio::test]
    async fn detached_processes_survive_the_supervisor_and_stop_all_stops_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid = {
            let supervisor =
                LocalSupervisor::new(dir.path(), SupervisionMode::Detached).expect("new");
            supervisor
                .ensure(sleeper(dir.path(), "d", "300"))
                .await
                .expect("start");
            supervisor.status("d").expect("status").pid
        };
        assert!(
            start_ticks(pid).is_some(),
            "detached process died with its supervisor"
        );
        let later = LocalSupervisor::new(dir.path(), SupervisionMode::Detached).expect("new");
        assert_eq!(
            later
                .ensure(sleeper(dir.path(), "d", "300"))
                .await
                .expect("ensure"),
            ProcessChange::Unchanged
        );
        let stopped = later.stop_all().await.expect("stop all");
        assert_eq!(stopped, vec!["d".to_owned()]);
        assert!(later.list().is_empty());
        // Reap: the child is ours in this test process.
        let deadline = Instant::now() + Duration::from_secs(5);
        while start_ticks(pid).is_some() {
            assert!(
                Instant::now() < deadline,
                "detached process survived stop_all"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    #[test]
    fn ports_are_reserved_once_per_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let supervisor = LocalSupervisor::new(dir.path(), SupervisionMode::Owned).expect("new");
        let a = supervisor.reserve_port("nats").expect("port");
        assert_eq!(supervisor.reserve_port("nats").expect("port"), a);
        assert_ne!(supervisor.reserve_port("operator").expect("port"), a);
        let _holder = TcpListener::bind(("127.0.0.1", a)).expect("bind");
        let err = supervisor.check_port_free("nats", a).expect_err("busy");
        assert!(err.to_string().contains("local down"), "{err}");
    }
}
