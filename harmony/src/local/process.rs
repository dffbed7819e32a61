//! A supervised child process: the building block of every local harness.
//!
//! A [`SupervisedProcess`]:
//! - runs in its own process group, so stopping it also stops anything it forked;
//! - writes stdout and stderr to one log file (appended, so a restarted server keeps its
//!   history), whose tail is put into start-up errors;
//! - is stopped with SIGTERM to the group, then SIGKILL after a timeout — explicitly with
//!   [`SupervisedProcess::stop`], or when dropped;
//! - gets SIGKILL from the kernel if the process that started it dies (`PR_SET_PDEATHSIG`), so
//!   a crashed or aborted test run leaves no servers behind.
//!
//! The parent-death signal fires when the *thread* that forked the child exits, not the process.
//! Test runtimes and their threads come and go (a control plane in a `OnceCell` outlives the test
//! that started it), so every child is forked by one dedicated thread that lives as long as the
//! process.
//!
//! Waiting uses `try_wait` polling rather than a tokio child handle: the process must stay
//! supervised after the tokio runtime that started it is gone.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::local::error::{LocalError, Result};

/// How long a process gets between SIGTERM and SIGKILL unless told otherwise.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many log lines start-up errors include.
pub const LOG_TAIL_LINES: usize = 40;
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What to run and where its output goes.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// A short name for logs and errors, e.g. `kube-apiserver`.
    pub name: String,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment variables (the rest is inherited).
    pub env: Vec<(OsString, OsString)>,
    /// Working directory; inherited when `None`.
    pub current_dir: Option<PathBuf>,
    /// File receiving stdout and stderr (created, appended to).
    pub log_file: PathBuf,
    /// Time between SIGTERM and SIGKILL when stopping.
    pub stop_timeout: Duration,
    /// Outlive the process that started it: no parent-death signal, so the child keeps
    /// running after [`SupervisedProcess::detach`] and the starting process's exit (what a
    /// deploy tool's `up` needs; tests leave this off so a crashed run leaves nothing behind).
    pub detached: bool,
}

impl ProcessSpec {
    /// A spec with no arguments, inherited environment and the default stop timeout.
    pub fn new(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        log_file: impl Into<PathBuf>,
    ) -> Self {
        ProcessSpec {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            current_dir: None,
            log_file: log_file.into(),
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            detached: false,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets one environment variable for the child.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the working directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Sets the time between SIGTERM and SIGKILL.
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// Lets the process outlive its starter (see [`ProcessSpec::detached`]).
    pub fn detached(mut self, detached: bool) -> Self {
        self.detached = detached;
        self
    }

    /// The program and its arguments as one line, for logs and for telling whether a running
    /// process was started from the same spec.
    pub fn command_line(&self) -> String {
        std::iter::once(self.program.as_os_str())
            .chain(self.args.iter().map(OsString::as_os_str))
            .map(|s| s.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A running child process owned by a harness; stopped (group-wide) when dropped.
#[derive(Debug)]
pub struct SupervisedProcess {
    name: String,
    pid: u32,
    child: Option<Child>,
    exit_status: Option<ExitStatus>,
    log_file: PathBuf,
    stop_timeout: Duration,
}

impl SupervisedProcess {
    /// Starts the process described by `spec`.
    ///
    /// Returns once the child has been exec'd; readiness is the caller's concern (see
    /// [`SupervisedProcess::wait_ready`]).
    pub fn spawn(spec: ProcessSpec) -> Result<Self> {
        if let Some(parent) = spec.log_file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                LocalError::io(
                    format!("creating the log directory {}", parent.display()),
                    e,
                )
            })?;
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_file)
            .map_err(|e| {
                LocalError::io(
                    format!("opening the log file {}", spec.log_file.display()),
                    e,
                )
            })?;
        writeln!(log, "=== harmony starts: {}", spec.command_line())
            .map_err(|e| LocalError::io(format!("writing to {}", spec.log_file.display()), e))?;
        let stderr = log
            .try_clone()
            .map_err(|e| LocalError::io(format!("duplicating {}", spec.log_file.display()), e))?;

        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .process_group(0);
        if let Some(dir) = &spec.current_dir {
            command.current_dir(dir);
        }
        if !spec.detached {
            set_parent_death_signal(&mut command);
        }

        let child = spawner::spawn(command).map_err(|source| LocalError::Spawn {
            name: spec.name.clone(),
            program: spec.program.clone(),
            source,
        })?;
        let pid = child.id();
        tracing::debug!(name = %spec.name, pid, log = %spec.log_file.display(), "process started");
        Ok(SupervisedProcess {
            name: spec.name,
            pid,
            child: Some(child),
            exit_status: None,
            log_file: spec.log_file,
            stop_timeout: spec.stop_timeout,
        })
    }

    /// Stops supervising the process and lets it run on; returns its pid (also its process
    /// group id). Only a process spawned with [`ProcessSpec::detached`] survives its starter's
    /// exit; others still get the parent-death signal.
    pub fn detach(mut self) -> u32 {
        self.child = None;
        self.pid
    }

    /// The harness's name for the process.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The file receiving its stdout and stderr.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The last `lines` lines of the log (empty if unreadable).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_file, lines)
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none()
            && let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.exit_status = Some(status);
            self.child = None;
        }
        self.exit_status
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none() && self.child.is_some()
    }

