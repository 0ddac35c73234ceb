//! `zone-spread`: spread a Deployment's replicas over zones (and nodes), so
//! every zone has local endpoints for zone-aware routing to prefer.
//!
//! Any explicit constraint switches off the scheduler's default spreading
//! (which covers both hostname and zone), so adding only a zone constraint
//! would quietly lose node spreading; hence the hostname twin.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::{HOSTNAME_KEY, LEGACY_ZONE_KEY, Mutation, ZONE_KEY};
use crate::config::{WhenUnsatisfiable, ZoneSpreadConfig};
use crate::object;
use crate::patch::PatchError;

const POD_SPEC: [&str; 3] = ["spec", "template", "spec"];
const CONSTRAINTS: [&str; 4] = ["spec", "template", "spec", "topologySpreadConstraints"];

pub fn apply(
    dep: &Value,
    cfg: &ZoneSpreadConfig,
    out: &mut Mutation<'_>,
) -> Result<(), PatchError> {
    if !cfg.enabled || pins_single_zone(dep) {
        return Ok(());
    }
    // apps/v1 requires a selector; without one the typed check has already
    // rejected the object, so this only guards against misuse.
    let Some(selector) = object::at(dep, &["spec", "selector"]) else {
        return Ok(());
    };
    let existing = object::array_at(dep, &CONSTRAINTS);
    let has_key = |keys: &[&str]| {
        existing.iter().any(|c| {
            c.get("topologyKey")
                .and_then(Value::as_str)
                .is_some_and(|k| keys.contains(&k))
        })
    };

    // The API server rejects a key that is both in matchLabelKeys and in the
    // labelSelector, so keys the Deployment already selects on are dropped.
    let selector_keys = selector_keys(selector);
    let match_label_keys: Vec<&str> = cfg
        .match_label_keys
        .iter()
        .map(String::as_str)
        .filter(|k| !selector_keys.contains(k))
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
            c.insert("minDomains".into(), json!(min));
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
        .filter_map(|e| e.get("key")?.as_str());
    labels.chain(exprs).collect()
}

