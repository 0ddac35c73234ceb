//! One admission review, start to finish, as a pure function: which rules
//! apply to this request, what they patch, whether it is denied.
//!
//! Shared by the HTTP server, `zonewise mutate` and `zonewise audit`, so
//! the offline answers are exactly what the cluster would get. Which rules
//! run comes from the table in [`crate::core::rules`]; no I/O, clock, logging or
//! HTTP here.

use serde_json::{Value, json};

pub use crate::core::admission::{
    AdmissionRequest, GroupVersionKind, Kind, Operation, Outcome, Rule, Verdict,
};
use crate::core::lookups::Lookups;
use crate::core::object;
use crate::core::policy::Policy;
use crate::core::rules::{self, APPLIED, Action, Check, Context, Mutation, SKIP};
use crate::core::warnings::{Priority, Warnings};

/// `/mutate` runs every rule; `/validate` only the checks, for a
/// ValidatingWebhookConfiguration that sees the object after all mutations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Mutate,
    Validate,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Mutate => "mutate",
            Endpoint::Validate => "validate",
        }
    }
}

/// Which rules a review may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    All,
    /// This rule alone (the audit's one finding per rule).
    Rule(Rule),
}

pub fn review(
    req: &AdmissionRequest,
    policy: &Policy,
    lookups: &dyn Lookups,
    endpoint: Endpoint,
) -> Outcome {
    review_only(req, policy, lookups, endpoint, Only::All)
}

pub fn review_only(
    req: &AdmissionRequest,
    policy: &Policy,
    lookups: &dyn Lookups,
    endpoint: Endpoint,
    only: Only,
) -> Outcome {
    let Some(kind) = Kind::of(&req.kind) else {
        return Outcome::skip("kind not handled", Vec::new());
    };
    if req.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        return Outcome::skip("subresource", Vec::new());
    }
    // Mutations act on CREATE only (so existing objects are never changed
    // behind their owners' backs); checks also on UPDATE.
    let (run_checks, run_mutations) = match (req.operation, endpoint) {
        (Operation::Create, Endpoint::Mutate) => (true, true),
        (Operation::Create | Operation::Update, _) => (true, false),
        _ => return Outcome::skip("operation not handled", Vec::new()),
    };
    if !run_mutations && !rules::rules_for(kind).any(|r| matches!(r.action, Action::Check(_))) {
        return Outcome::skip("operation not handled", Vec::new());
    }
    let mut warnings = Warnings::new();
    if req.oversized {
        warnings.push(
            Priority::Normal,
            format!(
                "zonewise: {kind} {}/{} not reviewed: the fields zonewise reads hold more than \
                 {} values",
                req.namespace,
                req.name,
                crate::core::sparse::MAX_VALUES
            ),
        );
        return Outcome::skip("object too large", warnings.finish());
    }
    let Some(obj) = req.object.as_ref() else {
        warnings.push(
            Priority::Low,
            format!("zonewise: {kind} request carries no object; not reviewed"),
        );
        return Outcome::skip("no object", warnings.finish());
    };
    let namespace = effective_namespace(req, obj);
    if policy.excluded.contains(namespace) {
        return Outcome::skip("excluded namespace", Vec::new());
    }
    if let Err(e) = rules::typed_check(kind, obj, req.complete) {
        warnings.push(
            Priority::Normal,
            format!(
                "zonewise: {kind} {namespace}/{} does not parse ({e}); no rules applied",
                object::display_name(obj)
            ),
        );
        return Outcome::skip("object does not parse", warnings.finish());
    }

    let skips = Skips::parse(obj, &mut warnings);
    if skips.all {
        return Outcome::skip("skip annotation", warnings.finish());
    }
    let ctx = Context {
        kind,
        namespace,
        operation: req.operation,
        can_patch: endpoint == Endpoint::Mutate,
        policy,
        lookups,
    };
    let selected = |rule: Rule| !skips.has(rule) && (only == Only::All || only == Only::Rule(rule));
    let old = match req.operation {
        Operation::Update => req.old_object.as_ref(),
        _ => None,
    };

    let mut m = Mutation::new(obj);
    m.warnings = warnings;
    let mut applied = Vec::new();
    // Checks first: a denial ends the review before anything is patched.
    for spec in rules::rules_for(kind).filter(|r| selected(r.rule)) {
        let Action::Check(check) = spec.action else {
            continue;
        };
        if !run_checks {
            continue;
        }
        let before = m.patch.len();
        if let Check::Deny(message) = check(obj, old, &ctx, &mut m) {
            return Outcome {
                verdict: Verdict::Denied {
                    rule: spec.rule,
                    message,
                },
                warnings: m.warnings.finish(),
                skipped: None,
            };
        }
        if m.patch.len() > before {
            applied.push(spec.rule);
        }
    }
    if run_mutations {
        for spec in rules::rules_for(kind).filter(|r| selected(r.rule)) {
            let Action::Mutate(mutate) = spec.action else {
                continue;
            };
            let before = m.patch.len();
            if let Err(e) = mutate(obj, &ctx, &mut m) {
                m.warn(
                    Priority::Normal,
                    format!("zonewise: {}: {e}; object left unchanged", spec.rule),
                );
                return Outcome::skip("patch error", m.warnings.finish());
            }
            if m.patch.len() > before {
                applied.push(spec.rule);
            }
        }
    }
    if applied.is_empty() {
        return Outcome::allowed(m.warnings.finish());
    }
    if let Err(e) = m.patch.set(
        &["metadata", "annotations", APPLIED],
        json!(applied_value(obj, &applied)),
    ) {
        m.warn(
            Priority::Normal,
            format!("zonewise: {e}; object left unchanged"),
        );
        return Outcome::skip("patch error", m.warnings.finish());
    }
    Outcome {
        verdict: Verdict::Patched {
            patch: m.patch.into_patch(),
            applied,
        },
        warnings: m.warnings.finish(),
        skipped: None,
    }
}

