//! [`Inventory`]: what the deployer knows about the site it deploys to.

use std::path::PathBuf;

/// Environment variable naming the site (see [`Inventory::autoload`]).
pub const SITE_ENV: &str = "HARMONY_SITE";
/// Environment variable naming a working directory for files Scores produce.
pub const WORKDIR_ENV: &str = "HARMONY_WORKDIR";

/// The site-level context passed to every interpret: a label for the site and where local files
/// go. Deliberately small; it grows only when a Score needs a fact that is about the site rather
/// than about the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// A label for the site, used in logs and by Scores that tag what they create.
    pub site: String,
    /// Where Scores that produce local files (kubeconfigs, rendered charts, …) put them. `None`
    /// means a Score picks its own default.
    pub working_dir: Option<PathBuf>,
}

impl Default for Inventory {
    fn default() -> Self {
        Self::new("local")
    }
}

impl Inventory {
    /// An inventory for the named site, without a working directory.
    pub fn new(site: impl Into<String>) -> Self {
        Self {
            site: site.into(),
            working_dir: None,
        }
    }

    /// Sets the working directory.
    #[must_use]
    pub fn with_working_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    /// Reads the inventory from the environment: the site from `HARMONY_SITE` (default `local`)
    /// and the working directory from `HARMONY_WORKDIR` (default none). Empty values count as
    /// unset.
    pub fn autoload() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let non_empty = |name| lookup(name).filter(|value: &String| !value.is_empty());
        let mut inventory = non_empty(SITE_ENV).map_or_else(Self::default, Self::new);
        inventory.working_dir = non_empty(WORKDIR_ENV).map(PathBuf::from);
        inventory
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autoload_defaults_to_local_site_without_working_dir() {
        assert_eq!(Inventory::from_lookup(|_| None), Inventory::default());
        assert_eq!(Inventory::default().site, "local");
    }

    #[test]
    fn autoload_reads_site_and_working_dir() {
        let inventory = Inventory::from_lookup(|name| match name {
            SITE_ENV => Some("plant-3".into()),
            WORKDIR_ENV => Some("/var/lib/harmony".into()),
            _ => None,
        });
        assert_eq!(
            inventory,
            Inventory::new("plant-3").with_working_dir("/var/lib/harmony")
        );
    }

    #[test]
    fn autoload_treats_empty_values_as_unset() {
        assert_eq!(
            Inventory::from_lookup(|_| Some(String::new())),
            Inventory::default()
        );
    }
}
