//! Where the fleet's own binaries (operator, agent) are found when a Score runs them as local
//! processes: an explicit environment variable, next to the running executable (a `cargo
//! build` puts every binary of the workspace in one directory; test executables live one level
//! down, in `deps/`), then `PATH`.

use std::path::{Path, PathBuf};

use crate::error::DeployError;

/// A binary built by this workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetBinary {
    /// File name.
    pub name: &'static str,
    /// Cargo package building it.
    pub package: &'static str,
    /// Environment variable overriding the lookup.
    pub env: &'static str,
}

/// `harmony-fleet-operator`.
pub const OPERATOR: FleetBinary = FleetBinary {
    name: "harmony-fleet-operator",
    package: "harmony-fleet-operator",
    env: "HARMONY_FLEET_OPERATOR_BIN",
};

/// `harmony-fleet-deploy`.
pub const DEPLOY: FleetBinary = FleetBinary {
    name: "harmony-fleet-deploy",
    package: "harmony-fleet-deploy",
    env: "HARMONY_FLEET_DEPLOY_BIN",
};

/// `fleet-agent`.
pub const AGENT: FleetBinary = FleetBinary {
    name: "fleet-agent",
    package: "harmony-fleet-agent",
    env: "HARMONY_FLEET_AGENT_BIN",
};

impl FleetBinary {
    /// The binary's path, or an error naming the build command.
    pub fn locate(&self) -> Result<PathBuf, DeployError> {
        if let Some(path) = std::env::var_os(self.env).filter(|v| !v.is_empty()) {
            let path = PathBuf::from(path);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(self.missing(format!("{}={}", self.env, path.display())))
            };
        }
        let mut searched = Vec::new();
        for dir in candidate_dirs() {
            let path = dir.join(self.name);
            if path.is_file() {
                return Ok(path);
            }
            searched.push(dir.display().to_string());
        }
        searched.push("PATH".into());
        Err(self.missing(searched.join(", ")))
    }

    fn missing(&self, searched: String) -> DeployError {
        DeployError::MissingBinary {
            name: self.name,
            package: self.package,
            env: self.env,
            searched,
        }
    }
}

fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_owned());
        if dir.file_name().is_some_and(|n| n == "deps")
            && let Some(profile_dir) = dir.parent()
        {
            dirs.push(profile_dir.to_owned());
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path).filter(|p| p != Path::new("")));
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_the_build_command() {
        let ghost = FleetBinary {
            name: "no-such-fleet-binary",
            package: "no-such-package",
            env: "HARMONY_FLEET_TEST_NO_SUCH_BIN",
        };
        let err = ghost.locate().expect_err("missing").to_string();
        assert!(
            err.contains("cargo build --release -p no-such-package"),
            "{err}"
        );
        assert!(err.contains("HARMONY_FLEET_TEST_NO_SUCH_BIN"), "{err}");
    }
}