/// The request's namespace; objects in a create request often have none in
/// their metadata. `mutate` on a raw manifest passes the manifest's own.
fn effective_namespace<'a>(req: &'a AdmissionRequest, obj: &'a Value) -> &'a str {
    if !req.namespace.is_empty() {
        return &req.namespace;
    }
    object::str_at(obj, &["metadata", "namespace"]).unwrap_or("default")
}

/// `zonewise.io/applied` after this review: what was there (a reinvocation
/// or a manifest baked by `zonewise mutate`) plus the rules that ran now.
fn applied_value(obj: &Value, applied: &[Rule]) -> String {
    let mut names: Vec<&str> = object::annotation(obj, APPLIED)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .take(Rule::ALL.len() * 2)
        .collect();
    for rule in applied {
        if !names.contains(&rule.name()) {
            names.push(rule.name());
        }
    }
    names.join(",")
}

/// Whether `zonewise.io/skip` opts the object out of every rule, read as a
/// review reads it.
pub fn skips_everything(obj: &Value) -> bool {
    Skips::parse(obj, &mut Warnings::new()).all
}

/// Entries read from `zonewise.io/skip`: every rule name fits many times.
const MAX_SKIP_ENTRIES: usize = 32;

/// The `zonewise.io/skip` annotation: `"true"` or a comma list of rules.
struct Skips {
    all: bool,
    rules: Vec<Rule>,
}

