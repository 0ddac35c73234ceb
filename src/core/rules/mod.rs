//! The rules, one module each, and the table that declares them.
//!
//! Each row of [`RULES`] says which kinds a rule acts on, what it does
//! (mutate on CREATE, or check on CREATE and on UPDATE), and every path of
//! the object it reads, with the k8s-openapi type found there. Everything
//! else is derived from the table: which parts of an incoming object the
//! sparse parser keeps ([`crate::core::sparse`]), what the typed check before the
//! rules looks at, which rules run for which request. Adding a rule or a
//! kind is a row here (and in [`KINDS`]), not edits in four places; a test
//! (`tests/properties.rs`) fails when a rule reads a path it did not
//! declare.
//!
//! Each rule is a pure function of the raw object, the policy and the
//! lookups. It adds targeted operations to the review's shared
//! [`PatchBuilder`] and may add warnings; an object that already complies
//! adds nothing, which is what makes a second review of a patched object
//! produce no patch.

use std::any::TypeId;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Deserialize;
use serde_json::Value;

use crate::core::admission::Operation;
pub use crate::core::admission::{Kind, Rule};
use crate::core::lookups::Lookups;
use crate::core::object;
use crate::core::patch::{PatchBuilder, PatchError};
use crate::core::policy::Policy;
use crate::core::warnings::{Priority, Warnings};

pub mod alb_ip_target;
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
/// The AWS Load Balancer Controller injects its pod readiness gate only in
/// namespaces with this label; without it, IP-target rollouts are not
/// zero-downtime.
pub const READINESS_GATE_LABEL: &str = "elbv2.k8s.aws/pod-readiness-gate-inject";

pub const ZONE_KEY: &str = "topology.kubernetes.io/zone";
/// Deprecated zone label, still found on older node pools and manifests.
pub const LEGACY_ZONE_KEY: &str = "failure-domain.beta.kubernetes.io/zone";
pub const HOSTNAME_KEY: &str = "kubernetes.io/hostname";

/// A Node's zone from its labels: the current label, else the deprecated
/// one; an empty value is no zone.
pub fn node_zone(labels: &BTreeMap<String, String>) -> Option<&str> {
    labels
        .get(ZONE_KEY)
        .or_else(|| labels.get(LEGACY_ZONE_KEY))
        .map(String::as_str)
        .filter(|z| !z.is_empty())
}

// ------------------------------------------------------------ declarations

/// A path of the object that a rule (or the pipeline) reads, and the type
/// the value there must deserialize as. `"*"` in a path stands for every
/// item of an array.
#[derive(Clone, Copy)]
pub struct Read {
    pub path: &'static [&'static str],
    check: fn(&Value) -> Result<(), String>,
}

impl std::fmt::Debug for Read {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Read({})", self.path.join("."))
    }
}

/// `path` holds a `T` (or nothing).
pub const fn read<T: for<'de> Deserialize<'de> + 'static>(path: &'static [&'static str]) -> Read {
    Read {
        path,
        check: check_as::<T>,
    }
}

fn check_as<T: for<'de> Deserialize<'de> + 'static>(v: &Value) -> Result<(), String> {
    // Most declared reads are strings and string maps, and a few are any
    // JSON: those are checked in place when they are well-typed, with the
    // same answer as deserializing them, but without building a copy only
    // to drop it (this ran for every declared path of every review). The
    // type tests are constants, so each instance keeps one branch.
    let t = TypeId::of::<T>();
    let in_place = if t == TypeId::of::<Value>() {
        true
    } else if t == TypeId::of::<String>() {
        v.is_string()
    } else if t == TypeId::of::<StringMap>() {
        v.as_object()
            .is_some_and(|m| m.values().all(Value::is_string))
    } else {
        false
    };
    if in_place {
        return Ok(());
    }
    T::deserialize(v).map(drop).map_err(|e| e.to_string())
}

type StringMap = BTreeMap<String, String>;

/// What the pipeline itself reads of every object: its identity, and the
/// annotations (`zonewise.io/skip`, `zonewise.io/applied`, and each rule's
/// own).
const OBJECT_READS: &[Read] = &[
    read::<String>(&["apiVersion"]),
    read::<String>(&["kind"]),
    read::<String>(&["metadata", "name"]),
    read::<String>(&["metadata", "generateName"]),
    read::<String>(&["metadata", "namespace"]),
    read::<StringMap>(&["metadata", "annotations"]),
];

