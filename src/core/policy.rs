//! The effective policy: the config file combined with what the cluster (or
//! the command line) says about where zonewise runs, indexed for the
//! admission path.
//!
//! Pure: the running policy and its updates are `server::live`'s.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::core::config::{Config, ObjectRef};
use crate::core::versions::{self, Features, KubeVersion, RoutingChoice, RoutingMode};

/// Facts about where zonewise runs that shape the effective policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    /// The API server's version, read from the cluster.
    pub server_version: Option<KubeVersion>,
    /// `--kube-version`: for when there is no cluster to ask.
    pub version_flag: Option<KubeVersion>,
    /// The zones of the cluster's Nodes, once the cache has listed them.
    pub cluster_zones: Option<BTreeSet<String>>,
    /// The namespace zonewise itself runs in; never mutated.
    pub own_namespace: Option<String>,
}

/// Where the effective Kubernetes version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSource {
    Cluster,
    Flag,
    Config,
    Unknown,
}

/// The validated config plus what was derived from it and the environment.
#[derive(Debug, Clone)]
pub struct Policy {
    pub config: Config,
    /// The API server version the policy is for, and where it came from.
    pub version: Option<KubeVersion>,
    pub version_source: VersionSource,
    pub features: Features,
    pub routing: RoutingChoice,
    /// The cluster's zones: from its Nodes, else from the config; `None`
    /// when unknown.
    pub zones: Option<BTreeSet<String>>,
    pub excluded: BTreeSet<String>,
    call_graph: HashMap<ObjectRef, Vec<ObjectRef>>,
    service_selectors: HashMap<ObjectRef, BTreeMap<String, String>>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::new(Config::default(), &Environment::default())
    }
}

impl Policy {
    /// Builds the effective policy. `config` must have passed
    /// [`Config::validate`]; invalid references are dropped, not panicked on.
    pub fn new(config: Config, env: &Environment) -> Policy {
        let config_version = config
            .kubernetes_version
            .as_deref()
            .and_then(KubeVersion::parse);
        let (version, version_source) = match (env.server_version, env.version_flag, config_version)
        {
            (Some(v), _, _) => (Some(v), VersionSource::Cluster),
            (None, Some(v), _) => (Some(v), VersionSource::Flag),
            (None, None, Some(v)) => (Some(v), VersionSource::Config),
            (None, None, None) => (None, VersionSource::Unknown),
        };
        let routing = versions::resolve_routing(config.service.routing, version);
        let zones = env
            .cluster_zones
            .clone()
            .or_else(|| (!config.zones.is_empty()).then(|| config.zones.iter().cloned().collect()));
        let mut excluded: BTreeSet<String> = config.excluded_namespaces.iter().cloned().collect();
        if let Some(ns) = &env.own_namespace {
            excluded.insert(ns.clone());
        }
        let mut call_graph: HashMap<ObjectRef, Vec<ObjectRef>> = HashMap::new();
        for entry in &config.call_graph {
            let Some(from) = ObjectRef::parse_slash(&entry.from) else {
                continue;
            };
            let callees = call_graph.entry(from).or_default();
            for to in entry.to.iter().filter_map(|t| ObjectRef::parse_slash(t)) {
                if !callees.contains(&to) {
                    callees.push(to);
                }
            }
        }
        let service_selectors = config
            .service_selectors
            .iter()
            .filter_map(|(k, v)| Some((ObjectRef::parse_slash(k)?, v.clone())))
            .collect();
        Policy {
            features: Features::of(version),
            config,
            version,
            version_source,
            routing,
            zones,
            excluded,
            call_graph,
            service_selectors,
        }
    }

