//! The five rules, one module each, named as in the config, the
//! `zonewise.io/skip` annotation, metrics and logs.
//!
//! Each rule is a pure function of the raw object, the policy and the
//! lookups. Mutating rules add targeted operations to the review's shared
//! [`PatchBuilder`] and may add warnings; an object that already complies
//! adds nothing, which is what makes a second review of a patched object
//! produce no patch.

use std::fmt;

use serde_json::Value;

use crate::config::Policy;
use crate::lookups::Lookups;
use crate::object;
use crate::patch::PatchBuilder;

pub mod call_affinity;
pub mod lb_ip_target;
pub mod local_policy;
pub mod zone_routing;
pub mod zone_spread;

pub const SKIP: &str = "zonewise.io/skip";
pub const CALLS: &str = "zonewise.io/calls";
pub const ALLOW_LOCAL: &str = "zonewise.io/allow-local";
pub const APPLIED: &str = "zonewise.io/applied";

pub const TOPOLOGY_MODE: &str = "service.kubernetes.io/topology-mode";
/// Replaced by `topology-mode` in 1.27 but still honoured; the owner having
/// set either one is a choice zone-routing must not override.
pub const TOPOLOGY_HINTS: &str = "service.kubernetes.io/topology-aware-hints";

pub const ZONE_KEY: &str = "topology.kubernetes.io/zone";
/// Deprecated zone label, still found on older node pools and manifests.
pub const LEGACY_ZONE_KEY: &str = "failure-domain.beta.kubernetes.io/zone";
pub const HOSTNAME_KEY: &str = "kubernetes.io/hostname";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    ZoneRouting,
    LbIpTarget,
    ZoneSpread,
    CallAffinity,
    LocalPolicy,
}

impl Rule {
    pub const ALL: [Rule; 5] = [
        Rule::ZoneRouting,
        Rule::LbIpTarget,
        Rule::ZoneSpread,
        Rule::CallAffinity,
        Rule::LocalPolicy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rule::ZoneRouting => "zone-routing",
            Rule::LbIpTarget => "lb-ip-target",
            Rule::ZoneSpread => "zone-spread",
            Rule::CallAffinity => "call-affinity",
            Rule::LocalPolicy => "local-policy",
        }
    }

    pub fn parse(s: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.name() == s)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a rule may read besides the object itself.
pub struct Context<'a> {
    /// The namespace of the object (the request's; objects being created
    /// often carry none in their metadata).
    pub namespace: &'a str,
    pub policy: &'a Policy,
    pub lookups: &'a dyn Lookups,
}

/// What mutating rules produce: operations on the shared builder, warnings
/// for the person running `kubectl`.
pub struct Mutation<'a> {
    pub patch: PatchBuilder<'a>,
    pub warnings: Vec<String>,
}

impl<'a> Mutation<'a> {
    pub fn new(object: &'a Value) -> Self {
        Mutation {
            patch: PatchBuilder::new(object),
            warnings: Vec::new(),
        }
    }
}

/// Service `spec.type`, defaulted as the API server defaults it.
pub fn service_type(svc: &Value) -> &str {
    object::str_at(svc, &["spec", "type"]).unwrap_or("ClusterIP")
}

/// `spec.internalTrafficPolicy: Local` (the default is Cluster).
pub fn is_local(svc: &Value) -> bool {
    object::str_at(svc, &["spec", "internalTrafficPolicy"]) == Some("Local")
}

/// The Service has a selector (an empty one means "no selector").
pub fn has_selector(svc: &Value) -> bool {
    object::string_map(svc, &["spec", "selector"])
        .next()
        .is_some()
}

/// The Service's selector pairs; empty means "no selector".
pub fn service_selector(svc: &Value) -> Vec<(&str, &str)> {
    object::string_map(svc, &["spec", "selector"]).collect()
}

/// The owner already chose how topology routing works for this Service.
pub fn has_topology_setting(svc: &Value) -> bool {
    object::at(svc, &["spec", "trafficDistribution"]).is_some()
        || object::has_annotation(svc, TOPOLOGY_MODE)
        || object::has_annotation(svc, TOPOLOGY_HINTS)
}

/// Shared fixtures for the rule unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::config::{Config, Environment, Policy};
    use crate::lookups::NoCluster;
    use serde_json::json;

    /// Runs a mutating rule and returns (patched object, warnings, op count),
    /// after checking the patch applies and a second run adds nothing.
    pub fn run(
        obj: &Value,
        rule: impl Fn(&Value, &mut Mutation<'_>) -> Result<(), crate::patch::PatchError>,
    ) -> (Value, Vec<String>, usize) {
        let mut m = Mutation::new(obj);
        rule(obj, &mut m).expect("rule failed");
        let ops = m.patch.len();
        let warnings = m.warnings;
        let mut out = obj.clone();
        json_patch::patch(&mut out, &m.patch.into_patch()).expect("patch applies");
        let mut again = Mutation::new(&out);
        rule(&out, &mut again).expect("rule failed on its own output");
        assert!(
            again.patch.is_empty(),
            "second run is not a no-op: {:?}",
            again.patch.ops()
        );
        (out, warnings, ops)
    }

    pub fn policy(yaml: &str) -> Policy {
        Policy::new(
            Config::from_yaml(yaml).expect("config"),
            &Environment::default(),
        )
    }

    pub fn ctx<'a>(policy: &'a Policy, lookups: &'a dyn Lookups) -> Context<'a> {
        Context {
            namespace: "shop",
            policy,
            lookups,
        }
    }

    pub const NO_CLUSTER: &NoCluster = &NoCluster;

    /// A minimal ClusterIP Service with a selector, as a user writes it.
    pub fn service() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": {"selector": {"app": "orders"}, "ports": [{"port": 80}]}
        })
    }

    /// A minimal Deployment, as a user writes it.
    pub fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "web:1"}]}
                }
            }
        })
    }

    /// Sets a value at a path, creating objects on the way (test builder).
    pub fn with(mut v: Value, path: &[&str], value: Value) -> Value {
        let mut cur = &mut v;
        for key in &path[..path.len() - 1] {
            cur = cur
                .as_object_mut()
                .expect("object")
                .entry(key.to_string())
                .or_insert_with(|| json!({}));
        }
        cur.as_object_mut()
            .expect("object")
            .insert(path[path.len() - 1].to_string(), value);
        v
    }

    pub fn annotated(v: Value, key: &str, value: &str) -> Value {
        with(v, &["metadata", "annotations", key], json!(value))
    }
}
