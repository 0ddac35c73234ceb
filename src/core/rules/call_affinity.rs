//! `call-affinity`: schedule a caller near the pods of the Services it calls.
//!
//! Adds a preferred zone podAffinity term per callee, so chatty pairs share a
//! zone when capacity allows. Preferred, not required: required affinity to
//! pods that do not exist yet leaves the caller Pending. The one exception is
//! a callee Service that is `internalTrafficPolicy: Local` and backed by a
//! DaemonSet: a caller on a node without a callee pod has its traffic
//! dropped, and a DaemonSet runs wherever it can, so there the term is
//! required on the node. Any other Local callee (allowed by annotation) gets
//! a preferred hostname term instead, since a required one would strand
//! callers once the nodes with callee pods fill up.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodAffinity;
use serde_json::{Map, Value};

use super::{
    Action, CALLS, Context, HOSTNAME_KEY, Kind, Mutation, POD_LABELS, Rule, RuleSpec, SKIP,
    ZONE_KEY, read,
};
use crate::core::config::ObjectRef;
use crate::core::lookups::Lookup;
use crate::core::names;
use crate::core::object;
use crate::core::patch::PatchError;
use crate::core::policy::Policy;
use crate::core::warnings::Priority;

const POD_AFFINITY: [&str; 5] = ["spec", "template", "spec", "affinity", "podAffinity"];
const TEMPLATE_ANNOTATIONS: [&str; 4] = ["spec", "template", "metadata", "annotations"];
const PREFERRED: &str = "preferredDuringSchedulingIgnoredDuringExecution";
const REQUIRED: &str = "requiredDuringSchedulingIgnoredDuringExecution";
/// Callees per workload; a real call graph has a handful. The cap bounds
/// the work (and the patch) a single hostile annotation can cause.
pub const MAX_CALLEES: usize = 64;

pub const SPEC: RuleSpec = RuleSpec {
    rule: Rule::CallAffinity,
    kinds: &[Kind::Deployment, Kind::StatefulSet],
    action: Action::Mutate(apply),
    reads: &[POD_LABELS, read::<PodAffinity>(&POD_AFFINITY)],
    reads_old: &[],
};

pub fn apply(w: &Value, ctx: &Context<'_>, out: &mut Mutation<'_>) -> Result<(), PatchError> {
    let cfg = &ctx.policy.config.deployment.call_affinity;
    if !cfg.enabled {
        return Ok(());
    }
    for key in [CALLS, SKIP] {
        if object::at(w, &TEMPLATE_ANNOTATIONS)
            .and_then(|a| object::field(a, key))
            .is_some()
            && !object::has_annotation(w, key)
        {
            out.warn(
                Priority::Normal,
                format!(
                    "zonewise: {key} is on the pod template of {}, where zonewise does not read \
                     it; move it to the {}'s own metadata.annotations",
                    ctx.describe(w),
                    ctx.kind
                ),
            );
        }
    }
    let callees = callees(w, ctx, out);
    if callees.is_empty() {
        return Ok(());
    }
    let own_labels = object::object_at(w, &["spec", "template", "metadata", "labels"]);
    // The existing terms, looked up once for all callees.
    let pod_affinity = object::at(w, &POD_AFFINITY);
    let existing = |list: &str| {
        pod_affinity
            .and_then(|a| object::field(a, list))
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
    };
    for callee in callees {
        let Some((selector, topology)) = resolve(&callee, ctx, out) else {
            continue;
        };
        if callee.namespace == ctx.namespace
            && own_labels.is_some_and(|l| {
                object::selector_matches(selector.iter().map(|(k, v)| (k.as_str(), v.as_str())), l)
            })
        {
            // Affinity to its own pods would pull every replica into one
            // zone, against zone-spread.
            out.warn(
                Priority::Normal,
                format!(
                    "zonewise: call-affinity: Service {callee} selects the pods of {} itself; skipped",
                    ctx.describe(w)
                ),
            );
            continue;
        }
        let match_labels: Map<String, Value> = selector
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        let selector = Value::Object(Map::from_iter([(
            "matchLabels".to_string(),
            Value::Object(match_labels),
        )]));
        let namespaces = (callee.namespace != ctx.namespace).then_some(callee.namespace.as_str());
        let key = topology.key();
        let list = if topology == Topology::NodeRequired {
            REQUIRED
        } else {
            PREFERRED
        };
        let path = [
            POD_AFFINITY[0],
            POD_AFFINITY[1],
            POD_AFFINITY[2],
            POD_AFFINITY[3],
            POD_AFFINITY[4],
            list,
        ];
        let exists = existing(list).iter().any(|t| {
            let t = if list == REQUIRED {
                Some(t)
            } else {
                object::field(t, "podAffinityTerm")
            };
            t.is_some_and(|t| same_term(t, &selector, key, namespaces, ctx.namespace))
        });
        if exists {
            continue;
        }
        let term = affinity_term(selector, key, namespaces);
        if list == REQUIRED {
            out.patch.push(&path, term)?;
        } else {
            let weighted = Map::from_iter([
                ("weight".to_string(), Value::from(cfg.weight)),
                ("podAffinityTerm".to_string(), term),
            ]);
            out.patch.push(&path, Value::Object(weighted))?;
        }
    }
    Ok(())
}

