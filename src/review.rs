//! One admission review, start to finish, as a pure function: which rules
//! apply to this request, what they patch, whether it is denied.
//!
//! Shared by the HTTP server and `zonewise mutate`, so the offline output is
//! exactly what the cluster would do. No I/O, clock, logging or HTTP here.

use json_patch::Patch;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::Policy;
use crate::lookups::Lookups;
use crate::object;
use crate::rules::local_policy::{self, Verdict};
use crate::rules::{
    APPLIED, Context, Mutation, Rule, SKIP, call_affinity, lb_ip_target, zone_routing, zone_spread,
};

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
}

impl GroupVersionKind {
    pub fn new(group: &str, version: &str, kind: &str) -> Self {
        GroupVersionKind {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
    Other,
}

impl Operation {
    pub fn parse(s: &str) -> Operation {
        match s {
            "CREATE" => Operation::Create,
            "UPDATE" => Operation::Update,
            "DELETE" => Operation::Delete,
            "CONNECT" => Operation::Connect,
            _ => Operation::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
            Operation::Other => "OTHER",
        }
    }
}

/// The parts of an `admission.k8s.io/v1` AdmissionRequest the rules use.
#[derive(Debug, Clone)]
pub struct AdmissionRequest {
    pub uid: String,
    pub kind: GroupVersionKind,
    pub sub_resource: Option<String>,
    pub name: String,
    pub namespace: String,
    pub operation: Operation,
    pub dry_run: bool,
    pub object: Option<Value>,
    pub old_object: Option<Value>,
    /// `object` holds the whole object; `false` when only the parts the
    /// rules read were parsed (see [`crate::sparse`]).
    pub complete: bool,
}

/// `/mutate` runs every rule; `/validate` only `local-policy`, for a
/// ValidatingWebhookConfiguration that sees the object after all mutations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Mutate,
    Validate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Patched,
    Denied,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Patched => "patched",
            Decision::Denied => "denied",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    /// The denial message (HTTP-style status 403); `Some` means denied.
    pub message: Option<String>,
    /// `Some` means patched (never together with a denial).
    pub patch: Option<Patch>,
    pub warnings: Vec<String>,
    /// Rules that changed the object, in order.
    pub applied: Vec<Rule>,
    /// Why no rule ran, for the log line.
    pub skipped: Option<&'static str>,
}

impl Outcome {
    /// Allowed as it is.
    fn allowed(warnings: Vec<String>) -> Outcome {
        Outcome {
            message: None,
            patch: None,
            warnings,
            applied: Vec::new(),
            skipped: None,
        }
    }

    /// Allowed as it is, without any rule having run, because of `why`.
    fn allow(why: &'static str, warnings: Vec<String>) -> Outcome {
        Outcome {
            skipped: Some(why),
            ..Outcome::allowed(warnings)
        }
    }

    fn denied(message: String, warnings: Vec<String>) -> Outcome {
        Outcome {
            message: Some(message),
            ..Outcome::allowed(warnings)
        }
    }

    pub fn decision(&self) -> Decision {
        match (&self.message, &self.patch) {
            (Some(_), _) => Decision::Denied,
            (None, Some(_)) => Decision::Patched,
            (None, None) => Decision::Allowed,
        }
    }
}

/// The kinds the rules handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Service,
    Deployment,
}

impl Target {
    pub fn of(gvk: &GroupVersionKind) -> Option<Target> {
        match (gvk.group.as_str(), gvk.version.as_str(), gvk.kind.as_str()) {
            ("", "v1", "Service") => Some(Target::Service),
            ("apps", "v1", "Deployment") => Some(Target::Deployment),
            _ => None,
        }
    }

    /// The object deserializes into its k8s-openapi type. An object that
    /// does not is allowed untouched: patching something malformed could
    /// only make the API server's own error harder to read. A sparse object
    /// (the admission path) is checked in the parts that were kept, which
    /// are all the parts the rules read or write; the API server has already
    /// decoded the whole object into the same types before calling us.
    fn parses(self, obj: &Value, complete: bool) -> Result<(), String> {
        use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
        let r = match (self, complete) {
            // Every Service field is optional, so a sparse one checks as is.
            (Target::Service, _) => Service::deserialize(obj).map(drop),
            (Target::Deployment, true) => Deployment::deserialize(obj).map(drop),
            (Target::Deployment, false) => view::Deployment::deserialize(obj).map(drop),
        };
        r.map_err(|e| e.to_string())
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Service => "Service",
            Target::Deployment => "Deployment",
        }
    }
}