    /// A [`LocalError::NotReady`] for this process with `reason` and its log tail.
    pub fn not_ready(&self, reason: impl Into<String>) -> LocalError {
        LocalError::NotReady {
            name: self.name.clone(),
            reason: reason.into(),
            log: self.log_file.clone(),
            log_tail: self.log_tail(LOG_TAIL_LINES),
        }
    }

    /// Polls `probe` until it succeeds, the process exits, or `timeout` passes.
    ///
    /// `probe` returns `Err(reason)` while the server is not ready; the last reason is reported
    /// on timeout together with the log tail.
    pub async fn wait_ready<F, Fut>(
        &mut self,
        timeout: Duration,
        interval: Duration,
        mut probe: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<(), String>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Err(self.not_ready(format!("it exited during start-up ({status})")));
            }
            let last = match probe().await {
                Ok(()) => return Ok(()),
                Err(reason) => reason,
            };
            if Instant::now() >= deadline {
                return Err(self.not_ready(format!(
                    "no readiness within {}s; last probe: {last}",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Stops the process group: SIGTERM, then SIGKILL after the stop timeout. Idempotent.
    pub async fn stop(&mut self) {
        if !self.signal_group(Signal::SIGTERM) {
            return;
        }
        let deadline = Instant::now() + self.stop_timeout;
        while Instant::now() < deadline {
            if !self.is_running() {
                self.kill_stragglers();
                return;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        self.kill_and_reap();
    }

    /// Like [`SupervisedProcess::stop`] but blocking the calling thread; used by `Drop`.
    pub fn stop_blocking(&mut self) {
        if !self.signal_group(Signal::SIGTERM) {
            return;
        }
        let deadline = Instant::now() + self.stop_timeout;
        while Instant::now() < deadline {
            if !self.is_running() {
                self.kill_stragglers();
                return;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        self.kill_and_reap();
    }

    /// Freezes the whole process group (SIGSTOP): the server keeps its sockets but answers
    /// nothing — a network partition or a hung server, as fault tests need. Undo with
    /// [`SupervisedProcess::resume`]; stopping a paused process works too.
    ///
    /// Returns once the kernel reports the leader stopped (signals are delivered
    /// asynchronously), so nothing sent afterwards is handled before [`SupervisedProcess::resume`].
    pub fn pause(&mut self) -> Result<()> {
        self.signal_or_fail(Signal::SIGSTOP)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !is_stopped(self.pid) {
            if Instant::now() >= deadline {
                return Err(self.not_ready("SIGSTOP was sent but the process did not stop"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Lets a paused process group run again (SIGCONT).
    pub fn resume(&mut self) -> Result<()> {
        self.signal_or_fail(Signal::SIGCONT)
    }

    fn signal_or_fail(&mut self, signal: Signal) -> Result<()> {
        if !self.is_running() {
            return Err(LocalError::NotRunning {
                name: self.name.clone(),
            });
        }
        killpg(self.pgid(), signal).map_err(|errno| {
            LocalError::io(
                format!("sending {signal} to process group {}", self.pid),
                errno.into(),
            )
        })
    }

    /// Sends `signal` to the group if the leader still runs; `false` when already stopped.
    fn signal_group(&mut self, signal: Signal) -> bool {
        if !self.is_running() {
            return false;
        }
        if let Err(errno) = killpg(self.pgid(), signal) {
            tracing::warn!(name = %self.name, pid = self.pid, %errno, "signalling the process group failed");
        }
        // A paused group only acts on SIGTERM once continued.
        let _ = killpg(self.pgid(), Signal::SIGCONT);
        true
    }

    fn kill_and_reap(&mut self) {
        tracing::warn!(name = %self.name, pid = self.pid, timeout_s = self.stop_timeout.as_secs(),
            "process ignored SIGTERM; sending SIGKILL");
        let _ = killpg(self.pgid(), Signal::SIGKILL);
        if let Some(mut child) = self.child.take() {
            match child.wait() {
                Ok(status) => self.exit_status = Some(status),
                Err(e) => tracing::warn!(name = %self.name, error = %e, "reaping failed"),
            }
        }
    }

    /// The leader is gone; anything it forked into its group goes with it.
    fn kill_stragglers(&self) {
        let _ = killpg(self.pgid(), Signal::SIGKILL);
        tracing::debug!(name = %self.name, pid = self.pid, "process stopped");
    }

    fn pgid(&self) -> Pid {
        // A pid always fits in i32 on Linux (pid_max ≤ 2^22).
        Pid::from_raw(i32::try_from(self.pid).unwrap_or(i32::MAX))
    }
}

impl Drop for SupervisedProcess {
    fn drop(&mut self) {
        self.stop_blocking();
    }
}

/// Whether `/proc/<pid>/stat` reports the process stopped by a signal (`T`).
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // `pid (comm) state …`; comm may contain spaces and parentheses.
            let (_, rest) = stat.rsplit_once(')')?;
            rest.trim_start().chars().next()
        })
        .is_some_and(|state| state == 'T')
}

/// The last `lines` lines of the file at `path` (reads at most its last 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file.seek(SeekFrom::Start(len.saturating_sub(MAX))).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Makes the kernel SIGKILL the child when its parent (the spawner thread, see the module docs)
/// goes away.
fn set_parent_death_signal(command: &mut Command) {
    let parent = std::process::id();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec. It calls only prctl(2) and
    // getppid(2), which are async-signal-safe, captures a plain integer, and allocates nothing
    // (errno values convert to io::Error without allocation).
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The parent may have died between fork and prctl: then nobody would kill us.
            if u32::try_from(nix::unistd::getppid().as_raw()).ok() != Some(parent) {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
}

/// The one thread that forks every supervised child (see the module docs).
mod spawner {
    use super::*;

    struct Request {
        command: Command,
        reply: mpsc::SyncSender<std::io::Result<Child>>,
    }

    static SPAWNER: OnceLock<std::io::Result<mpsc::Sender<Request>>> = OnceLock::new();

    pub(super) fn spawn(command: Command) -> std::io::Result<Child> {
        let sender = SPAWNER.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Request>();
            std::thread::Builder::new()
                .name("harmony-local-spawner".into())
                .spawn(move || {
                    for mut request in rx {
                        let result = request.command.spawn();
                        let _ = request.reply.send(result);
                    }
                })
                .map(|_| tx)
        });
        let sender = match sender {
            Ok(sender) => sender,
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("the process spawner thread could not start: {e}"),
                ));
            }
        };
        let (reply, answer) = mpsc::sync_channel(1);
        sender
            .send(Request { command, reply })
            .map_err(|_| std::io::Error::other("the process spawner thread is gone"))?;
        answer
            .recv()
            .map_err(|_| std::io::Error::other("the process spawner thread is gone"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, script: &str) -> ProcessSpec {
        ProcessSpec::new("sh", "/bin/sh", dir.join("sh.log"))
            .arg("-c")
            .arg(script)
            .stop_timeout(Duration::from_secs(2))
    }

    fn alive(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    #[tokio::test]
    async fn stop_terminates_the_whole_process_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("grandchild.pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let mut process = SupervisedProcess::spawn(sh(dir.path(), &script)).expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(10);
        let grandchild = loop {
            if let Ok(text) = std::fs::read_to_string(&pidfile)
                && let Ok(pid) = text.trim().parse::<u32>()
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "grandchild never started");
            tokio::time::sleep(POLL_INTERVAL).await;
        };
        let pid = process.pid();
        process.stop().await;
        assert!(!process.is_running());
        assert!(!alive(pid));
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(grandchild) {
            assert!(
                Instant::now() < deadline,
                "grandchild {grandchild} survived"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    #[test]
    fn drop_kills_a_process_that_ignores_sigterm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let process = SupervisedProcess::spawn(
            sh(dir.path(), "trap '' TERM; while true; do sleep 0.1; done")
                .stop_timeout(Duration::from_millis(300)),
        )
        .expect("spawn");
        let pid = process.pid();
        drop(process);
        assert!(!alive(pid));
    }

    #[tokio::test]
    async fn start_up_failure_reports_the_log_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut process = SupervisedProcess::spawn(sh(
            dir.path(),
            "echo 'bind: address already in use'; exit 3",
        ))
        .expect("spawn");
        let err = process
            .wait_ready(Duration::from_secs(10), POLL_INTERVAL, || async {
                Err::<(), _>("not yet".to_owned())
            })
            .await
            .expect_err("exits");
        let message = err.to_string();
        assert!(message.contains("exited during start-up"), "{message}");
        assert!(message.contains("address already in use"), "{message}");
    }

    #[tokio::test]
    async fn pause_freezes_the_group_and_stop_still_works_while_paused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut process =
            SupervisedProcess::spawn(sh(dir.path(), "exec sleep 300")).expect("spawn");
        let pid = process.pid();
        process.pause().expect("pause");
        assert!(is_stopped(pid));
        process.resume().expect("resume");
        process.pause().expect("pause again");
        process.stop().await;
        assert!(!alive(pid));
        assert!(process.resume().is_err());
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = SupervisedProcess::spawn(ProcessSpec::new(
            "ghost",
            dir.path().join("ghost"),
            dir.path().join("ghost.log"),
        ))
        .expect_err("no such program");
        assert!(matches!(err, LocalError::Spawn { .. }), "{err}");
    }
}