/// Callees from the `zonewise.io/calls` annotation, then the config call
/// graph, without duplicates, at most [`MAX_CALLEES`]; with warnings for
/// entries that are not Services and for callees past the cap.
fn callees(w: &Value, ctx: &Context<'_>, out: &mut Mutation<'_>) -> Vec<ObjectRef> {
    let (list, over) = declared_callees(w, ctx.namespace, ctx.policy, |entry| {
        out.warn(
            Priority::Normal,
            format!(
                "zonewise: {CALLS}: {} is not a Service (name or name.namespace); ignored",
                quoted(entry)
            ),
        )
    });
    if over > 0 {
        out.warn(
            Priority::Normal,
            format!(
                "zonewise: {} calls more than {MAX_CALLEES} Services; the {over} entries after the \
                 first {MAX_CALLEES} get no affinity",
                ctx.describe(w)
            ),
        );
    }
    list
}

/// The Services workload `w` in `namespace` is declared to call (its
/// `zonewise.io/calls` annotation, then the config's call graph), without
/// duplicates and at most [`MAX_CALLEES`], and how many were left past the
/// cap; `bad` hears each annotation entry that is not a Service. Shared by
/// the rule and the audit's traffic model, so both read one call graph.
pub fn declared_callees(
    w: &Value,
    namespace: &str,
    policy: &Policy,
    mut bad: impl FnMut(&str),
) -> (Vec<ObjectRef>, usize) {
    let mut list: Vec<ObjectRef> = Vec::new();
    let mut over = 0usize;
    // The list holds at most MAX_CALLEES, so searching it is as cheap as
    // hashing each entry would be, even for a hostile annotation.
    let mut add = |r: ObjectRef, list: &mut Vec<ObjectRef>| {
        if list.contains(&r) {
            return;
        }
        if list.len() == MAX_CALLEES {
            over += 1;
            return;
        }
        list.push(r);
    };
    if let Some(calls) = object::annotation(w, CALLS) {
        for entry in calls.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match parse_callee(entry, namespace) {
                Some(r) => add(r, &mut list),
                None => bad(entry),
            }
        }
    }
    let name = object::str_at(w, &["metadata", "name"]).unwrap_or("");
    if !name.is_empty() {
        for r in policy.callees_of(&ObjectRef::new(namespace, name)) {
            add(r.clone(), &mut list);
        }
    }
    (list, over)
}

/// A callee entry as warnings show it: quoted, and short.
fn quoted(entry: &str) -> String {
    let short: String = entry.chars().take(64).collect();
    format!("{short:?}")
}

/// `name`, `name.namespace`, or a cluster DNS name `name.namespace.svc[...]`.
fn parse_callee(entry: &str, own_namespace: &str) -> Option<ObjectRef> {
    let mut parts = entry.split('.');
    let name = parts.next()?;
    let namespace = parts.next();
    match parts.next() {
        None | Some("svc") => {}
        Some(_) => return None,
    }
    let namespace = namespace.unwrap_or(own_namespace);
    (names::is_dns1035_label(name) && names::is_dns1123_label(namespace))
        .then(|| ObjectRef::new(namespace, name))
}