pub fn review(
    req: &AdmissionRequest,
    policy: &Policy,
    lookups: &dyn Lookups,
    endpoint: Endpoint,
) -> Outcome {
    let Some(target) = Target::of(&req.kind) else {
        return Outcome::allow("kind not handled", Vec::new());
    };
    if req.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        return Outcome::allow("subresource", Vec::new());
    }
    // Mutation rules act on CREATE only; local-policy also on an UPDATE that
    // turns a Service Local.
    let (run_local, run_mutations) = match (req.operation, target, endpoint) {
        (Operation::Create, Target::Service, Endpoint::Mutate) => (true, true),
        (Operation::Create, Target::Service, Endpoint::Validate) => (true, false),
        (Operation::Update, Target::Service, _) => (true, false),
        (Operation::Create, Target::Deployment, Endpoint::Mutate) => (false, true),
        _ => return Outcome::allow("operation not handled", Vec::new()),
    };
    let Some(obj) = req.object.as_ref() else {
        return Outcome::allow(
            "no object",
            vec![format!(
                "zonewise: {} request carries no object; not reviewed",
                target.name()
            )],
        );
    };
    let namespace = effective_namespace(req, obj);
    if policy.excluded.contains(namespace) {
        return Outcome::allow("excluded namespace", Vec::new());
    }
    if let Err(e) = target.parses(obj, req.complete) {
        return Outcome::allow(
            "object does not parse",
            vec![format!(
                "zonewise: {} {namespace}/{} does not parse ({e}); no rules applied",
                target.name(),
                object::display_name(obj)
            )],
        );
    }

    let mut warnings = Vec::new();
    let skips = Skips::parse(obj, &mut warnings);
    if skips.all {
        return Outcome::allow("skip annotation", warnings);
    }
    let ctx = Context {
        namespace,
        policy,
        lookups,
    };

    if run_local && !skips.has(Rule::LocalPolicy) {
        let old = match req.operation {
            Operation::Update => req.old_object.as_ref(),
            _ => None,
        };
        if let Verdict::Deny(message) = local_policy::check(obj, old, &ctx, &mut warnings) {
            return Outcome::denied(message, warnings);
        }
    }
    if !run_mutations {
        return Outcome::allowed(warnings);
    }

    let mut m = Mutation::new(obj);
    m.warnings = warnings;
    let mut applied = Vec::new();
    let rules: &[Rule] = match target {
        Target::Service => &[Rule::ZoneRouting, Rule::LbIpTarget],
        Target::Deployment => &[Rule::ZoneSpread, Rule::CallAffinity],
    };
    for &rule in rules {
        if skips.has(rule) {
            continue;
        }
        let before = m.patch.len();
        let result = match rule {
            Rule::ZoneRouting => zone_routing::apply(obj, policy.routing, &mut m),
            Rule::LbIpTarget => {
                lb_ip_target::apply(obj, &policy.config.service.load_balancer, &mut m)
            }
            Rule::ZoneSpread => {
                zone_spread::apply(obj, &policy.config.deployment.zone_spread, &mut m)
            }
            Rule::CallAffinity => call_affinity::apply(obj, &ctx, &mut m),
            Rule::LocalPolicy => Ok(()),
        };
        if let Err(e) = result {
            m.warnings
                .push(format!("zonewise: {rule}: {e}; object left unchanged"));
            return Outcome::allow("patch error", m.warnings);
        }
        if m.patch.len() > before {
            applied.push(rule);
        }
    }
    if applied.is_empty() {
        return Outcome::allowed(m.warnings);
    }
    if let Err(e) = m.patch.set(
        &["metadata", "annotations", APPLIED],
        json!(applied_value(obj, &applied)),
    ) {
        m.warnings
            .push(format!("zonewise: {e}; object left unchanged"));
        return Outcome::allow("patch error", m.warnings);
    }
    Outcome {
        patch: Some(m.patch.into_patch()),
        applied,
        ..Outcome::allowed(m.warnings)
    }
}

