//! `zone-spread`: spread a workload's replicas over zones (and nodes), so
//! every zone has local endpoints for zone-aware routing to prefer.
//!
//! Any explicit constraint switches off the scheduler's default spreading
//! (which covers both hostname and zone), so adding only a zone constraint
//! would quietly lose node spreading; hence the hostname twin.
//!
//! The zones a pod template may use follow from its nodeSelector and its
//! required node affinity: a template that can only use one zone is left
//! alone, and `minDomains` is never above the number of zones it can use
//! (a higher one would leave pods Pending beyond `maxSkew` per zone).
//!
//! Also here, because it is about the same replicas: when the cluster's
//! zones are known, a workload with fewer replicas than zones (or, under
//! `trafficDistribution`, not a multiple of them) is admitted with a
//! warning, since some zone then has fewer local endpoints than clients.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use k8s_openapi::api::core::v1::{NodeAffinity, TopologySpreadConstraint};
use serde_json::{Map, Value, json};

use super::{
    Action, Context, HOSTNAME_KEY, Kind, LEGACY_ZONE_KEY, Mutation, Rule, RuleSpec, SELECTOR,
    StringMap, ZONE_KEY, read,
};
use crate::core::config::WhenUnsatisfiable;
use crate::core::object;
use crate::core::patch::PatchError;
use crate::core::sparse::{self, Budget, Interest};
use crate::core::versions::RoutingMode;
use crate::core::warnings::Priority;

const POD_SPEC: [&str; 3] = ["spec", "template", "spec"];
const CONSTRAINTS: [&str; 4] = ["spec", "template", "spec", "topologySpreadConstraints"];
const NODE_SELECTOR: [&str; 4] = ["spec", "template", "spec", "nodeSelector"];
const NODE_AFFINITY: [&str; 5] = ["spec", "template", "spec", "affinity", "nodeAffinity"];
/// Deployment pods carry it; StatefulSet pods do not.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

pub const SPEC: RuleSpec = RuleSpec {
    rule: Rule::ZoneSpread,
    kinds: &[Kind::Deployment, Kind::StatefulSet],
    action: Action::Mutate(apply),
    reads: &[
        SELECTOR,
        read::<i32>(&["spec", "replicas"]),
        read::<Vec<TopologySpreadConstraint>>(&CONSTRAINTS),
        read::<StringMap>(&NODE_SELECTOR),
        read::<NodeAffinity>(&NODE_AFFINITY),
        // Whether `replicas` was declared or defaulted (see `declared_replicas`).
        read::<String>(&["metadata", "managedFields", "*", "operation"]),
        read::<Value>(&[
            "metadata",
            "managedFields",
            "*",
            "fieldsV1",
            "f:spec",
            "f:replicas",
        ]),
    ],
    reads_old: &[],
};