/// Where a caller should run relative to a callee's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology {
    /// Preferably in the same zone.
    Zone,
    /// Preferably on the same node (a Local callee that may not be on every
    /// node).
    NodePreferred,
    /// Only on a node with a callee pod (a Local callee on every node).
    NodeRequired,
}

impl Topology {
    fn key(self) -> &'static str {
        match self {
            Topology::Zone => ZONE_KEY,
            Topology::NodePreferred | Topology::NodeRequired => HOSTNAME_KEY,
        }
    }
}

/// The callee's pod selector and where to run relative to it: from the
/// cluster cache, else the config, else `{fallbackLabel: name}` with a
/// warning.
fn resolve(
    callee: &ObjectRef,
    ctx: &Context<'_>,
    out: &mut Mutation<'_>,
) -> Option<(BTreeMap<String, String>, Topology)> {
    let why = match ctx.lookups.service(callee) {
        Lookup::Found(facts) => {
            let Some(sel) = facts.selector.filter(|s| !s.is_empty()) else {
                out.warn(
                    Priority::Normal,
                    format!("zonewise: call-affinity: Service {callee} has no selector; skipped"),
                );
                return None;
            };
            if !facts.local {
                return Some((sel, Topology::Zone));
            }
            let pairs: Vec<(&str, &str)> =
                sel.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let topology = match ctx.lookups.daemonset_matching(&callee.namespace, &pairs) {
                Lookup::Found(_) => {
                    out.warn(
                        Priority::Normal,
                        format!(
                            "zonewise: call-affinity: Service {callee} is internalTrafficPolicy: \
                             Local on a DaemonSet, so these pods may only run on nodes with one of \
                             its pods (required hostname affinity)"
                        ),
                    );
                    Topology::NodeRequired
                }
                _ => {
                    out.warn(
                        Priority::High,
                        format!(
                            "zonewise: call-affinity: Service {callee} is internalTrafficPolicy: \
                             Local but not on every node; traffic from pods on nodes without one \
                             is dropped, so they prefer its nodes (a required term could strand them)"
                        ),
                    );
                    Topology::NodePreferred
                }
            };
            return Some((sel, topology));
        }
        Lookup::NotFound => "not found in the cluster",
        Lookup::Unavailable(reason) => reason,
    };
    if let Some(sel) = ctx.policy.declared_selector(callee) {
        return Some((sel.clone(), Topology::Zone));
    }
    let label = &ctx.policy.config.deployment.call_affinity.fallback_label;
    out.warn(
        Priority::Low,
        format!(
            "zonewise: call-affinity: selector of Service {callee} unknown ({why}); assumed {label}={}",
            callee.name
        ),
    );
    Some((
        BTreeMap::from([(label.clone(), callee.name.clone())]),
        Topology::Zone,
    ))
}

fn affinity_term(selector: Value, topology: &str, namespaces: Option<&str>) -> Value {
    let mut t = Map::with_capacity(3);
    t.insert("labelSelector".into(), selector);
    t.insert("topologyKey".into(), Value::from(topology));
    if let Some(ns) = namespaces {
        t.insert("namespaces".into(), Value::Array(vec![Value::from(ns)]));
    }
    Value::Object(t)
}

