//! [`LivePolicy`] is the one owner of the running policy. The config
//! reloader, the API server version tracker and the Nodes watch each hand
//! it their input; it keeps the latest of every input and rebuilds the
//! policy from all of them under one lock. No updater reads another's last
//! result and writes it back, so a reload racing a version change cannot
//! undo it. Changes the operator should know about (a version outside the
//! supported range, a routing value replaced) are logged once per change.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use tracing::warn;

use crate::core::config::Config;
use crate::core::policy::{Environment, Policy};
use crate::core::versions::KubeVersion;

/// The latest of each input to the policy.
#[derive(Debug)]
struct Inputs {
    config: Config,
    env: Environment,
}

/// The running policy and its one owner (see the module comment).
#[derive(Debug)]
pub struct LivePolicy {
    inputs: Mutex<Inputs>,
    current: ArcSwap<Policy>,
}

impl LivePolicy {
    pub fn new(config: Config, env: Environment) -> LivePolicy {
        let policy = Policy::new(config.clone(), &env);
        if let Some(note) = policy.version_note() {
            warn!(%note, "Kubernetes version outside the supported range");
        }
        if let Some(note) = policy.routing.note() {
            warn!(%note, "service.routing adjusted for the API server version");
        }
        LivePolicy {
            current: ArcSwap::from_pointee(policy),
            inputs: Mutex::new(Inputs { config, env }),
        }
    }

    /// The policy now: what a review uses, start to finish.
    pub fn load(&self) -> Guard<Arc<Policy>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    /// A new config file (reload).
    pub fn set_config(&self, config: Config) -> Arc<Policy> {
        self.update(|i| i.config = config)
    }

    /// The API server's version (start-up, or re-read after a reconnect).
    pub fn set_server_version(&self, version: KubeVersion) -> Arc<Policy> {
        self.update(|i| i.env.server_version = Some(version))
    }

    /// The zones of the cluster's Nodes (`None`: not known).
    pub fn set_cluster_zones(&self, zones: Option<BTreeSet<String>>) -> Arc<Policy> {
        self.update(|i| i.env.cluster_zones = zones)
    }

    /// Changes one input and rebuilds the policy from all of them, under the
    /// lock, so concurrent updates are applied one after the other and each
    /// sees the others' latest inputs.
    fn update(&self, change: impl FnOnce(&mut Inputs)) -> Arc<Policy> {
        let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut inputs);
        let policy = Arc::new(Policy::new(inputs.config.clone(), &inputs.env));
        let before = self.current.load();
        // Logged once per change of version, not per review or reload.
        if policy.version != before.version
            && let Some(note) = policy.version_note()
        {
            warn!(%note, "Kubernetes version outside the supported range");
        }
        // Logged once per change of what zonewise sends, not per review.
        if policy.routing != before.routing
            && let Some(note) = policy.routing.note()
        {
            warn!(%note, "service.routing adjusted for the API server version");
        }
        self.current.store(policy.clone());
        policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::Routing;
    use crate::core::versions;

    fn v(minor: u32) -> KubeVersion {
        KubeVersion::new(1, minor)
    }

    /// A config reloader and a version tracker updating at once, many
    /// times: once both are done, the policy holds the reloader's last config
    /// and the tracker's last version, and the routing derived from both.
    /// (With two stores each rebuilt from the other's last value, a reload
    /// could rebuild from a version the tracker had already replaced, and
    /// the newer version was lost until the next reconnect.)
    #[test]
    fn concurrent_reloads_and_version_changes_never_undo_each_other() {
        let routings = [Routing::Auto, Routing::Annotation, Routing::PreferSameZone];
        for round in 0..200usize {
            let live = Arc::new(LivePolicy::new(Config::default(), Environment::default()));
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let (l, b) = (live.clone(), barrier.clone());
            let reloader = std::thread::spawn(move || {
                b.wait();
                let mut last = Routing::Auto;
                for i in 0..100 {
                    let mut c = Config::default();
                    last = routings[(round + i) % 3];
                    c.service.routing = last;
                    l.set_config(c);
                }
                last
            });
            let (l, b) = (live.clone(), barrier);
            let tracker = std::thread::spawn(move || {
                b.wait();
                let mut last = v(29);
                for i in 0..100 {
                    last = v(29 + ((round + i) % 10) as u32);
                    l.set_server_version(last);
                }
                last
            });
            let (routing, version) = (reloader.join().unwrap(), tracker.join().unwrap());
            let p = live.load_full();
            assert_eq!(p.config.service.routing, routing, "round {round}");
            assert_eq!(p.version, Some(version), "round {round}");
            assert_eq!(p.routing, versions::resolve_routing(routing, Some(version)));
        }
    }
}