pub fn apply(w: &Value, ctx: &Context<'_>, out: &mut Mutation<'_>) -> Result<(), PatchError> {
    let cfg = &ctx.policy.config.deployment.zone_spread;
    if !cfg.enabled {
        return Ok(());
    }
    let allowed = allowed_zones(w);
    let usable = usable_zone_count(&allowed, ctx.policy.zones.as_ref());
    if matches!(allowed, Zones::None) || usable == Some(0) || usable == Some(1) {
        // Pinned to one zone (or none): spreading over zones is impossible.
        return Ok(());
    }
    warn_capacity(w, ctx, usable, out);
    // apps/v1 requires a selector; without one the typed check has already
    // rejected the object, so this only guards against misuse.
    let Some(selector) = object::at(w, &["spec", "selector"]) else {
        return Ok(());
    };
    let selector_keys = selector_keys(selector);
    // An empty selector is one the API rejects on workloads, and whose
    // meaning in a spread constraint Kubernetes has announced it will
    // change (1.38): zonewise never writes a constraint that depends on it.
    if selector_keys.is_empty() {
        return Ok(());
    }
    let existing = object::array_at(w, &CONSTRAINTS);
    let has_key = |keys: &[&str]| {
        existing.iter().any(|c| {
            object::field(c, "topologyKey")
                .and_then(Value::as_str)
                .is_some_and(|k| keys.contains(&k))
        })
    };

    // The API server rejects a key that is both in matchLabelKeys and in the
    // labelSelector, so keys the workload already selects on are dropped;
    // and a key its pods never carry would match nothing.
    let match_label_keys: Vec<&str> = cfg
        .match_label_keys
        .iter()
        .map(String::as_str)
        .filter(|k| !selector_keys.contains(k))
        .filter(|k| ctx.kind == Kind::Deployment || *k != POD_TEMPLATE_HASH)
        .collect();

    if !has_key(&[ZONE_KEY, LEGACY_ZONE_KEY]) {
        let mut c = constraint(
            cfg.max_skew,
            ZONE_KEY,
            cfg.when_unsatisfiable,
            selector,
            &match_label_keys,
        );
        if let (WhenUnsatisfiable::DoNotSchedule, Some(min)) =
            (cfg.when_unsatisfiable, cfg.min_domains)
        {
            let min = usable.map_or(min, |n| min.min(i32::try_from(n).unwrap_or(i32::MAX)));
            // minDomains 1 is every template's floor anyway.
            if min > 1 {
                c.insert("minDomains".into(), json!(min));
            }
        }
        out.patch.push(&CONSTRAINTS, Value::Object(c))?;
    }
    // The node twin is always ScheduleAnyway: with DoNotSchedule, cordoned or
    // tainted nodes still count as empty domains and would leave pods Pending.
    if cfg.node_spread && !has_key(&[HOSTNAME_KEY]) {
        let c = constraint(
            cfg.max_skew,
            HOSTNAME_KEY,
            WhenUnsatisfiable::ScheduleAnyway,
            selector,
            &match_label_keys,
        );
        out.patch.push(&CONSTRAINTS, Value::Object(c))?;
    }
    Ok(())
}

fn constraint(
    max_skew: i32,
    topology_key: &str,
    when: WhenUnsatisfiable,
    selector: &Value,
    match_label_keys: &[&str],
) -> Map<String, Value> {
    let mut c = Map::new();
    c.insert("maxSkew".into(), json!(max_skew));
    c.insert("topologyKey".into(), json!(topology_key));
    c.insert("whenUnsatisfiable".into(), json!(when.as_str()));
    c.insert("labelSelector".into(), selector.clone());
    if !match_label_keys.is_empty() {
        c.insert("matchLabelKeys".into(), json!(match_label_keys));
    }
    c
}

fn selector_keys(selector: &Value) -> BTreeSet<&str> {
    let labels = object::object_at(selector, &["matchLabels"])
        .into_iter()
        .flat_map(|m| m.keys().map(String::as_str));
    let exprs = object::array_at(selector, &["matchExpressions"])
        .iter()
        .filter_map(|e| object::field(e, "key")?.as_str());
    labels.chain(exprs).collect()
}

// ------------------------------------------------------------ allowed zones

/// The zones a pod template may be scheduled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Zones {
    /// Any zone.
    Any,
    /// Only these.
    Only(BTreeSet<String>),
    /// Any zone but these.
    Except(BTreeSet<String>),
    /// No node can match (an empty required term, or contradictions).
    None,
}

impl Zones {
    fn and(self, other: Zones) -> Zones {
        use Zones::*;
        match (self, other) {
            (None, _) | (_, None) => None,
            (Any, z) | (z, Any) => z,
            (Only(a), Only(b)) => Only(&a & &b).nonempty(),
            (Only(a), Except(b)) | (Except(b), Only(a)) => Only(&a - &b).nonempty(),
            (Except(a), Except(b)) => Except(&a | &b),
        }
    }

    fn or(self, other: Zones) -> Zones {
        use Zones::*;
        match (self, other) {
            (None, z) | (z, None) => z,
            (Any, _) | (_, Any) => Any,
            (Only(a), Only(b)) => Only(&a | &b),
            (Only(a), Except(b)) | (Except(b), Only(a)) => Except(&b - &a).any_if_empty(),
            (Except(a), Except(b)) => Except(&a & &b).any_if_empty(),
        }
    }

    fn nonempty(self) -> Zones {
        match self {
            Zones::Only(s) if s.is_empty() => Zones::None,
            z => z,
        }
    }

    fn any_if_empty(self) -> Zones {
        match self {
            Zones::Except(s) if s.is_empty() => Zones::Any,
            z => z,
        }
    }
}

