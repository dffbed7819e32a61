//! [`SshHost`]: commands on a remote Linux host through the system OpenSSH client (adr/0040),
//! with key authentication only and the host's key pinned: the client trusts exactly the key
//! it is given, never one it is shown on first contact.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

/// Why a command on a remote host failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SshError {
    /// The `ssh` client could not be started.
    #[error(
        "could not run `ssh` (Debian package openssh-client): {source}; install it on this machine"
    )]
    Spawn {
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The pinned host key could not be written for the client.
    #[error("writing the pinned host key to {path}: {source}")]
    KnownHosts {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The connection itself failed (ssh exits 255): unreachable, a refused key, or a host key
    /// other than the pinned one.
    #[error(
        "cannot reach {destination} over SSH: {stderr}; check `address`/`port`, that \
         `identity_file`'s public key is in the host's authorized_keys, and that \
         `known_host_key` is the host's current key (`ssh-keyscan` on a trusted network, or \
         read it from the host's console)"
    )]
    Connect {
        /// `user@address:port`.
        destination: String,
        /// What ssh printed.
        stderr: String,
    },
    /// The remote command ran and failed.
    #[error("`{command}` on {destination} failed ({status}): {stderr}")]
    Remote {
        /// `user@address:port`.
        destination: String,
        /// The command.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The command did not finish in time.
    #[error("`{command}` on {destination} did not finish within {timeout:?}")]
    Timeout {
        /// `user@address:port`.
        destination: String,
        /// The command.
        command: String,
        /// The limit.
        timeout: Duration,
    },
    /// Writing the command's standard input failed.
    #[error("sending data to `{command}` on {destination}: {source}")]
    Stdin {
        /// `user@address:port`.
        destination: String,
        /// The command.
        command: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// How to reach one host.
#[derive(Debug, Clone)]
pub struct SshHost {
    /// Host name or address.
    pub address: String,
    /// SSH port.
    pub port: u16,
    /// Remote user (the agent's files and unit need root, or a user that is root).
    pub user: String,
    /// The private key to authenticate with.
    pub identity_file: PathBuf,
    /// The known_hosts file holding only the pinned key (see [`SshHost::pin`]).
    pub known_hosts: PathBuf,
    /// Limit for one command.
    pub timeout: Duration,
}

impl SshHost {
    /// Writes `known_host_key` (`<type> <base64>`, as in a `.pub` file) as the only key
    /// trusted for `address:port` into `known_hosts`.
    pub fn pin(
        address: &str,
        port: u16,
        known_host_key: &str,
        known_hosts: &Path,
    ) -> Result<(), SshError> {
        let host = if port == 22 {
            address.to_owned()
        } else {
            format!("[{address}]:{port}")
        };
        // Only `<type> <key>`: a trailing comment is dropped.
        let key: Vec<&str> = known_host_key.split_whitespace().take(2).collect();
        let line = format!("{host} {}\n", key.join(" "));
        let write = || -> std::io::Result<()> {
            if let Some(parent) = known_hosts.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(known_hosts, line.as_bytes())
        };
        write().map_err(|source| SshError::KnownHosts {
            path: known_hosts.to_owned(),
            source,
        })
    }

    /// `user@address:port`, for messages.
    pub fn destination(&self) -> String {
        format!("{}@{}:{}", self.user, self.address, self.port)
    }

    fn command(&self, remote: &str) -> Command {
        let mut command = Command::new("ssh");
        command
            // No user or system configuration: exactly these options.
            .args(["-F", "/dev/null"])
            .arg("-i")
            .arg(&self.identity_file)
            .args(["-p", &self.port.to_string()])
            .args(["-o", "BatchMode=yes"])
            .args(["-o", "IdentitiesOnly=yes"])
            .args(["-o", "PasswordAuthentication=no"])
            .args(["-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "ConnectTimeout=10"])
            .args(["-o", "ServerAliveInterval=5"])
            .args(["-o", "LogLevel=ERROR"])
            .arg(format!("{}@{}", self.user, self.address))
            .arg("--")
            .arg(remote)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs `remote` (a shell command line) and returns its standard output.
    pub async fn run(&self, remote: &str) -> Result<String, SshError> {
        self.run_with_input(remote, &[]).await
    }

    /// Runs `remote` with `input` on its standard input and returns its standard output.
    pub async fn run_with_input(&self, remote: &str, input: &[u8]) -> Result<String, SshError> {
        let destination = self.destination();
        let mut child = self
            .command(remote)
            .spawn()
            .map_err(|source| SshError::Spawn { source })?;
        let stdin_error = |source| SshError::Stdin {
            destination: destination.clone(),
            command: remote.to_owned(),
            source,
        };
        if let Some(mut stdin) = child.stdin.take() {
            if !input.is_empty() {
                stdin.write_all(input).await.map_err(stdin_error)?;
            }
            drop(stdin);
        }
        let output = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| SshError::Timeout {
                destination: destination.clone(),
                command: remote.to_owned(),
                timeout: self.timeout,
            })?
            .map_err(|source| SshError::Spawn { source })?;
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        tracing::debug!(host = %destination, command = remote, status = %output.status, "ssh");
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        if output.status.code() == Some(255) {
            return Err(SshError::Connect {
                destination,
                stderr,
            });
        }
        Err(SshError::Remote {
            destination,
            command: remote.to_owned(),
            status: output.status.to_string(),
            stderr,
        })
    }

    /// Writes `contents` to `path` on the host with `mode`, atomically (a temporary file beside
    /// it, then a rename), creating the parent directory.
    pub async fn write_file(&self, path: &str, mode: u32, contents: &[u8]) -> Result<(), SshError> {
        let quoted = shell_quote(path);
        let tmp = shell_quote(&format!("{path}.harmony-tmp"));
        let parent = shell_quote(
            Path::new(path)
                .parent()
                .map(|p| p.display().to_string())
                .as_deref()
                .unwrap_or("/"),
        );
        let command = format!(
            "umask 077 && mkdir -p {parent} && cat > {tmp} && chmod {mode:o} {tmp} && mv -f {tmp} {quoted}"
        );
        self.run_with_input(&command, contents).await.map(|_| ())
    }
}

/// `s` as one single-quoted shell word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quoted_word_survives_quotes_and_spaces() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_pinned_key_is_the_only_line_and_names_the_port() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("known_hosts");
        SshHost::pin("10.0.0.2", 2222, "ssh-ed25519 AAAAkey root@pi", &file).expect("pin");
        assert_eq!(
            std::fs::read_to_string(&file).expect("read"),
            "[10.0.0.2]:2222 ssh-ed25519 AAAAkey\n"
        );
        SshHost::pin("pi.lan", 22, "ssh-ed25519 AAAAkey", &file).expect("pin");
        assert_eq!(
            std::fs::read_to_string(&file).expect("read"),
            "pi.lan ssh-ed25519 AAAAkey\n"
        );
    }
}