/// True when the pod template can only ever run in one zone: a zone
/// nodeSelector, or required node affinity whose every term allows exactly
/// the same single zone. Spreading such pods over zones is impossible.
pub fn pins_single_zone(dep: &Value) -> bool {
    let zone_keys = [ZONE_KEY, LEGACY_ZONE_KEY];
    let node_selector = object::object_at(
        dep,
        &[POD_SPEC[0], POD_SPEC[1], POD_SPEC[2], "nodeSelector"],
    );
    if node_selector.is_some_and(|ns| zone_keys.iter().any(|k| ns.contains_key(*k))) {
        return true;
    }
    let terms = object::array_at(
        dep,
        &[
            "spec",
            "template",
            "spec",
            "affinity",
            "nodeAffinity",
            "requiredDuringSchedulingIgnoredDuringExecution",
            "nodeSelectorTerms",
        ],
    );
    if terms.is_empty() {
        return false;
    }
    // Terms are ORed; expressions inside a term are ANDed.
    let mut zones: BTreeSet<&str> = BTreeSet::new();
    for term in terms {
        let mut allowed: Option<BTreeSet<&str>> = None;
        for expr in object::array_at(term, &["matchExpressions"]) {
            let key = expr.get("key").and_then(Value::as_str);
            let op = expr.get("operator").and_then(Value::as_str);
            if !key.is_some_and(|k| zone_keys.contains(&k)) || op != Some("In") {
                continue;
            }
            let values: BTreeSet<&str> = object::array_at(expr, &["values"])
                .iter()
                .filter_map(Value::as_str)
                .collect();
            allowed = Some(match allowed {
                Some(prev) => prev.intersection(&values).copied().collect(),
                None => values,
            });
        }
        match allowed {
            Some(set) => zones.extend(set),
            // A term that does not restrict the zone allows every zone.
            None => return false,
        }
    }
    zones.len() == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::test_support::*;

    fn cfg(yaml: &str) -> ZoneSpreadConfig {
        policy(yaml).config.deployment.zone_spread
    }

    fn constraints(v: &Value) -> &Vec<Value> {
        v["spec"]["template"]["spec"]["topologySpreadConstraints"]
            .as_array()
            .unwrap()
    }

    fn run_cfg(dep: &Value, c: &ZoneSpreadConfig) -> (Value, usize) {
        let (out, warnings, ops) = run(dep, |o, m| apply(o, c, m));
        assert!(warnings.is_empty());
        (out, ops)
    }

    #[test]
    fn adds_zone_and_hostname_with_copied_selector() {
        let (out, _) = run_cfg(&deployment(), &cfg(""));
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

    #[test]
    fn match_expressions_selector_is_copied_verbatim() {
        let sel = json!({"matchLabels": {"app": "web"},
                         "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]});
        let dep = with(deployment(), &["spec", "selector"], sel.clone());
        let (out, _) = run_cfg(&dep, &cfg(""));
        assert_eq!(constraints(&out)[0]["labelSelector"], sel);
    }

    #[test]
    fn existing_zone_constraint_only_gets_hostname_twin() {
        let own = json!({"maxSkew": 2, "topologyKey": ZONE_KEY, "whenUnsatisfiable": "DoNotSchedule",
                         "labelSelector": {"matchLabels": {"app": "web"}}});
        let dep = with(deployment(), &CONSTRAINTS, json!([own.clone()]));
        let (out, ops) = run_cfg(&dep, &cfg(""));
        assert_eq!(ops, 1);
        let cs = constraints(&out);
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0], own, "owner's constraint untouched");
        assert_eq!(cs[1]["topologyKey"], HOSTNAME_KEY);
    }

    #[test]
    fn both_present_or_legacy_zone_key_means_no_patch() {
        let both = json!([
            {"maxSkew": 1, "topologyKey": LEGACY_ZONE_KEY, "whenUnsatisfiable": "ScheduleAnyway"},
            {"maxSkew": 1, "topologyKey": HOSTNAME_KEY, "whenUnsatisfiable": "DoNotSchedule"}
        ]);
        let dep = with(deployment(), &CONSTRAINTS, both);
        assert_eq!(run_cfg(&dep, &cfg("")).1, 0);
    }

    #[test]
    fn never_repeats_a_key_pair() {
        let (out, _) = run_cfg(&deployment(), &cfg(""));
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
        let c = cfg(
            "deployment: {zoneSpread: {maxSkew: 2, whenUnsatisfiable: DoNotSchedule, minDomains: 3}}",
        );
        let (out, _) = run_cfg(&deployment(), &c);
        let cs = constraints(&out);
        assert_eq!(cs[0]["whenUnsatisfiable"], "DoNotSchedule");
        assert_eq!(cs[0]["minDomains"], 3);
        assert_eq!(cs[0]["maxSkew"], 2);
        assert_eq!(cs[1]["whenUnsatisfiable"], "ScheduleAnyway");
        assert!(cs[1].get("minDomains").is_none());
    }

    #[test]
    fn node_spread_off_and_rule_off() {
        let (out, _) = run_cfg(
            &deployment(),
            &cfg("deployment: {zoneSpread: {nodeSpread: false}}"),
        );
        assert_eq!(constraints(&out).len(), 1);
        assert_eq!(
            run_cfg(
                &deployment(),
                &cfg("deployment: {zoneSpread: {enabled: false}}")
            )
            .1,
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
        let (out, _) = run_cfg(&dep, &cfg(""));
        assert!(constraints(&out)[0].get("matchLabelKeys").is_none());
        let (out, _) = run_cfg(
            &deployment(),
            &cfg("deployment: {zoneSpread: {matchLabelKeys: []}}"),
        );
        assert!(constraints(&out)[0].get("matchLabelKeys").is_none());
    }

    #[test]
    fn pinned_zone_is_skipped() {
        let by_selector = with(
            deployment(),
            &["spec", "template", "spec", "nodeSelector"],
            json!({ZONE_KEY: "eu-west-1a"}),
        );
        let affinity = |terms: Value| {
            with(
                deployment(),
                &["spec", "template", "spec", "affinity"],
                json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}),
            )
        };
        let one_zone = affinity(json!([{"matchExpressions": [
            {"key": ZONE_KEY, "operator": "In", "values": ["eu-west-1a"]},
            {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]}]));
        let narrowed = affinity(json!([{"matchExpressions": [
            {"key": ZONE_KEY, "operator": "In", "values": ["a", "b"]},
            {"key": ZONE_KEY, "operator": "In", "values": ["b", "c"]}]}]));
        for dep in [by_selector, one_zone, narrowed] {
            assert!(pins_single_zone(&dep));
            assert_eq!(run_cfg(&dep, &cfg("")).1, 0);
        }
    }

    #[test]
    fn multi_zone_affinity_is_not_pinned() {
        let affinity = |terms: Value| {
            with(
                deployment(),
                &["spec", "template", "spec", "affinity"],
                json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}),
            )
        };
        let two_zones = affinity(
            json!([{"matchExpressions": [{"key": ZONE_KEY, "operator": "In", "values": ["a", "b"]}]}]),
        );
        let two_terms = affinity(json!([
            {"matchExpressions": [{"key": ZONE_KEY, "operator": "In", "values": ["a"]}]},
            {"matchExpressions": [{"key": ZONE_KEY, "operator": "In", "values": ["b"]}]}]));
        let unrestricted_term = affinity(json!([
            {"matchExpressions": [{"key": ZONE_KEY, "operator": "In", "values": ["a"]}]},
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]));
        let not_in = affinity(
            json!([{"matchExpressions": [{"key": ZONE_KEY, "operator": "NotIn", "values": ["a"]}]}]),
        );
        for dep in [two_zones, two_terms, unrestricted_term, not_in] {
            assert!(!pins_single_zone(&dep), "{dep}");
            assert_eq!(run_cfg(&dep, &cfg("")).1, 2);
        }
    }
}