impl Skips {
    fn parse(obj: &Value, warnings: &mut Warnings) -> Skips {
        let mut skips = Skips {
            all: false,
            rules: Vec::new(),
        };
        let Some(value) = object::annotation(obj, SKIP) else {
            return skips;
        };
        let mut items = value.split(',').map(str::trim).filter(|s| !s.is_empty());
        for item in items.by_ref().take(MAX_SKIP_ENTRIES) {
            if item.eq_ignore_ascii_case("true") {
                skips.all = true;
            } else if item.eq_ignore_ascii_case("false") {
            } else if let Some(rule) = Rule::parse(item) {
                skips.rules.push(rule);
            } else {
                let shown: String = item.chars().take(64).collect();
                let known: Vec<&str> = Rule::ALL.iter().map(|r| r.name()).collect();
                warnings.push(
                    Priority::Normal,
                    format!(
                        "zonewise: {SKIP}: unknown rule {shown:?} (known: true, {})",
                        known.join(", ")
                    ),
                );
            }
        }
        if items.next().is_some() {
            warnings.push(
                Priority::Normal,
                format!("zonewise: {SKIP}: only the first {MAX_SKIP_ENTRIES} entries are read"),
            );
        }
        skips
    }

    fn has(&self, rule: Rule) -> bool {
        self.all || self.rules.contains(&rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::Config;
    use crate::core::lookups::NoCluster;
    use crate::core::policy::Environment;
    use crate::core::rules::test_support::{annotated, deployment, service, statefulset, with};

    fn request(kind: GroupVersionKind, op: Operation, obj: Value) -> AdmissionRequest {
        AdmissionRequest {
            uid: "u1".into(),
            kind,
            sub_resource: None,
            name: object::display_name(&obj).to_string(),
            namespace: "shop".into(),
            operation: op,
            dry_run: false,
            object: Some(obj),
            old_object: None,
            complete: true,
            oversized: false,
        }
    }

    fn req_for(kind: Kind, obj: Value) -> AdmissionRequest {
        let (g, v, k, _) = kind.api();
        request(GroupVersionKind::new(g, v, k), Operation::Create, obj)
    }

    fn svc_req(obj: Value) -> AdmissionRequest {
        req_for(Kind::Service, obj)
    }

    fn dep_req(obj: Value) -> AdmissionRequest {
        req_for(Kind::Deployment, obj)
    }

    fn run(req: &AdmissionRequest) -> Outcome {
        review(req, &Policy::default(), &NoCluster, Endpoint::Mutate)
    }

    fn patched(req: &AdmissionRequest, out: &Outcome) -> Value {
        let mut obj = req.object.clone().unwrap();
        json_patch::patch(&mut obj, out.patch().unwrap()).unwrap();
        obj
    }

    #[test]
    fn service_gets_routing_and_applied_annotation_and_converges() {
        let req = svc_req(service());
        let out = run(&req);
        assert_eq!(out.verdict.label(), "patched");
        assert_eq!(out.applied(), [Rule::ZoneRouting]);
        let obj = patched(&req, &out);
        assert_eq!(obj["metadata"]["annotations"][APPLIED], "zone-routing");
        let again = run(&svc_req(obj));
        assert_eq!(again.verdict.label(), "allowed");
    }

    #[test]
    fn two_rules_share_one_annotations_parent() {
        let lb = with(service(), &["spec", "type"], json!("LoadBalancer"));
        let policy = Policy::new(
            Config::from_yaml("service: {routing: annotation}").unwrap(),
            &Environment::default(),
        );
        let req = svc_req(lb);
        let out = review(&req, &policy, &NoCluster, Endpoint::Mutate);
        let obj = patched(&req, &out);
        let ann = &obj["metadata"]["annotations"];
        assert_eq!(ann[rules::TOPOLOGY_MODE], "Auto");
        assert_eq!(ann[rules::lb_ip_target::NLB_TARGET_TYPE], "ip");
        assert_eq!(ann[APPLIED], "zone-routing,lb-ip-target");
    }

    #[test]
    fn statefulsets_and_ingresses_go_through_their_rules() {
        let req = req_for(
            Kind::StatefulSet,
            annotated(statefulset(), rules::CALLS, "orders"),
        );
        let out = run(&req);
        assert_eq!(out.applied(), [Rule::ZoneSpread, Rule::CallAffinity]);
        let ing = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "shop"}, "spec": {"ingressClassName": "alb"}});
        let out = run(&req_for(Kind::Ingress, ing));
        assert_eq!(out.applied(), [Rule::AlbIpTarget]);
    }

    #[test]
    fn only_one_rule() {
        let lb = with(service(), &["spec", "type"], json!("LoadBalancer"));
        let out = review_only(
            &svc_req(lb),
            &Policy::default(),
            &NoCluster,
            Endpoint::Mutate,
            Only::Rule(Rule::LbIpTarget),
        );
        assert_eq!(out.applied(), [Rule::LbIpTarget]);
    }

    #[test]
    fn applied_merges_with_existing_value() {
        let req = dep_req(annotated(deployment(), APPLIED, "zone-routing"));
        let obj = patched(&req, &run(&req));
        assert_eq!(
            obj["metadata"]["annotations"][APPLIED],
            "zone-routing,zone-spread"
        );
    }

    #[test]
    fn skip_annotation() {
        let out = run(&dep_req(annotated(deployment(), SKIP, "true")));
        assert_eq!(
            (out.verdict.label(), out.skipped),
            ("allowed", Some("skip annotation"))
        );
        let req = dep_req(annotated(
            annotated(deployment(), SKIP, "zone-spread, bogus"),
            rules::CALLS,
            "orders",
        ));
        let out = run(&req);
        assert_eq!(out.applied(), [Rule::CallAffinity]);
        assert!(
            out.warnings.iter().any(|w| w.contains("bogus")),
            "{:?}",
            out.warnings
        );
        let local = annotated(
            with(
                service(),
                &["spec", "internalTrafficPolicy"],
                json!("Local"),
            ),
            SKIP,
            "local-policy",
        );
        assert_eq!(run(&svc_req(local)).verdict.label(), "allowed");
    }

    #[test]
    fn a_huge_skip_list_costs_a_few_warnings() {
        let value = vec!["a"; 500_000].join(",") + ",b," + &vec!["c"; 100].join(",");
        let out = run(&dep_req(annotated(deployment(), SKIP, &value)));
        assert_eq!(out.applied(), [Rule::ZoneSpread], "the rest still runs");
        assert_eq!(out.warnings.len(), 2, "{:?}", out.warnings);
        assert!(
            out.warnings[1].contains("only the first 32"),
            "{:?}",
            out.warnings
        );
    }

    #[test]
    fn local_service_denied_on_create_with_no_patch() {
        let out = run(&svc_req(with(
            service(),
            &["spec", "internalTrafficPolicy"],
            json!("Local"),
        )));
        let Verdict::Denied { rule, message } = &out.verdict else {
            panic!("denied")
        };
        assert_eq!(*rule, Rule::LocalPolicy);
        assert!(message.contains("internalTrafficPolicy: Local"));
        assert!(out.patch().is_none());
    }

    #[test]
    fn operations_and_endpoints() {
        let local = with(
            service(),
            &["spec", "internalTrafficPolicy"],
            json!("Local"),
        );
        let mut upd = svc_req(local.clone());
        upd.operation = Operation::Update;
        upd.old_object = Some(service());
        assert_eq!(run(&upd).verdict.label(), "denied");
        upd.old_object = Some(local.clone());
        assert_eq!(run(&upd).verdict.label(), "allowed");
        let mut upd_plain = svc_req(service());
        upd_plain.operation = Operation::Update;
        upd_plain.old_object = Some(service());
        assert!(run(&upd_plain).patch().is_none());
        let mut dep_update = dep_req(deployment());
        dep_update.operation = Operation::Update;
        assert_eq!(run(&dep_update).skipped, Some("operation not handled"));
        for op in [Operation::Delete, Operation::Connect] {
            let mut r = svc_req(local.clone());
            r.operation = op;
            assert_eq!(run(&r).verdict.label(), "allowed");
        }
        let validate =
            |r: &AdmissionRequest| review(r, &Policy::default(), &NoCluster, Endpoint::Validate);
        assert!(validate(&svc_req(service())).patch().is_none());
        assert_eq!(validate(&svc_req(local)).verdict.label(), "denied");
        assert!(validate(&dep_req(deployment())).patch().is_none());
    }

    #[test]
    fn other_kinds_subresources_and_excluded_namespaces_untouched() {
        let cm = request(
            GroupVersionKind::new("", "v1", "ConfigMap"),
            Operation::Create,
            json!({}),
        );
        assert_eq!(run(&cm).skipped, Some("kind not handled"));
        let mut scale = dep_req(deployment());
        scale.sub_resource = Some("scale".into());
        assert_eq!(run(&scale).skipped, Some("subresource"));
        let mut sys = dep_req(deployment());
        sys.namespace = "kube-system".into();
        assert_eq!(run(&sys).skipped, Some("excluded namespace"));
    }

    #[test]
    fn unparsable_or_oversized_objects_are_allowed_with_a_warning() {
        let bad = with(deployment(), &["spec", "replicas"], json!("three"));
        let out = run(&dep_req(bad));
        assert_eq!(out.verdict.label(), "allowed");
        assert!(
            out.warnings[0].contains("does not parse"),
            "{:?}",
            out.warnings
        );
        let mut big = dep_req(deployment());
        big.oversized = true;
        let out = run(&big);
        assert_eq!(out.skipped, Some("object too large"));
        assert!(
            out.warnings[0].contains("not reviewed"),
            "{:?}",
            out.warnings
        );
    }

    #[test]
    fn sparse_objects_are_checked_in_the_parts_kept() {
        let body = |obj: Value| {
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": "u", "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
                            "namespace": "shop", "operation": "CREATE", "object": obj}}))
            .unwrap()
        };
        let bad = with(
            deployment(),
            &["spec", "selector"],
            json!({"matchLabels": "web"}),
        );
        let req = crate::core::wire::decode(&body(bad)).unwrap();
        assert!(!req.complete);
        let out = run(&req);
        assert!(
            out.patch().is_none() && out.warnings[0].contains("does not parse"),
            "{:?}",
            out.warnings
        );
        // A spec without a field apps/v1 requires gets the same answer
        // whether the object was read sparsely (the admission path) or
        // whole (`zonewise mutate`), though k8s-openapi would default it.
        // Absent, or null as the API server writes a nil `selector`.
        for (missing, null) in [("template", false), ("selector", false), ("selector", true)] {
            let mut dep = deployment();
            if null {
                dep["spec"][missing] = Value::Null;
            } else {
                dep["spec"].as_object_mut().unwrap().remove(missing);
            }
            for objects in [
                crate::core::wire::Objects::Sparse,
                crate::core::wire::Objects::Full,
            ] {
                let req = crate::core::wire::decode_with(&body(dep.clone()), objects).unwrap();
                let out = run(&req);
                assert!(out.patch().is_none(), "{missing} {objects:?}");
                assert!(
                    out.warnings[0]
                        .contains(&format!("does not parse (missing field `spec.{missing}`)")),
                    "{missing} {objects:?}: {:?}",
                    out.warnings
                );
            }
        }
        let sparse = run(&crate::core::wire::decode(&body(deployment())).unwrap());
        let full = run(&crate::core::wire::decode_with(
            &body(deployment()),
            crate::core::wire::Objects::Full,
        )
        .unwrap());
        assert_eq!(
            serde_json::to_value(sparse.patch()).unwrap(),
            serde_json::to_value(full.patch()).unwrap()
        );
    }

    #[test]
    fn dry_run_gets_the_same_answer() {
        let mut req = dep_req(deployment());
        let wet = run(&req);
        req.dry_run = true;
        let dry = run(&req);
        assert_eq!(
            serde_json::to_value(wet.patch()).unwrap(),
            serde_json::to_value(dry.patch()).unwrap()
        );
    }
}