/// What the pipeline reads of a pod-template owner: `zonewise.io/skip` or
/// `zonewise.io/calls` misplaced on the pod template is worth a warning.
const WORKLOAD_READS: &[Read] = &[read::<StringMap>(&[
    "spec",
    "template",
    "metadata",
    "annotations",
])];

/// A kind the rules act on: what the pipeline reads of it, what it must
/// have, and its whole-object type.
pub struct KindSpec {
    pub kind: Kind,
    pub reads: &'static [Read],
    /// Fields the API server requires of their parent when the parent is
    /// there (`spec.selector` in a Deployment that has a `spec`): an object
    /// without them does not parse as its kind.
    pub required: &'static [&'static [&'static str]],
    /// The whole object as its k8s-openapi type (`zonewise mutate` and the
    /// audit, which hold whole objects).
    whole: fn(&Value) -> Result<(), String>,
}

pub const KINDS: &[KindSpec] = &[
    KindSpec {
        kind: Kind::Service,
        reads: &[],
        required: &[],
        whole: check_as::<k8s_openapi::api::core::v1::Service>,
    },
    KindSpec {
        kind: Kind::Deployment,
        reads: WORKLOAD_READS,
        required: &[&["spec", "selector"], &["spec", "template"]],
        whole: check_as::<k8s_openapi::api::apps::v1::Deployment>,
    },
    KindSpec {
        kind: Kind::StatefulSet,
        reads: WORKLOAD_READS,
        required: &[&["spec", "selector"], &["spec", "template"]],
        whole: check_as::<k8s_openapi::api::apps::v1::StatefulSet>,
    },
    KindSpec {
        kind: Kind::Ingress,
        reads: &[],
        required: &[],
        whole: check_as::<k8s_openapi::api::networking::v1::Ingress>,
    },
];

pub fn kind_spec(kind: Kind) -> &'static KindSpec {
    // KINDS has one row per Kind (checked by a test), so this always finds.
    KINDS.iter().find(|k| k.kind == kind).unwrap_or(&KINDS[0])
}

/// What a rule does.
#[derive(Clone, Copy)]
pub enum Action {
    /// Runs on CREATE through `/mutate`; adds patch operations.
    Mutate(fn(&Value, &Context<'_>, &mut Mutation<'_>) -> Result<(), PatchError>),
    /// Runs on CREATE and on UPDATE (given the old object), through
    /// `/mutate` and `/validate`; may deny, and through `/mutate` may patch.
    Check(fn(&Value, Option<&Value>, &Context<'_>, &mut Mutation<'_>) -> Check),
}

/// A check's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Allow,
    /// Deny with this message (HTTP-style status 403).
    Deny(String),
}

pub struct RuleSpec {
    pub rule: Rule,
    pub kinds: &'static [Kind],
    pub action: Action,
    /// Paths of the object the rule reads, besides what the pipeline reads.
    pub reads: &'static [Read],
    /// Paths of `oldObject` it reads (checks on UPDATE only).
    pub reads_old: &'static [Read],
}

/// The rules, in the order they run (and are listed in
/// `zonewise.io/applied`). Checks run before mutations whatever their place.
pub const RULES: &[RuleSpec] = &[
    zone_routing::SPEC,
    lb_ip_target::SPEC,
    zone_spread::SPEC,
    call_affinity::SPEC,
    local_policy::SPEC,
    alb_ip_target::SPEC,
];

/// The rows that act on `kind`.
pub fn rules_for(kind: Kind) -> impl Iterator<Item = &'static RuleSpec> {
    RULES.iter().filter(move |r| r.kinds.contains(&kind))
}

/// What the pipeline itself reads of an object of `kind`, before any rule.
pub fn pipeline_reads(kind: Kind) -> impl Iterator<Item = &'static Read> {
    OBJECT_READS.iter().chain(kind_spec(kind).reads)
}

/// Every path read of an object of `kind` (pipeline and rules), or of its
/// old object when `old`. An iterator over the static tables: the typed
/// check walks it on every review, and a collected copy cost three
/// allocations each time.
pub fn declared_reads(kind: Kind, old: bool) -> impl Iterator<Item = &'static Read> {
    let pipeline = (!old).then(|| pipeline_reads(kind));
    pipeline
        .into_iter()
        .flatten()
        .chain(rules_for(kind).flat_map(move |r| if old { r.reads_old } else { r.reads }))
}

