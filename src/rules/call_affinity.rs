//! `call-affinity`: schedule a caller near the pods of the Services it calls.
//!
//! Adds a preferred zone podAffinity term per callee, so chatty pairs share a
//! zone when capacity allows. Preferred, not required: required affinity to
//! pods that do not exist yet leaves the caller Pending. The one exception is
//! a callee Service that is `internalTrafficPolicy: Local`: a caller on a
//! node without a callee pod has its traffic dropped, so there the term is
//! required on the node.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{CALLS, Context, HOSTNAME_KEY, Mutation, ZONE_KEY};
use crate::config::ObjectRef;
use crate::lookups::Lookup;
use crate::names;
use crate::object;
use crate::patch::PatchError;

const POD_AFFINITY: [&str; 5] = ["spec", "template", "spec", "affinity", "podAffinity"];
const PREFERRED: &str = "preferredDuringSchedulingIgnoredDuringExecution";
const REQUIRED: &str = "requiredDuringSchedulingIgnoredDuringExecution";

pub fn apply(dep: &Value, ctx: &Context<'_>, out: &mut Mutation<'_>) -> Result<(), PatchError> {
    let cfg = &ctx.policy.config.deployment.call_affinity;
    if !cfg.enabled {
        return Ok(());
    }
    let callees = callees(dep, ctx, &mut out.warnings);
    if callees.is_empty() {
        return Ok(());
    }
    let own_labels = object::object_at(dep, &["spec", "template", "metadata", "labels"]);
    for callee in callees {
        let Some((selector, local)) = resolve(&callee, ctx, &mut out.warnings) else {
            continue;
        };
        if own_labels.is_some_and(|l| {
            object::selector_matches(selector.iter().map(|(k, v)| (k.as_str(), v.as_str())), l)
        }) {
            // Affinity to its own pods would pull every replica into one
            // zone, against zone-spread.
            out.warnings.push(format!(
                "zonewise: call-affinity: Service {callee} selects this Deployment's own pods; skipped"
            ));
            continue;
        }
        let selector = json!({ "matchLabels": selector });
        let namespaces = (callee.namespace != ctx.namespace).then_some(callee.namespace.as_str());
        let topology = if local { HOSTNAME_KEY } else { ZONE_KEY };
        let term = affinity_term(&selector, topology, namespaces);

        let list = if local { REQUIRED } else { PREFERRED };
        let path = [
            POD_AFFINITY[0],
            POD_AFFINITY[1],
            POD_AFFINITY[2],
            POD_AFFINITY[3],
            POD_AFFINITY[4],
            list,
        ];
        let exists = object::array_at(dep, &path).iter().any(|t| {
            let t = if local {
                Some(t)
            } else {
                t.get("podAffinityTerm")
            };
            t.is_some_and(|t| same_term(t, &selector, topology, namespaces, ctx.namespace))
        });
        if exists {
            continue;
        }
        if local {
            out.warnings.push(format!(
                "zonewise: call-affinity: Service {callee} is internalTrafficPolicy: Local, so this \
                 Deployment's pods must run on nodes with one of its pods (required hostname affinity)"
            ));
            out.patch.push(&path, term)?;
        } else {
            out.patch.push(
                &path,
                json!({"weight": cfg.weight, "podAffinityTerm": term}),
            )?;
        }
    }
    Ok(())
}

/// Callees from the `zonewise.io/calls` annotation, then the config call
/// graph, without duplicates.
fn callees(dep: &Value, ctx: &Context<'_>, warnings: &mut Vec<String>) -> Vec<ObjectRef> {
    let mut out: Vec<ObjectRef> = Vec::new();
    if let Some(calls) = object::annotation(dep, CALLS) {
        for entry in calls.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match parse_callee(entry, ctx.namespace) {
                Some(r) if !out.contains(&r) => out.push(r),
                Some(_) => {}
                None => warnings.push(format!(
                    "zonewise: {CALLS}: {entry:?} is not a Service (name or name.namespace); ignored"
                )),
            }
        }
    }
    let name = object::str_at(dep, &["metadata", "name"]).unwrap_or("");
    if !name.is_empty() {
        for r in ctx.policy.callees_of(&ObjectRef::new(ctx.namespace, name)) {
            if !out.contains(r) {
                out.push(r.clone());
            }
        }
    }
    out
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