/// The zones allowed by the template's nodeSelector and required node
/// affinity: terms are ORed, expressions in a term ANDed; a term with no
/// expressions and no fields matches nothing; `In`, `NotIn`, `Exists` and
/// `DoesNotExist` on the zone keys restrict the zone, anything else does not.
pub fn allowed_zones(w: &Value) -> Zones {
    let zone_keys = [ZONE_KEY, LEGACY_ZONE_KEY];
    let mut allowed = Zones::Any;
    for key in zone_keys {
        let path = ["spec", "template", "spec", "nodeSelector", key];
        if let Some(zone) = object::str_at(w, &path) {
            allowed = allowed.and(Zones::Only([zone.to_string()].into()));
        }
    }
    let terms_path = [
        POD_SPEC[0],
        POD_SPEC[1],
        POD_SPEC[2],
        "affinity",
        "nodeAffinity",
        "requiredDuringSchedulingIgnoredDuringExecution",
        "nodeSelectorTerms",
    ];
    let Some(terms) = object::at(w, &terms_path).and_then(Value::as_array) else {
        return allowed;
    };
    let mut any_term = Zones::None;
    for term in terms {
        let exprs = object::array_at(term, &["matchExpressions"]);
        let fields = object::array_at(term, &["matchFields"]);
        if exprs.is_empty() && fields.is_empty() {
            // An empty term matches no node.
            continue;
        }
        let mut this = Zones::Any;
        for expr in exprs {
            let key = object::field(expr, "key").and_then(Value::as_str);
            if !key.is_some_and(|k| zone_keys.contains(&k)) {
                continue;
            }
            let values: BTreeSet<String> = object::array_at(expr, &["values"])
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
            this = this.and(
                match object::field(expr, "operator").and_then(Value::as_str) {
                    Some("In") => Zones::Only(values).nonempty(),
                    Some("NotIn") => Zones::Except(values),
                    // A node without a zone label is in no zone at all.
                    Some("DoesNotExist") => Zones::None,
                    _ => Zones::Any,
                },
            );
        }
        any_term = any_term.or(this);
    }
    allowed.and(any_term)
}

/// How many zones the template can use: counted against the cluster's zones
/// when known; `None` when it cannot be told.
fn usable_zone_count(allowed: &Zones, known: Option<&BTreeSet<String>>) -> Option<usize> {
    match (allowed, known) {
        (Zones::None, _) => Some(0),
        (Zones::Only(z), None) => Some(z.len()),
        (Zones::Only(z), Some(k)) => Some(z.intersection(k).count()),
        (Zones::Except(z), Some(k)) => Some(k.difference(z).count()),
        (Zones::Any, Some(k)) => Some(k.len()),
        (Zones::Except(_) | Zones::Any, None) => None,
    }
}

// ------------------------------------------------------------- capacity

fn warn_capacity(w: &Value, ctx: &Context<'_>, zones: Option<usize>, out: &mut Mutation<'_>) {
    // Zones first: without them there is nothing to compare, and reading
    // the replicas may parse the last-applied annotation.
    let Some(zones) = zones.filter(|z| *z >= 2) else {
        return;
    };
    let Some(replicas) = declared_replicas(w) else {
        return;
    };
    let zones = i64::try_from(zones).unwrap_or(i64::MAX);
    if replicas == 0 {
        return;
    }
    let what = ctx.describe(w);
    if replicas < zones {
        out.warn(
            Priority::High,
            format!(
                "zonewise: {what} has {replicas} replica{} for {zones} zones: clients in a zone \
                 without one send every request to another zone",
                if replicas == 1 { "" } else { "s" }
            ),
        );
    } else if replicas % zones != 0 && matches!(ctx.policy.routing.mode, RoutingMode::Field(_)) {
        out.warn(
            Priority::Normal,
            format!(
                "zonewise: {what} has {replicas} replicas for {zones} zones: with \
                 trafficDistribution each zone's clients use their own zone's replicas, so a zone \
                 with fewer is overloaded; scale in multiples of {zones}"
            ),
        );
    }
}