/// The typed shape of the parts of a Deployment the rules read, with the
/// k8s-openapi types (and required fields) of apps/v1.
mod view {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Affinity, TopologySpreadConstraint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub struct Deployment {
        #[serde(rename = "metadata")]
        _metadata: Option<ObjectMeta>,
        #[serde(rename = "spec")]
        _spec: Option<DeploymentSpec>,
    }

    #[derive(Deserialize)]
    struct DeploymentSpec {
        #[serde(rename = "replicas")]
        _replicas: Option<i32>,
        #[serde(rename = "selector")]
        _selector: LabelSelector,
        #[serde(rename = "template")]
        _template: PodTemplateSpec,
    }

    #[derive(Deserialize)]
    struct PodTemplateSpec {
        #[serde(rename = "metadata")]
        _metadata: Option<ObjectMeta>,
        #[serde(rename = "spec")]
        _spec: Option<PodSpec>,
    }

    #[derive(Deserialize)]
    struct PodSpec {
        #[serde(rename = "topologySpreadConstraints")]
        _topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
        #[serde(rename = "affinity")]
        _affinity: Option<Affinity>,
        #[serde(rename = "nodeSelector")]
        _node_selector: Option<BTreeMap<String, String>>,
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
        .collect();
    for rule in applied {
        if !names.contains(&rule.name()) {
            names.push(rule.name());
        }
    }
    names.join(",")
}

/// The `zonewise.io/skip` annotation: `"true"` or a comma list of rules.
struct Skips {
    all: bool,
    rules: Vec<Rule>,
}

impl Skips {
    fn parse(obj: &Value, warnings: &mut Vec<String>) -> Skips {
        let mut skips = Skips {
            all: false,
            rules: Vec::new(),
        };
        let Some(value) = object::annotation(obj, SKIP) else {
            return skips;
        };
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item.eq_ignore_ascii_case("true") {
                skips.all = true;
            } else if item.eq_ignore_ascii_case("false") {
            } else if let Some(rule) = Rule::parse(item) {
                skips.rules.push(rule);
            } else {
                let known: Vec<&str> = Rule::ALL.iter().map(|r| r.name()).collect();
                warnings.push(format!(
                    "zonewise: {SKIP}: unknown rule {item:?} (known: true, {})",
                    known.join(", ")
                ));
            }
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
    use crate::lookups::NoCluster;
    use crate::rules::test_support::{annotated, deployment, service, with};

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
        }
    }

    fn svc_req(obj: Value) -> AdmissionRequest {
        request(
            GroupVersionKind::new("", "v1", "Service"),
            Operation::Create,
            obj,
        )
    }

    fn dep_req(obj: Value) -> AdmissionRequest {
        request(
            GroupVersionKind::new("apps", "v1", "Deployment"),
            Operation::Create,
            obj,
        )
    }

    fn run(req: &AdmissionRequest) -> Outcome {
        review(req, &Policy::default(), &NoCluster, Endpoint::Mutate)
    }

    fn patched(req: &AdmissionRequest, out: &Outcome) -> Value {
        let mut obj = req.object.clone().unwrap();
        json_patch::patch(&mut obj, out.patch.as_ref().unwrap()).unwrap();
        obj
    }

    #[test]
    fn service_gets_routing_and_applied_annotation_and_converges() {
        let req = svc_req(service());
        let out = run(&req);
        assert_eq!(out.decision(), Decision::Patched);
        assert_eq!(out.applied, vec![Rule::ZoneRouting]);
        let obj = patched(&req, &out);
        assert_eq!(obj["metadata"]["annotations"][APPLIED], "zone-routing");
        let again = run(&svc_req(obj));
        assert_eq!(again.decision(), Decision::Allowed);
        assert!(again.patch.is_none());
    }

    #[test]
    fn two_rules_share_one_annotations_parent() {
        let lb = with(service(), &["spec", "type"], json!("LoadBalancer"));
        let policy = Policy::new(
            crate::config::Config::from_yaml("service: {routing: annotation}").unwrap(),
            &Default::default(),
        );
        let req = svc_req(lb);
        let out = review(&req, &policy, &NoCluster, Endpoint::Mutate);
        let obj = patched(&req, &out);
        let ann = &obj["metadata"]["annotations"];
        assert_eq!(ann[crate::rules::TOPOLOGY_MODE], "Auto");
        assert_eq!(ann[lb_ip_target::NLB_TARGET_TYPE], "ip");
        assert_eq!(ann[APPLIED], "zone-routing,lb-ip-target");
    }