/// Whether an existing PodAffinityTerm already says what ours would: same
/// topology, an equivalent label selector, same namespaces (absent or empty
/// means the workload's own), no namespaceSelector widening it.
fn same_term(
    existing: &Value,
    selector: &Value,
    topology: &str,
    namespaces: Option<&str>,
    own_namespace: &str,
) -> bool {
    if object::field(existing, "topologyKey").and_then(Value::as_str) != Some(topology)
        || object::at(existing, &["namespaceSelector"]).is_some()
        || object::field(existing, "labelSelector")
            .is_none_or(|s| requirements(s) != requirements(selector))
    {
        return false;
    }
    let mut theirs: Vec<&str> = object::array_at(existing, &["namespaces"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    if theirs.is_empty() {
        theirs.push(own_namespace);
    }
    theirs.sort_unstable();
    theirs.dedup();
    theirs == [namespaces.unwrap_or(own_namespace)]
}

/// A label selector as a canonical set of requirements, so that
/// `matchLabels: {app: api}` and `matchExpressions: [{app In [api]}]` (the
/// same selector to the API server) compare equal. `None` for a selector
/// that is not well-formed, which equals nothing.
fn requirements(selector: &Value) -> Option<Vec<(String, String, Vec<String>)>> {
    let mut out = Vec::new();
    for (k, v) in object::object_at(selector, &["matchLabels"])
        .into_iter()
        .flatten()
    {
        out.push((k.clone(), "In".to_string(), vec![v.as_str()?.to_string()]));
    }
    for e in object::array_at(selector, &["matchExpressions"]) {
        let key = object::field(e, "key")?.as_str()?.to_string();
        let op = object::field(e, "operator")?.as_str()?.to_string();
        let mut values: Vec<String> = object::array_at(e, &["values"])
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()?;
        values.sort_unstable();
        values.dedup();
        out.push((key, op, values));
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::lookups::{DaemonSetEntry, DaemonSetFacts, InMemory, Lookups, ServiceFacts};
    use crate::core::policy::Policy;
    use crate::core::rules::test_support::*;
    use serde_json::json;

    fn calls(v: &str) -> Value {
        annotated(deployment(), CALLS, v)
    }

    fn run_with(w: &Value, policy: &Policy, lookups: &dyn Lookups) -> (Value, Vec<String>, usize) {
        let kind = if w["kind"] == "StatefulSet" {
            Kind::StatefulSet
        } else {
            Kind::Deployment
        };
        let ctx = ctx(kind, policy, lookups);
        run(w, |o, m| apply(o, &ctx, m))
    }

    fn preferred(v: &Value) -> &Vec<Value> {
        v["spec"]["template"]["spec"]["affinity"]["podAffinity"][PREFERRED]
            .as_array()
            .unwrap()
    }

    fn facts(sel: &[(&str, &str)], local: bool) -> ServiceFacts {
        ServiceFacts {
            selector: Some(
                sel.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            local,
        }
    }

    #[test]
    fn fallback_label_without_cluster_with_warning() {
        let (out, warnings, _) = run_with(&calls("orders"), &policy(""), NO_CLUSTER);
        assert_eq!(
            preferred(&out),
            &vec![json!({"weight": 100, "podAffinityTerm": {
                "labelSelector": {"matchLabels": {"app": "orders"}},
                "topologyKey": ZONE_KEY}})]
        );
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("shop/orders") && warnings[0].contains("no cluster access"),
            "{warnings:?}"
        );
    }

    #[test]
    fn statefulsets_get_the_same_terms() {
        let sts = annotated(statefulset(), CALLS, "orders");
        let (out, _, _) = run_with(&sts, &policy(""), NO_CLUSTER);
        assert_eq!(
            preferred(&out)[0]["podAffinityTerm"]["topologyKey"],
            ZONE_KEY
        );
    }

    #[test]
    fn cross_namespace_callee_gets_namespaces() {
        let (out, _, _) = run_with(&calls("payments.billing"), &policy(""), NO_CLUSTER);
        let term = &preferred(&out)[0]["podAffinityTerm"];
        assert_eq!(term["namespaces"], json!(["billing"]));
        assert_eq!(
            term["labelSelector"],
            json!({"matchLabels": {"app": "payments"}})
        );
        let (out2, _, _) = run_with(
            &calls("payments.billing.svc.cluster.local"),
            &policy(""),
            NO_CLUSTER,
        );
        assert_eq!(preferred(&out2), preferred(&out));
    }

    #[test]
    fn a_callee_with_the_callers_name_elsewhere_is_not_a_self_call() {
        // shop/web calling web.billing: another Service, same fallback label.
        let (out, warnings, _) = run_with(&calls("web.billing"), &policy(""), NO_CLUSTER);
        let term = &preferred(&out)[0]["podAffinityTerm"];
        assert_eq!(term["namespaces"], json!(["billing"]));
        assert!(
            !warnings.iter().any(|w| w.contains("itself")),
            "{warnings:?}"
        );
        // shop/web calling web (shop): its own pods.
        let (_, warnings, ops) = run_with(&calls("web"), &policy(""), NO_CLUSTER);
        assert_eq!(ops, 0);
        assert!(
            warnings.iter().any(|w| w.contains("itself")),
            "{warnings:?}"
        );
    }

    #[test]
    fn config_graph_and_declared_selector_and_weight() {
        let p = policy(
            r#"
deployment: {callAffinity: {weight: 40, fallbackLabel: app.kubernetes.io/name}}
callGraph:
  - {from: shop/web, to: [shop/orders, billing/payments]}
serviceSelectors:
  shop/orders: {component: orders-api}
"#,
        );
        let (out, warnings, _) = run_with(&calls("orders"), &p, NO_CLUSTER);
        let terms = preferred(&out);
        assert_eq!(terms.len(), 2, "annotation and graph deduplicated");
        assert_eq!(terms[0]["weight"], 40);
        assert_eq!(
            terms[0]["podAffinityTerm"]["labelSelector"]["matchLabels"],
            json!({"component": "orders-api"})
        );
        assert_eq!(
            terms[1]["podAffinityTerm"]["labelSelector"]["matchLabels"],
            json!({"app.kubernetes.io/name": "payments"})
        );
        assert_eq!(
            warnings.len(),
            1,
            "only the guessed selector warns: {warnings:?}"
        );
    }

    fn node_cache(ds: bool) -> InMemory {
        let m = InMemory::default()
            .with_service(
                "shop",
                "orders",
                facts(&[("app.kubernetes.io/name", "orders")], false),
            )
            .with_service("shop", "cache", facts(&[("app", "node-cache")], true));
        if !ds {
            return m;
        }
        m.with_daemonset(
            "shop",
            DaemonSetEntry {
                labels: [("app".to_string(), "node-cache".to_string())].into(),
                facts: DaemonSetFacts {
                    name: "node-cache".into(),
                    restricted: false,
                },
            },
        )
    }

    #[test]
    fn a_local_callee_on_a_daemonset_is_required_on_the_node() {
        let (out, warnings, _) = run_with(&calls("orders,cache"), &policy(""), &node_cache(true));
        assert_eq!(
            preferred(&out)[0]["podAffinityTerm"]["labelSelector"],
            json!({"matchLabels": {"app.kubernetes.io/name": "orders"}})
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["affinity"]["podAffinity"][REQUIRED],
            json!([{"labelSelector": {"matchLabels": {"app": "node-cache"}}, "topologyKey": HOSTNAME_KEY}])
        );
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("DaemonSet"), "{warnings:?}");
    }

    #[test]
    fn any_other_local_callee_is_preferred_on_the_node_with_a_warning() {
        let (out, warnings, _) = run_with(&calls("cache"), &policy(""), &node_cache(false));
        let aff = &out["spec"]["template"]["spec"]["affinity"]["podAffinity"];
        assert!(aff.get(REQUIRED).is_none(), "{aff}");
        assert_eq!(
            preferred(&out),
            &vec![json!({"weight": 100, "podAffinityTerm": {
                "labelSelector": {"matchLabels": {"app": "node-cache"}},
                "topologyKey": HOSTNAME_KEY}})]
        );
        assert!(warnings[0].contains("dropped"), "{warnings:?}");
    }

    #[test]
    fn unknown_callee_in_cluster_and_selectorless_callee() {
        let lookups =
            InMemory::default().with_service("shop", "external-db", ServiceFacts::default());
        let (out, warnings, _) = run_with(&calls("ghost, external-db"), &policy(""), &lookups);
        assert_eq!(preferred(&out).len(), 1);
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("shop/ghost") && w.contains("not found")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("external-db") && w.contains("no selector")),
            "{warnings:?}"
        );
    }

    #[test]
    fn merges_into_existing_affinity_without_duplicates() {
        let existing = json!({
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]}]}},
            "podAffinity": {PREFERRED: [
                {"weight": 10, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "orders"}}, "topologyKey": ZONE_KEY, "namespaces": ["shop"]}}
            ]}
        });
        let dep = with(
            calls("orders,stock"),
            &["spec", "template", "spec", "affinity"],
            existing.clone(),
        );
        let (out, _, ops) = run_with(&dep, &policy(""), NO_CLUSTER);
        assert_eq!(ops, 1, "orders already has an equivalent term");
        let aff = &out["spec"]["template"]["spec"]["affinity"];
        assert_eq!(aff["nodeAffinity"], existing["nodeAffinity"]);
        let terms = preferred(&out);
        assert_eq!(terms.len(), 2);
        assert_eq!(terms[0], existing["podAffinity"][PREFERRED][0]);
        assert_eq!(
            terms[1]["podAffinityTerm"]["labelSelector"]["matchLabels"]["app"],
            "stock"
        );
    }

    #[test]
    fn a_single_value_in_expression_equals_match_labels() {
        let existing = json!({"podAffinity": {PREFERRED: [{"weight": 5, "podAffinityTerm": {
            "labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["orders"]}]},
            "topologyKey": ZONE_KEY}}]}});
        let dep = with(
            calls("orders"),
            &["spec", "template", "spec", "affinity"],
            existing,
        );
        assert_eq!(run_with(&dep, &policy(""), NO_CLUSTER).2, 0);
        // A wider expression is not the same selector.
        let wider = json!({"podAffinity": {PREFERRED: [{"weight": 5, "podAffinityTerm": {
            "labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["orders", "x"]}]},
            "topologyKey": ZONE_KEY}}]}});
        let dep = with(
            calls("orders"),
            &["spec", "template", "spec", "affinity"],
            wider,
        );
        assert_eq!(run_with(&dep, &policy(""), NO_CLUSTER).2, 1);
    }

    #[test]
    fn annotations_on_the_pod_template_are_pointed_out() {
        let dep = with(
            deployment(),
            &TEMPLATE_ANNOTATIONS,
            json!({CALLS: "orders", SKIP: "zone-spread"}),
        );
        let (_, warnings, ops) = run_with(&dep, &policy(""), NO_CLUSTER);
        assert_eq!(ops, 0, "read only from the workload's metadata");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings.iter().all(|w| w.contains("pod template")),
            "{warnings:?}"
        );
    }

    #[test]
    fn invalid_entries_warn() {
        let (_, warnings, ops) = run_with(&calls("Orders!, a.b.c.d"), &policy(""), NO_CLUSTER);
        assert_eq!(ops, 0);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
    }

    #[test]
    fn thousands_of_callees_are_capped_and_deduplicated_in_linear_time() {
        // Each name twice: duplicates are dropped before the cap counts.
        let many: Vec<String> = (0..80_000).map(|i| format!("svc-{}", i % 40_000)).collect();
        let dep = calls(&many.join(","));
        let (out, warnings, _) = run_with(&dep, &policy(""), NO_CLUSTER);
        assert_eq!(preferred(&out).len(), MAX_CALLEES);
        let names: Vec<&str> = preferred(&out)
            .iter()
            .map(|t| {
                t["podAffinityTerm"]["labelSelector"]["matchLabels"]["app"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(names[..3], ["svc-0", "svc-1", "svc-2"]);
        assert!(
            warnings.iter().any(|w| w.contains(&format!(
                "the {} entries after the first {MAX_CALLEES}",
                80_000 - 2 * MAX_CALLEES
            ))),
            "{:?}",
            warnings.iter().take(3).collect::<Vec<_>>()
        );
    }

    #[test]
    fn disabled_or_no_callees_do_nothing() {
        assert_eq!(run_with(&deployment(), &policy(""), NO_CLUSTER).2, 0);
        let off = policy("deployment: {callAffinity: {enabled: false}}");
        assert_eq!(run_with(&calls("orders"), &off, NO_CLUSTER).2, 0);
    }
}