/// `spec.replicas`, when the owner declared it. The API server defaults a
/// missing `replicas` to 1 before admission, which says nothing about the
/// owner's intent: workloads scaled by a HorizontalPodAutoscaler leave it
/// out. It counts as declared when the raw manifest has it (`zonewise
/// mutate`); and on the admission path unless the client's own record says
/// otherwise: the `kubectl apply` annotation without it, or a server-side
/// apply field manager that does not own it. Other clients (`kubectl
/// create`, Helm) leave no such record, so their defaulted 1 counts.
pub fn declared_replicas(w: &Value) -> Option<i64> {
    // The annotation is JSON in a string, as large as the body. Only its
    // `spec.replicas` is built (64 values at most, for a record where it is
    // no number), the rest only checked as JSON: building all of it took
    // 330 MiB for a 7 MiB record, past a pod's memory limit (hostile test).
    static APPLIED_REPLICAS: LazyLock<Interest> =
        LazyLock::new(|| Interest::of_paths([&["spec", "replicas"][..]]));
    let replicas = object::at(w, &["spec", "replicas"])?.as_i64()?;
    if let Some(last) = object::annotation(w, LAST_APPLIED)
        && let Ok(applied) = sparse::parse_str(last, &APPLIED_REPLICAS, &Budget::new(64))
    {
        return object::at(&applied, &["spec", "replicas"]).map(|_| replicas);
    }
    let managers = object::array_at(w, &["metadata", "managedFields"]);
    let appliers: Vec<&Value> = managers
        .iter()
        .filter(|m| object::field(m, "operation").and_then(Value::as_str) == Some("Apply"))
        .collect();
    if !appliers.is_empty()
        && !appliers
            .iter()
            .any(|m| object::at(m, &["fieldsV1", "f:spec", "f:replicas"]).is_some())
    {
        return None;
    }
    Some(replicas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rules::test_support::*;

    fn constraints(v: &Value) -> &Vec<Value> {
        v["spec"]["template"]["spec"]["topologySpreadConstraints"]
            .as_array()
            .unwrap()
    }

    fn run_yaml(w: &Value, yaml: &str) -> (Value, Vec<String>, usize) {
        let kind = if w["kind"] == "StatefulSet" {
            Kind::StatefulSet
        } else {
            Kind::Deployment
        };
        let p = policy(yaml);
        let c = ctx(kind, &p, NO_CLUSTER);
        run(w, |o, m| apply(o, &c, m))
    }

    fn run_cfg(w: &Value, yaml: &str) -> (Value, usize) {
        let (out, warnings, ops) = run_yaml(w, yaml);
        assert!(warnings.is_empty(), "{warnings:?}");
        (out, ops)
    }

    fn affinity(terms: Value) -> Value {
        with(
            deployment(),
            &["spec", "template", "spec", "affinity"],
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}),
        )
    }

    fn zone_in(values: &[&str]) -> Value {
        json!({"matchExpressions": [{"key": ZONE_KEY, "operator": "In", "values": values}]})
    }

    #[test]
    fn adds_zone_and_hostname_with_copied_selector() {
        let (out, _) = run_cfg(&deployment(), "");
        assert_eq!(
            constraints(&out),
            &vec![
                json!({"maxSkew": 1, "topologyKey": ZONE_KEY, "whenUnsatisfiable": "ScheduleAnyway",
                       "labelSelector": {"matchLabels": {"app": "web"}},
                       "matchLabelKeys": ["pod-template-hash"]}),
                json!({"maxSkew": 1, "topologyKey": HOSTNAME_KEY, "whenUnsatisfiable": "ScheduleAnyway",
                       "labelSelector": {"matchLabels": {"app": "web"}},
                       "matchLabelKeys": ["pod-template-hash"]}),
            ]
        );
    }

    /// Kubernetes 1.38 announced a change to what an empty `labelSelector`
    /// in a spread constraint matches. zonewise writes only non-empty
    /// copies of the workload's own selector, on every version, so its
    /// constraints mean the same before and after.
    #[test]
    fn never_writes_an_empty_label_selector() {
        for minor in [29, 33, 36, 37, 38] {
            let cfg = format!("kubernetesVersion: \"1.{minor}\"");
            for sel in [
                json!({}),
                json!({"matchLabels": {}}),
                json!({"matchExpressions": []}),
            ] {
                let dep = with(deployment(), &["spec", "selector"], sel.clone());
                let (out, ops) = run_cfg(&dep, &cfg);
                assert_eq!(ops, 0, "1.{minor} {sel}: {out}");
            }
            let (out, _) = run_cfg(&deployment(), &cfg);
            for c in constraints(&out) {
                assert_eq!(
                    c["labelSelector"],
                    json!({"matchLabels": {"app": "web"}}),
                    "1.{minor}"
                );
            }
        }
    }

    #[test]
    fn statefulset_pods_have_no_pod_template_hash() {
        let (out, _) = run_cfg(&statefulset(), "");
        let cs = constraints(&out);
        assert_eq!(cs.len(), 2);
        for c in cs {
            assert!(c.get("matchLabelKeys").is_none(), "{c}");
        }
        // Other configured keys stay.
        let (out, _) = run_cfg(
            &statefulset(),
            "deployment: {zoneSpread: {matchLabelKeys: [pod-template-hash, release]}}",
        );
        assert_eq!(constraints(&out)[0]["matchLabelKeys"], json!(["release"]));
    }

    #[test]
    fn match_expressions_selector_is_copied_verbatim() {
        let sel = json!({"matchLabels": {"app": "web"},
                         "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]});
        let dep = with(deployment(), &["spec", "selector"], sel.clone());
        assert_eq!(constraints(&run_cfg(&dep, "").0)[0]["labelSelector"], sel);
    }

    #[test]
    fn existing_zone_constraint_only_gets_hostname_twin() {
        let own = json!({"maxSkew": 2, "topologyKey": ZONE_KEY, "whenUnsatisfiable": "DoNotSchedule",
                         "labelSelector": {"matchLabels": {"app": "web"}}});
        let dep = with(deployment(), &CONSTRAINTS, json!([own.clone()]));
        let (out, ops) = run_cfg(&dep, "");
        assert_eq!(ops, 1);
        let cs = constraints(&out);
        assert_eq!(cs[0], own, "owner's constraint untouched");
        assert_eq!(cs[1]["topologyKey"], HOSTNAME_KEY);
    }

    #[test]
    fn both_present_or_legacy_zone_key_means_no_patch() {
        let both = json!([
            {"maxSkew": 1, "topologyKey": LEGACY_ZONE_KEY, "whenUnsatisfiable": "ScheduleAnyway"},
            {"maxSkew": 1, "topologyKey": HOSTNAME_KEY, "whenUnsatisfiable": "DoNotSchedule"}
        ]);
        assert_eq!(run_cfg(&with(deployment(), &CONSTRAINTS, both), "").1, 0);
    }

    #[test]
    fn never_repeats_a_key_pair() {
        let (out, _) = run_cfg(&deployment(), "");
        let mut pairs = BTreeSet::new();
        for c in constraints(&out) {
            assert!(pairs.insert((
                c["topologyKey"].to_string(),
                c["whenUnsatisfiable"].to_string()
            )));
        }
    }

    #[test]
    fn do_not_schedule_with_min_domains_and_custom_skew() {
        let y = "deployment: {zoneSpread: {maxSkew: 2, whenUnsatisfiable: DoNotSchedule, minDomains: 3}}";
        let (out, _) = run_cfg(&deployment(), y);
        let cs = constraints(&out);
        assert_eq!(cs[0]["whenUnsatisfiable"], "DoNotSchedule");
        assert_eq!(cs[0]["minDomains"], 3);
        assert_eq!(cs[0]["maxSkew"], 2);
        assert_eq!(cs[1]["whenUnsatisfiable"], "ScheduleAnyway");
        assert!(cs[1].get("minDomains").is_none());
    }

    #[test]
    fn min_domains_never_exceeds_the_zones_the_template_can_use() {
        let y = "deployment: {zoneSpread: {whenUnsatisfiable: DoNotSchedule, minDomains: 3}}";
        // In [a, b]: two zones (and 3 replicas over them: a warning too).
        let (out, _, _) = run_yaml(&affinity(json!([zone_in(&["a", "b"])])), y);
        assert_eq!(constraints(&out)[0]["minDomains"], 2);
        // NotIn [c] of the cluster's a, b, c: two zones.
        let not_c = affinity(
            json!([{"matchExpressions": [{"key": ZONE_KEY, "operator": "NotIn", "values": ["c"]}]}]),
        );
        let (out, _, _) = run_yaml(&not_c, &format!("zones: [a, b, c]\n{y}"));
        assert_eq!(constraints(&out)[0]["minDomains"], 2);
        // Without known zones, NotIn cannot be counted: as configured.
        let (out, _) = run_cfg(&not_c, y);
        assert_eq!(constraints(&out)[0]["minDomains"], 3);
        // Known zones cap it too (3 replicas over 2 zones: a warning too).
        let (out, _, _) = run_yaml(&deployment(), &format!("zones: [a, b]\n{y}"));
        assert_eq!(constraints(&out)[0]["minDomains"], 2);
    }

    #[test]
    fn an_empty_term_matches_nothing_so_one_zone_term_pins() {
        // [{zone In [a]}, {}]: the empty term adds no node, so zone a only.
        let dep = affinity(json!([zone_in(&["a"]), {}]));
        assert_eq!(allowed_zones(&dep), Zones::Only(["a".to_string()].into()));
        assert_eq!(run_cfg(&dep, "").1, 0, "pinned: left alone");
        assert_eq!(allowed_zones(&affinity(json!([{}]))), Zones::None);
        assert_eq!(run_cfg(&affinity(json!([{}])), "").1, 0);
    }

    #[test]
    fn node_affinity_algebra() {
        let set = |z: &[&str]| z.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let expr = |op: &str, v: &[&str]| json!({"key": ZONE_KEY, "operator": op, "values": v});
        let cases = [
            (
                json!([{"matchExpressions": [expr("In", &["a", "b"]), expr("In", &["b", "c"])]}]),
                Zones::Only(set(&["b"])),
            ),
            (
                json!([zone_in(&["a"]), zone_in(&["b"])]),
                Zones::Only(set(&["a", "b"])),
            ),
            (
                json!([{"matchExpressions": [expr("In", &["a", "b"]), expr("NotIn", &["a"])]}]),
                Zones::Only(set(&["b"])),
            ),
            (
                json!([{"matchExpressions": [expr("In", &["a"]), expr("NotIn", &["a"])]}]),
                Zones::None,
            ),
            (
                json!([{"matchExpressions": [expr("NotIn", &["a"])]}, zone_in(&["a"])]),
                Zones::Any,
            ),
            (
                json!([{"matchExpressions": [expr("DoesNotExist", &[])]}]),
                Zones::None,
            ),
            (
                json!([{"matchExpressions": [expr("Exists", &[])]}]),
                Zones::Any,
            ),
            (
                json!([{"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]}, zone_in(&["a"])]),
                Zones::Any,
            ),
            (
                json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]),
                Zones::Any,
            ),
        ];
        for (terms, want) in cases {
            assert_eq!(allowed_zones(&affinity(terms.clone())), want, "{terms}");
        }
        let by_selector = with(
            affinity(json!([zone_in(&["a", "b"])])),
            &NODE_SELECTOR,
            json!({LEGACY_ZONE_KEY: "b"}),
        );
        assert_eq!(allowed_zones(&by_selector), Zones::Only(set(&["b"])));
    }

    #[test]
    fn pinned_zone_is_skipped() {
        let by_selector = with(
            deployment(),
            &NODE_SELECTOR,
            json!({ZONE_KEY: "eu-west-1a"}),
        );
        let one_zone = affinity(json!([{"matchExpressions": [
            {"key": ZONE_KEY, "operator": "In", "values": ["eu-west-1a"]},
            {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]}]));
        let only_one_known = affinity(json!([zone_in(&["a", "z"])]));
        for (dep, y) in [
            (by_selector, ""),
            (one_zone, ""),
            (only_one_known, "zones: [a, b, c]"),
        ] {
            assert_eq!(run_cfg(&dep, y).1, 0, "{dep}");
        }
    }

    #[test]
    fn node_spread_off_and_rule_off() {
        let (out, _) = run_cfg(
            &deployment(),
            "deployment: {zoneSpread: {nodeSpread: false}}",
        );
        assert_eq!(constraints(&out).len(), 1);
        assert_eq!(
            run_cfg(&deployment(), "deployment: {zoneSpread: {enabled: false}}").1,
            0
        );
    }

    #[test]
    fn match_label_keys_that_collide_with_the_selector_are_dropped() {
        let dep = with(
            deployment(),
            &["spec", "selector"],
            json!({"matchLabels": {"app": "web", "pod-template-hash": "x"}}),
        );
        assert!(
            constraints(&run_cfg(&dep, "").0)[0]
                .get("matchLabelKeys")
                .is_none()
        );
        let (out, _) = run_cfg(
            &deployment(),
            "deployment: {zoneSpread: {matchLabelKeys: []}}",
        );
        assert!(constraints(&out)[0].get("matchLabelKeys").is_none());
    }

    fn replicas(n: i64) -> Value {
        with(deployment(), &["spec", "replicas"], json!(n))
    }

    #[test]
    fn capacity_warning_against_three_zones() {
        let three = "zones: [a, b, c]";
        let (_, w, _) = run_yaml(&replicas(1), three);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("1 replica for 3 zones"), "{w:?}");
        assert!(w[0].contains("another zone"), "{w:?}");
        assert!(run_yaml(&replicas(3), three).1.is_empty());
        let (_, w, _) = run_yaml(&replicas(4), three);
        assert!(
            w[0].contains("4 replicas for 3 zones") && w[0].contains("multiples of 3"),
            "{w:?}"
        );
        // Not a multiple matters only under trafficDistribution.
        assert!(
            run_yaml(
                &replicas(4),
                "zones: [a, b, c]\nservice: {routing: annotation}"
            )
            .1
            .is_empty()
        );
        // Zones unknown: nothing to compare with.
        assert!(run_yaml(&replicas(1), "").1.is_empty());
        // Scaled to zero on purpose.
        assert!(run_yaml(&replicas(0), three).1.is_empty());
        // The template can only use two of the three zones.
        let two = with(
            affinity(json!([zone_in(&["a", "b"])])),
            &["spec", "replicas"],
            json!(2),
        );
        assert!(run_yaml(&two, three).1.is_empty());
    }

    #[test]
    fn autoscaled_workloads_get_no_false_alarm() {
        let three = "zones: [a, b, c]";
        // No replicas in the manifest.
        let mut dep = deployment();
        dep["spec"].as_object_mut().unwrap().remove("replicas");
        assert!(run_yaml(&dep, three).1.is_empty());
        // Defaulted to 1 by the API server, but kubectl apply's record has none.
        let applied = annotated(
            replicas(1),
            LAST_APPLIED,
            r#"{"apiVersion":"apps/v1","kind":"Deployment","spec":{"template":{}}}"#,
        );
        assert!(run_yaml(&applied, three).1.is_empty());
        let declared = annotated(replicas(1), LAST_APPLIED, r#"{"spec":{"replicas":1}}"#);
        assert_eq!(run_yaml(&declared, three).1.len(), 1);
        // The record is read as the JSON it is: only `spec.replicas` is
        // built, whatever else it holds, and keys that serde_json's own
        // `Value` would misread stay keys.
        let padded = format!(
            r#"{{"spec":{{"replicas":1,"pad":[{}0]}},"x":{{}}}}"#,
            "0,".repeat(10_000)
        );
        assert_eq!(
            run_yaml(&annotated(replicas(1), LAST_APPLIED, &padded), three)
                .1
                .len(),
            1
        );
        let token = r#"{"$serde_json::private::RawValue":"{\"spec\":{\"replicas\":1}}"}"#;
        assert!(
            run_yaml(&annotated(replicas(1), LAST_APPLIED, token), three)
                .1
                .is_empty()
        );
        // Not JSON: no record, so the defaulted 1 counts.
        let broken = annotated(replicas(1), LAST_APPLIED, r#"{"spec":{"replicas":1}"#);
        assert_eq!(run_yaml(&broken, three).1.len(), 1);
        // Server-side apply: the applier does not own spec.replicas.
        let ssa = |owns: bool| {
            let fields = if owns {
                json!({"f:spec": {"f:replicas": {}}})
            } else {
                json!({"f:spec": {"f:template": {}}})
            };
            with(
                replicas(1),
                &["metadata", "managedFields"],
                json!([{"manager": "flux", "operation": "Apply", "fieldsV1": fields},
                       {"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]),
            )
        };
        assert!(run_yaml(&ssa(false), three).1.is_empty());
        assert_eq!(run_yaml(&ssa(true), three).1.len(), 1);
    }
}