    /// Services the workload `from` is declared to call in the config.
    pub fn callees_of(&self, from: &ObjectRef) -> &[ObjectRef] {
        self.call_graph.get(from).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn declared_selector(&self, service: &ObjectRef) -> Option<&BTreeMap<String, String>> {
        self.service_selectors.get(service)
    }

    /// The in-zone routing to recommend in messages on this server.
    pub fn recommended_routing(&self) -> RoutingMode {
        versions::recommended_routing(self.version)
    }

    /// Said when the version is outside the supported range (newer ones
    /// are answered as the newest known).
    pub fn version_note(&self) -> Option<String> {
        self.version.and_then(KubeVersion::support_note)
    }

    /// The API server is newer than the newest version zonewise knows.
    pub fn version_beyond_newest(&self) -> bool {
        self.version
            .is_some_and(|v| v.support() == versions::Support::Newer)
    }

    /// The version as messages name it: `Kubernetes 1.33`, or `this API
    /// server` when unknown.
    pub fn server_name(&self) -> String {
        self.version
            .map_or_else(|| "this API server".into(), |v| format!("Kubernetes {v}"))
    }

    /// The effective policy as YAML, for `check-config` and the start-up log.
    pub fn describe(&self) -> String {
        let mut out = self.config.to_yaml();
        let version = match (self.version, self.version_source) {
            (Some(v), source) => {
                let from = match source {
                    VersionSource::Cluster => "the API server",
                    VersionSource::Flag => "--kube-version",
                    VersionSource::Config => "kubernetesVersion",
                    VersionSource::Unknown => "unknown",
                };
                format!("{v} (from {from})")
            }
            (None, _) => {
                "unknown (no cluster access, no --kube-version or kubernetesVersion)".into()
            }
        };
        out.push_str("# effective:\n");
        out.push_str(&format!("#   kubernetes version: {version}\n"));
        if let Some(note) = self.version_note() {
            out.push_str(&format!("#   note: {note}\n"));
        }
        out.push_str(&format!("#   zone-routing: {}\n", self.routing.mode));
        if let Some(note) = self.routing.note() {
            out.push_str(&format!("#   note: {note}\n"));
        }
        out.push_str(&format!(
            "#   local-policy convert: {}\n",
            if self.features.prefer_same_node {
                "replaces Local with trafficDistribution: PreferSameNode"
            } else {
                "not possible here (PreferSameNode needs 1.34+); acts as enforce"
            }
        ));
        out.push_str(&format!(
            "#   zones: {}\n",
            self.zones.as_ref().map_or_else(
                || "unknown".to_string(),
                |z| z.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        ));
        out.push_str(&format!(
            "#   excluded namespaces: {}\n",
            self.excluded.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(minor: u32) -> KubeVersion {
        KubeVersion::new(1, minor)
    }

    #[test]
    fn the_cluster_version_wins_then_the_flag_then_the_config() {
        let config = Config::from_yaml("kubernetesVersion: \"1.30\"\n").unwrap();
        let mut env = Environment::default();
        let p = Policy::new(config.clone(), &env);
        assert_eq!(
            (p.version, p.version_source),
            (Some(v(30)), VersionSource::Config)
        );
        assert_eq!(p.routing.mode, RoutingMode::Annotation);
        env.version_flag = Some(v(33));
        let p = Policy::new(config.clone(), &env);
        assert_eq!(
            (p.version, p.version_source),
            (Some(v(33)), VersionSource::Flag)
        );
        env.server_version = Some(v(36));
        let p = Policy::new(config, &env);
        assert_eq!(
            (p.version, p.version_source),
            (Some(v(36)), VersionSource::Cluster)
        );
        assert_eq!(p.routing.mode, RoutingMode::Field("PreferSameZone"));
        assert!(p.describe().contains("1.36 (from the API server)"));
    }

    #[test]
    fn zones_from_the_cluster_else_the_config() {
        let config = Config::from_yaml("zones: [a, b, c]\n").unwrap();
        let mut env = Environment::default();
        assert_eq!(Policy::new(config.clone(), &env).zones.unwrap().len(), 3);
        env.cluster_zones = Some(["x".to_string(), "y".to_string()].into());
        assert_eq!(Policy::new(config, &env).zones.unwrap().len(), 2);
        assert_eq!(Policy::default().zones, None);
    }

    #[test]
    fn own_namespace_is_excluded() {
        let env = Environment {
            own_namespace: Some("platform".into()),
            ..Environment::default()
        };
        let p = Policy::new(Config::default(), &env);
        assert!(p.excluded.contains("platform"));
        assert!(p.excluded.contains("kube-system"));
    }

    #[test]
    fn describe_states_substitutions_and_deprecations() {
        let c = |y: &str| Config::from_yaml(y).unwrap();
        let env = |minor| Environment {
            version_flag: Some(v(minor)),
            ..Environment::default()
        };
        let d = Policy::new(c("service: {routing: PreferSameZone}"), &env(33)).describe();
        assert!(
            d.contains("zone-routing: trafficDistribution: PreferClose"),
            "{d}"
        );
        assert!(d.contains("not accepted by Kubernetes 1.33"), "{d}");
        let d = Policy::new(c("service: {routing: PreferClose}"), &env(36)).describe();
        assert!(d.contains("deprecated on Kubernetes 1.36"), "{d}");
        let d = Policy::new(c("kubernetesVersion: \"1.27\""), &Environment::default()).describe();
        assert!(
            d.contains("1.27 is older than 1.29 and out of support"),
            "{d}"
        );
        assert!(
            d.contains("zone-routing: service.kubernetes.io/topology-mode: Auto"),
            "{d}"
        );
        let d = Policy::new(c(""), &env(37)).describe();
        assert!(!d.contains("note:") && !d.contains("support"), "{d}");
        let p = Policy::new(c(""), &env(38));
        assert!(p.version_beyond_newest());
        let d = p.describe();
        assert!(
            d.contains("note: Kubernetes 1.38 is newer than 1.37, answered as 1.37"),
            "{d}"
        );
        assert!(
            d.contains("zone-routing: trafficDistribution: PreferSameZone"),
            "{d}"
        );
        assert!(!Policy::new(c(""), &env(37)).version_beyond_newest());
    }
}