/// The typed check before the rules run: the paths its kind requires, then
/// a whole object as its k8s-openapi type, a sparse one in every declared
/// path, each as its declared type (every path a rule reads or a patch
/// writes is in there). The API server has already decoded the whole
/// object into the same types before calling a webhook.
pub fn typed_check(kind: Kind, obj: &Value, complete: bool) -> Result<(), String> {
    let spec = kind_spec(kind);
    // Checked here for whole objects too: k8s-openapi reads a missing
    // required field as its default, so its types alone would accept what
    // the sparse check refuses (found by fuzzing the two against each
    // other).
    for path in spec.required {
        let parent = &path[..path.len() - 1];
        if object::at(obj, parent).is_some() && object::at(obj, path).is_none() {
            return Err(format!("missing field `{}`", path.join(".")));
        }
    }
    if complete {
        return (spec.whole)(obj);
    }
    for r in declared_reads(kind, false) {
        check_path(obj, r.path, r, 0)?;
    }
    Ok(())
}

/// Walks `path` from `v`: every step must be an object (an array at `*`),
/// absent or null, and what is at the end must parse as declared.
fn check_path(v: &Value, path: &[&str], r: &Read, depth: usize) -> Result<(), String> {
    let here = || r.path[..depth].join(".");
    match path.split_first() {
        None => (r.check)(v).map_err(|e| format!("{}: {e}", r.path.join("."))),
        Some((&"*", rest)) => match v {
            Value::Array(items) => items
                .iter()
                .try_for_each(|item| check_path(item, rest, r, depth + 1)),
            Value::Null => Ok(()),
            _ => Err(format!("{}: expected an array", here())),
        },
        Some((key, rest)) => match v {
            Value::Object(m) => match object::get(m, key) {
                None | Some(Value::Null) => Ok(()),
                Some(next) => check_path(next, rest, r, depth + 1),
            },
            Value::Null => Ok(()),
            _ if depth == 0 => Err("expected an object".into()),
            _ => Err(format!("{}: expected an object", here())),
        },
    }
}

// ----------------------------------------------------------------- running

/// What a rule may read besides the object itself.
pub struct Context<'a> {
    pub kind: Kind,
    /// The namespace of the object (the request's; objects being created
    /// often carry none in their metadata).
    pub namespace: &'a str,
    pub operation: Operation,
    /// `/validate` cannot patch: a check that would convert must deny.
    pub can_patch: bool,
    pub policy: &'a Policy,
    pub lookups: &'a dyn Lookups,
}

impl Context<'_> {
    /// `Kind namespace/name`, as warnings name the object.
    pub fn describe(&self, obj: &Value) -> String {
        format!(
            "{} {}/{}",
            self.kind,
            self.namespace,
            object::display_name(obj)
        )
    }
}

/// What rules produce: operations on the shared builder, warnings for the
/// person running `kubectl`.
pub struct Mutation<'a> {
    pub patch: PatchBuilder<'a>,
    pub warnings: Warnings,
}

impl<'a> Mutation<'a> {
    pub fn new(object: &'a Value) -> Self {
        Mutation {
            patch: PatchBuilder::new(object),
            warnings: Warnings::new(),
        }
    }

    pub fn warn(&mut self, priority: Priority, text: impl Into<String>) {
        self.warnings.push(priority, text);
    }
}

// ----------------------------------------------------------------- helpers

/// Service `spec.type`, defaulted as the API server defaults it.
pub fn service_type(svc: &Value) -> &str {
    object::str_at(svc, &["spec", "type"]).unwrap_or("ClusterIP")
}

/// `spec.internalTrafficPolicy: Local` (the default is Cluster).
pub fn is_local(svc: &Value) -> bool {
    object::str_at(svc, &["spec", "internalTrafficPolicy"]) == Some("Local")
}

/// `clusterIP: None` (or `clusterIPs: [None]`): DNS returns pod IPs and
/// kube-proxy is not involved.
pub fn is_headless(svc: &Value) -> bool {
    object::str_at(svc, &["spec", "clusterIP"]) == Some("None")
        || object::array_at(svc, &["spec", "clusterIPs"])
            .first()
            .and_then(Value::as_str)
            == Some("None")
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
    object::at(svc, &["spec", "trafficDistribution"]).is_some() || has_topology_annotation(svc)
}

pub fn has_topology_annotation(svc: &Value) -> bool {
    object::has_annotation(svc, TOPOLOGY_MODE) || object::has_annotation(svc, TOPOLOGY_HINTS)
}