    #[test]
    fn applied_merges_with_existing_value() {
        let dep = annotated(deployment(), APPLIED, "zone-routing");
        let req = dep_req(dep);
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
            (out.decision(), out.skipped),
            (Decision::Allowed, Some("skip annotation"))
        );

        let req = dep_req(annotated(
            annotated(deployment(), SKIP, "zone-spread, bogus"),
            crate::rules::CALLS,
            "orders",
        ));
        let out = run(&req);
        assert_eq!(out.applied, vec![Rule::CallAffinity]);
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
        assert_eq!(run(&svc_req(local)).decision(), Decision::Allowed);
    }

    #[test]
    fn local_service_denied_on_create_with_no_patch() {
        let out = run(&svc_req(with(
            service(),
            &["spec", "internalTrafficPolicy"],
            json!("Local"),
        )));
        assert_eq!(out.decision(), Decision::Denied);
        assert!(out.patch.is_none());
        assert!(
            out.message
                .unwrap()
                .contains("internalTrafficPolicy: Local")
        );
    }

    #[test]
    fn operations_and_endpoints() {
        let local = with(
            service(),
            &["spec", "internalTrafficPolicy"],
            json!("Local"),
        );
        // UPDATE turning Local is denied; UPDATE never mutates.
        let mut upd = svc_req(local.clone());
        upd.operation = Operation::Update;
        upd.old_object = Some(service());
        assert_eq!(run(&upd).decision(), Decision::Denied);
        upd.old_object = Some(local.clone());
        assert_eq!(run(&upd).decision(), Decision::Allowed);
        let mut upd_plain = svc_req(service());
        upd_plain.operation = Operation::Update;
        upd_plain.old_object = Some(service());
        assert!(run(&upd_plain).patch.is_none());

        for op in [Operation::Delete, Operation::Connect] {
            let mut r = svc_req(local.clone());
            r.operation = op;
            assert_eq!(run(&r).decision(), Decision::Allowed);
        }
        // /validate: local-policy only, never a patch.
        let out = review(
            &svc_req(service()),
            &Policy::default(),
            &NoCluster,
            Endpoint::Validate,
        );
        assert!(out.patch.is_none());
        let out = review(
            &svc_req(local),
            &Policy::default(),
            &NoCluster,
            Endpoint::Validate,
        );
        assert_eq!(out.decision(), Decision::Denied);
        let out = review(
            &dep_req(deployment()),
            &Policy::default(),
            &NoCluster,
            Endpoint::Validate,
        );
        assert!(out.patch.is_none());
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
    fn unparsable_object_is_allowed_with_a_warning() {
        let bad = with(deployment(), &["spec", "replicas"], json!("three"));
        let out = run(&dep_req(bad));
        assert_eq!(out.decision(), Decision::Allowed);
        assert!(out.patch.is_none());
        assert!(
            out.warnings[0].contains("does not parse"),
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
        // A bad selector is in a kept part: not parsed, no patch.
        let bad = with(
            deployment(),
            &["spec", "selector"],
            json!({"matchLabels": "web"}),
        );
        let req = crate::wire::decode(&body(bad)).unwrap();
        assert!(!req.complete);
        let out = run(&req);
        assert!(
            out.patch.is_none() && out.warnings[0].contains("does not parse"),
            "{:?}",
            out.warnings
        );
        // A missing template is too (apps/v1 requires it).
        let mut no_template = deployment();
        no_template["spec"]
            .as_object_mut()
            .unwrap()
            .remove("template");
        assert!(
            run(&crate::wire::decode(&body(no_template)).unwrap())
                .patch
                .is_none()
        );
        // The same patch as for the whole object otherwise.
        let sparse = run(&crate::wire::decode(&body(deployment())).unwrap());
        let full = run(
            &crate::wire::decode_with(&body(deployment()), crate::wire::Objects::Full).unwrap(),
        );
        assert_eq!(
            serde_json::to_value(sparse.patch).unwrap(),
            serde_json::to_value(full.patch).unwrap()
        );
    }

    #[test]
    fn dry_run_gets_the_same_answer() {
        let mut req = dep_req(deployment());
        let wet = run(&req);
        req.dry_run = true;
        let dry = run(&req);
        assert_eq!(
            serde_json::to_value(wet.patch).unwrap(),
            serde_json::to_value(dry.patch).unwrap()
        );
    }
}
