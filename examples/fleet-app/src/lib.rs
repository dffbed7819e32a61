//! An example of another team's harmony project: it ships its own app, a greeter answering
//! HTTP on every device of a site, to a harmony fleet, by reusing the fleet's Scores
//! (`harmony-fleet-deploy`) beside a Score of its own.
//!
//! [`FleetApp::scores`] is the whole deployment, in order:
//!
//! 1. [`FleetServerScore`]: NATS and the fleet operator;
//! 2. one [`FleetAgentScore`] per device (local processes, or Pods on a cluster);
//! 3. [`AppConfigScore`], this project's own: the greeter's config, checked, rendered and kept
//!    in a ConfigMap;
//! 4. a [`FleetDeploymentScore`] running the greeter, with that rendered config in its
//!    payload, on the devices the selector matches.
//!
//! The list is built once, generically, for any topology every one of these Scores supports:
//! `main` picks `LocalTopology` (`fleet-app local`) or `K8sAnywhereTopology`
//! (`fleet-app cluster`), and a topology lacking a capability they need would not compile.
//!
//! Modules: [`config`] holds [`AppConfig`] and how it renders into the fleet payload;
//! [`score`] holds [`AppConfigScore`].

#![deny(missing_docs)]

pub mod config;
pub mod score;

use std::collections::BTreeMap;

use harmony::score::Score;
use harmony::topology::Topology;
use harmony_fleet_deploy::{FleetAgentScore, FleetDeploymentScore, FleetServerScore};
use harmony_fleet_types::crd::deployment::TargetSelector;

pub use config::{AppConfig, ConfigError};
pub use score::AppConfigScore;

/// The label the greeter's devices carry, and its Deployment selects on.
pub const SITE_LABEL: &str = "site";

/// Everything this project deploys.
#[derive(Debug, Clone)]
pub struct FleetApp {
    /// NATS and the operator.
    pub server: FleetServerScore,
    /// The devices' agents.
    pub agents: Vec<FleetAgentScore>,
    /// The greeter's config.
    pub app: AppConfigScore,
    /// The devices that run the greeter.
    pub selector: TargetSelector,
}

impl FleetApp {
    /// Devices labelled `site=<site>` (see [`site_labels`]).
    pub fn site_selector(site: &str) -> TargetSelector {
        TargetSelector {
            match_labels: site_labels(site),
            ..TargetSelector::default()
        }
    }

    /// The greeter's fleet Deployment.
    pub fn deployment(&self) -> Result<FleetDeploymentScore, ConfigError> {
        self.app.fleet_deployment(self.selector.clone())
    }

    /// The Scores, in the order they run, for any topology all of them support.
    pub fn scores<T>(&self) -> Result<Vec<Box<dyn Score<T>>>, ConfigError>
    where
        T: Topology + 'static,
        FleetServerScore: Score<T>,
        FleetAgentScore: Score<T>,
        AppConfigScore: Score<T>,
        FleetDeploymentScore: Score<T>,
    {
        let mut scores: Vec<Box<dyn Score<T>>> = vec![Box::new(self.server.clone())];
        for agent in &self.agents {
            scores.push(Box::new(agent.clone()));
        }
        scores.push(Box::new(self.app.clone()));
        scores.push(Box::new(self.deployment()?));
        Ok(scores)
    }
}

/// The labels of a device of `site`.
pub fn site_labels(site: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(SITE_LABEL.to_owned(), site.to_owned())])
}