/// What zone-routing and local-policy read of a Service: whether kube-proxy
/// routes it (type, selector, headless), its traffic policy and topology
/// settings (the annotations are the pipeline's).
const SERVICE_ROUTING: [Read; 6] = [
    read::<String>(&["spec", "type"]),
    read::<StringMap>(&["spec", "selector"]),
    read::<String>(&["spec", "clusterIP"]),
    read::<Vec<String>>(&["spec", "clusterIPs"]),
    read::<String>(&["spec", "internalTrafficPolicy"]),
    read::<String>(&["spec", "trafficDistribution"]),
];

/// The workload reads zone-spread and call-affinity share.
const POD_LABELS: Read = read::<StringMap>(&["spec", "template", "metadata", "labels"]);
const SELECTOR: Read = read::<LabelSelector>(&["spec", "selector"]);

/// Shared fixtures for the rule unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::core::config::Config;
    use crate::core::lookups::NoCluster;
    use crate::core::policy::Environment;
    use serde_json::json;

    /// Runs a mutating rule and returns (patched object, warnings, op count),
    /// after checking the patch applies and a second run adds nothing.
    pub fn run(
        obj: &Value,
        rule: impl Fn(&Value, &mut Mutation<'_>) -> Result<(), PatchError>,
    ) -> (Value, Vec<String>, usize) {
        let mut m = Mutation::new(obj);
        rule(obj, &mut m).expect("rule failed");
        let ops = m.patch.len();
        let warnings: Vec<String> = m.warnings.texts().map(str::to_string).collect();
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
        policy_for(yaml, Environment::default())
    }

    pub fn policy_for(yaml: &str, env: Environment) -> Policy {
        Policy::new(Config::from_yaml(yaml).expect("config"), &env)
    }

    pub fn ctx<'a>(kind: Kind, policy: &'a Policy, lookups: &'a dyn Lookups) -> Context<'a> {
        Context {
            kind,
            namespace: "shop",
            operation: Operation::Create,
            can_patch: true,
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

    /// The same workload as a StatefulSet.
    pub fn statefulset() -> Value {
        let mut v = deployment();
        v["kind"] = json!("StatefulSet");
        v["metadata"]["name"] = json!("db");
        v["spec"]["serviceName"] = json!("db");
        v
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_kind_has_one_row_and_every_rule_one_spec() {
        for kind in Kind::ALL {
            assert_eq!(KINDS.iter().filter(|k| k.kind == kind).count(), 1, "{kind}");
            assert!(rules_for(kind).next().is_some(), "no rule acts on {kind}");
        }
        for rule in Rule::ALL {
            assert_eq!(RULES.iter().filter(|r| r.rule == rule).count(), 1, "{rule}");
        }
    }

    #[test]
    fn sparse_typed_check_walks_declared_paths() {
        let dep = json!({"metadata": {"name": "x"}, "spec": {"selector": {"matchLabels": {"app": "x"}},
                          "template": {"spec": {"topologySpreadConstraints": "no"}}}});
        let e = typed_check(Kind::Deployment, &dep, false).unwrap_err();
        assert!(e.contains("topologySpreadConstraints"), "{e}");
        // Required of a spec that is there, in a whole object as in a
        // sparse one (k8s-openapi alone would default them).
        for complete in [false, true] {
            for (spec, missing) in [
                (json!({"template": {}}), "spec.selector"),
                (
                    json!({"selector": {"matchLabels": {"app": "x"}}}),
                    "spec.template",
                ),
                (json!({"replicas": 3}), "spec.selector"),
                // How the API server writes a Deployment sent without one:
                // Go's `Selector` pointer has no `omitempty`.
                (json!({"selector": null, "template": {}}), "spec.selector"),
            ] {
                for kind in [Kind::Deployment, Kind::StatefulSet] {
                    let e = typed_check(kind, &json!({"spec": spec}), complete).unwrap_err();
                    assert_eq!(e, format!("missing field `{missing}`"), "{kind} {complete}");
                }
            }
            assert!(typed_check(Kind::Deployment, &json!({"metadata": {}}), complete).is_ok());
        }
        let e = typed_check(Kind::Service, &json!({"spec": "oops"}), false).unwrap_err();
        assert!(e.contains("spec: expected an object"), "{e}");
        assert!(
            typed_check(
                Kind::Service,
                &json!({"spec": {"type": "ClusterIP"}}),
                false
            )
            .is_ok()
        );
        assert!(typed_check(Kind::Service, &json!([]), false).is_err());
    }
}