/// The callee's pod selector and whether it is Local: from the cluster
/// cache, else the config, else `{fallbackLabel: name}` with a warning.
fn resolve(
    callee: &ObjectRef,
    ctx: &Context<'_>,
    warnings: &mut Vec<String>,
) -> Option<(BTreeMap<String, String>, bool)> {
    let why = match ctx.lookups.service(callee) {
        Lookup::Found(facts) => {
            return match facts.selector {
                Some(sel) if !sel.is_empty() => Some((sel, facts.local)),
                _ => {
                    warnings.push(format!(
                        "zonewise: call-affinity: Service {callee} has no selector; skipped"
                    ));
                    None
                }
            };
        }
        Lookup::NotFound => "not found in the cluster",
        Lookup::Unavailable(reason) => reason,
    };
    if let Some(sel) = ctx.policy.declared_selector(callee) {
        return Some((sel.clone(), false));
    }
    let label = &ctx.policy.config.deployment.call_affinity.fallback_label;
    warnings.push(format!(
        "zonewise: call-affinity: selector of Service {callee} unknown ({why}); assumed {label}={}",
        callee.name
    ));
    Some((
        BTreeMap::from([(label.clone(), callee.name.clone())]),
        false,
    ))
}

fn affinity_term(selector: &Value, topology: &str, namespaces: Option<&str>) -> Value {
    let mut t = Map::new();
    t.insert("labelSelector".into(), selector.clone());
    t.insert("topologyKey".into(), json!(topology));
    if let Some(ns) = namespaces {
        t.insert("namespaces".into(), json!([ns]));
    }
    Value::Object(t)
}

/// Whether an existing PodAffinityTerm already says what ours would: same
/// topology, same label selector, same namespaces (absent or empty means the
/// Deployment's own), no namespaceSelector widening it.
fn same_term(
    existing: &Value,
    selector: &Value,
    topology: &str,
    namespaces: Option<&str>,
    own_namespace: &str,
) -> bool {
    if existing.get("topologyKey").and_then(Value::as_str) != Some(topology)
        || existing.get("labelSelector") != Some(selector)
        || object::at(existing, &["namespaceSelector"]).is_some()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policy;
    use crate::lookups::{InMemory, Lookups, ServiceFacts};
    use crate::rules::test_support::*;

    fn calls(v: &str) -> Value {
        annotated(deployment(), CALLS, v)
    }

    fn run_with(
        dep: &Value,
        policy: &Policy,
        lookups: &dyn Lookups,
    ) -> (Value, Vec<String>, usize) {
        let ctx = ctx(policy, lookups);
        run(dep, |o, m| apply(o, &ctx, m))
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
    fn cross_namespace_callee_gets_namespaces() {
        let (out, _, _) = run_with(&calls("payments.billing"), &policy(""), NO_CLUSTER);
        let term = &preferred(&out)[0]["podAffinityTerm"];
        assert_eq!(term["namespaces"], json!(["billing"]));
        assert_eq!(
            term["labelSelector"],
            json!({"matchLabels": {"app": "payments"}})
        );
        // A cluster DNS name means the same.
        let (out2, _, _) = run_with(
            &calls("payments.billing.svc.cluster.local"),
            &policy(""),
            NO_CLUSTER,
        );
        assert_eq!(preferred(&out2), preferred(&out));
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

    #[test]
    fn cluster_selector_wins_and_local_callee_is_required_on_hostname() {
        let lookups = InMemory::default()
            .with_service(
                "shop",
                "orders",
                facts(&[("app.kubernetes.io/name", "orders")], false),
            )
            .with_service("shop", "cache", facts(&[("app", "node-cache")], true));
        let (out, warnings, _) = run_with(&calls("orders,cache"), &policy(""), &lookups);
        assert_eq!(
            preferred(&out)[0]["podAffinityTerm"]["labelSelector"],
            json!({"matchLabels": {"app.kubernetes.io/name": "orders"}})
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["affinity"]["podAffinity"][REQUIRED],
            json!([{"labelSelector": {"matchLabels": {"app": "node-cache"}}, "topologyKey": HOSTNAME_KEY}])
        );
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("Local"), "{warnings:?}");
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
    fn invalid_entries_warn_and_self_calls_are_skipped() {
        let (out, warnings, ops) =
            run_with(&calls("Orders!, a.b.c.d, web"), &policy(""), NO_CLUSTER);
        assert_eq!(ops, 0, "{out}");
        // Two bad entries, the guessed selector for `web`, and the self-call.
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        assert!(warnings[3].contains("own pods"), "{warnings:?}");
    }

    #[test]
    fn disabled_or_no_callees_do_nothing() {
        assert_eq!(run_with(&deployment(), &policy(""), NO_CLUSTER).2, 0);
        let off = policy("deployment: {callAffinity: {enabled: false}}");
        assert_eq!(run_with(&calls("orders"), &off, NO_CLUSTER).2, 0);
    }
}
