//! `lb-ip-target`: AWS Network Load Balancers send straight to pod IPs.
//!
//! With `instance` targets (the AWS Load Balancer Controller's default for
//! `loadBalancerClass: service.k8s.aws/nlb`) the NLB sends to a NodePort on
//! any node, and kube-proxy then forwards to a pod that may sit in another
//! zone: a hidden cross-AZ hop on every connection. `ip` targets remove it.
//!
//! Where the owner has already decided, the owner wins:
//! - `externalTrafficPolicy: Local` exists to keep the client's source IP
//!   (and already avoids the cross-zone hop). NLB IP targets over TCP/TLS do
//!   not preserve it by default, so such a Service is left alone.
//! - the dedicated cross-zone annotation takes precedence over the
//!   attributes annotation in the controller, so it is respected.

use serde_json::{Value, json};

use super::{
    Action, Context, Kind, Mutation, READINESS_GATE_LABEL, Rule, RuleSpec, read, service_type,
};
use crate::core::config::{CrossZone, TargetType};
use crate::core::lookups::Lookup;
use crate::core::object;
use crate::core::patch::PatchError;
use crate::core::warnings::Priority;

pub const NLB_TARGET_TYPE: &str = "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type";
pub const LB_TYPE: &str = "service.beta.kubernetes.io/aws-load-balancer-type";
pub const LB_ATTRIBUTES: &str = "service.beta.kubernetes.io/aws-load-balancer-attributes";
/// Deprecated in the controller but still honoured, ahead of the attributes.
pub const LB_CROSS_ZONE: &str =
    "service.beta.kubernetes.io/aws-load-balancer-cross-zone-load-balancing-enabled";
const CROSS_ZONE_ATTR: &str = "load_balancing.cross_zone.enabled";

pub const SPEC: RuleSpec = RuleSpec {
    rule: Rule::LbIpTarget,
    kinds: &[Kind::Service],
    action: Action::Mutate(apply),
    reads: &[
        read::<String>(&["spec", "type"]),
        read::<String>(&["spec", "loadBalancerClass"]),
        read::<String>(&["spec", "externalTrafficPolicy"]),
    ],
    reads_old: &[],
};

pub fn apply(svc: &Value, ctx: &Context<'_>, out: &mut Mutation<'_>) -> Result<(), PatchError> {
    let cfg = &ctx.policy.config.service.load_balancer;
    if service_type(svc) != "LoadBalancer" {
        return Ok(());
    }
    let class = object::str_at(svc, &["spec", "loadBalancerClass"]);
    if let Some(class) = class
        && !cfg.aws_classes.iter().any(|c| c == class)
    {
        // Somebody else's load balancer (MetalLB, a GKE class, ...).
        return Ok(());
    }
    let target = object::annotation(svc, NLB_TARGET_TYPE);
    let legacy_ip = object::annotation(svc, LB_TYPE) == Some("nlb-ip");
    if object::str_at(svc, &["spec", "externalTrafficPolicy"]) == Some("Local")
        && target.is_none()
        && !legacy_ip
    {
        if cfg.target_type == TargetType::Ip {
            out.warn(
                Priority::Normal,
                format!(
                    "zonewise: {} left as is: externalTrafficPolicy: Local keeps client IPs, which \
                     NLB IP targets drop by default; for both, set nlb-target-type: ip and \
                     target-group-attributes: preserve_client_ip.enabled=true",
                    ctx.describe(svc)
                ),
            );
        }
        return Ok(());
    }

    if cfg.target_type == TargetType::Ip {
        match target {
            // The deprecated `nlb-ip` type already means IP targets.
            None if legacy_ip => {}
            _ => prefer_ip_targets(svc, NLB_TARGET_TYPE, ("nlb-target-type", "NLB"), ctx, out)?,
        }
    }

    // Without a class, `external` hands the Service from the in-tree cloud
    // provider to the AWS Load Balancer Controller; with a class it is moot.
    if cfg.set_type && class.is_none() && !object::has_annotation(svc, LB_TYPE) {
        out.patch
            .set(&["metadata", "annotations", LB_TYPE], json!("external"))?;
    }

    if cfg.cross_zone == CrossZone::Disabled {
        if let Some(own) = object::annotation(svc, LB_CROSS_ZONE) {
            out.warn(
                Priority::Normal,
                format!(
                    "zonewise: {} sets {LB_CROSS_ZONE}: {own:?}, which the AWS Load Balancer \
                     Controller prefers to the attributes; cross-zone left as the owner chose",
                    ctx.describe(svc)
                ),
            );
        } else {
            let current = object::annotation(svc, LB_ATTRIBUTES).unwrap_or("");
            if let Some(merged) = merge_cross_zone_off(current) {
                out.patch
                    .set(&["metadata", "annotations", LB_ATTRIBUTES], json!(merged))?;
            }
        }
    }
    Ok(())
}

/// The target-type step the NLB and ALB rules share: `ip` when the owner
/// chose nothing (with the readiness-gate check), a warning when they chose
/// `instance`, silence for anything else. `shown` is how the warning names
/// the annotation and the load balancer.
pub fn prefer_ip_targets(
    obj: &Value,
    annotation: &str,
    (shown, lb): (&str, &str),
    ctx: &Context<'_>,
    out: &mut Mutation<'_>,
) -> Result<(), PatchError> {
    match object::annotation(obj, annotation) {
        None => {
            out.patch
                .set(&["metadata", "annotations", annotation], json!("ip"))?;
            warn_without_readiness_gate(ctx, out);
        }
        Some(v) if v.trim().eq_ignore_ascii_case("instance") => out.warn(
            Priority::Normal,
            format!(
                "zonewise: {} keeps {shown}: instance; {lb} traffic then takes a NodePort hop \
                 that can cross zones (ip avoids it)",
                ctx.describe(obj)
            ),
        ),
        Some(_) => {}
    }
    Ok(())
}

/// IP targets (NLB or ALB) need the controller's pod readiness gate for
/// zero-downtime rollouts, and it is injected only in labelled namespaces.
pub fn warn_without_readiness_gate(ctx: &Context<'_>, out: &mut Mutation<'_>) {
    let label = format!("{READINESS_GATE_LABEL}=enabled");
    match ctx.lookups.readiness_gate(ctx.namespace) {
        Lookup::Found(true) => {}
        Lookup::Found(false) | Lookup::NotFound => out.warn(
            Priority::Normal,
            format!(
                "zonewise: IP targets set, but namespace {} lacks label {label}: without the \
                 load balancer's pod readiness gate, rollouts can drop connections",
                ctx.namespace
            ),
        ),
        Lookup::Unavailable(why) => out.warn(
            Priority::Low,
            format!(
                "zonewise: IP targets set; namespace {} needs label {label} for zero-downtime \
                 rollouts (not checked: {why})",
                ctx.namespace
            ),
        ),
    }
}

/// Adds `load_balancing.cross_zone.enabled=false` to a comma list of
/// `key=value` attributes, keeping every attribute already there. `None`
/// when the owner already chose a cross-zone setting.
fn merge_cross_zone_off(current: &str) -> Option<String> {
    let pairs: Vec<&str> = current
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if pairs
        .iter()
        .any(|p| p.split('=').next().map(str::trim) == Some(CROSS_ZONE_ATTR))
    {
        return None;
    }
    let mut merged = pairs.join(",");
    if !merged.is_empty() {
        merged.push(',');
    }
    merged.push_str(CROSS_ZONE_ATTR);
    merged.push_str("=false");
    Some(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::lookups::{InMemory, Lookups};
    use crate::core::rules::test_support::*;

    fn lb() -> Value {
        with(service(), &["spec", "type"], json!("LoadBalancer"))
    }

    fn gated() -> InMemory {
        InMemory::default().with_readiness_gate("shop")
    }

    fn run_with(svc: &Value, yaml: &str, lookups: &dyn Lookups) -> (Value, Vec<String>, usize) {
        let p = policy(yaml);
        let c = ctx(Kind::Service, &p, lookups);
        run(svc, |o, m| apply(o, &c, m))
    }

    fn annotations(v: &Value) -> &serde_json::Map<String, Value> {
        v["metadata"]["annotations"].as_object().unwrap()
    }

    #[test]
    fn adds_ip_target_without_class_and_with_aws_classes() {
        for class in [
            None,
            Some("service.k8s.aws/nlb"),
            Some("eks.amazonaws.com/nlb"),
        ] {
            let svc = match class {
                Some(c) => with(lb(), &["spec", "loadBalancerClass"], json!(c)),
                None => lb(),
            };
            let (out, warnings, _) = run_with(&svc, "", &gated());
            assert_eq!(annotations(&out)[NLB_TARGET_TYPE], "ip", "{class:?}");
            assert!(warnings.is_empty(), "{warnings:?}");
        }
    }

    #[test]
    fn readiness_gate_label_missing_or_unknown_is_said() {
        let (_, warnings, _) = run_with(&lb(), "", &InMemory::default());
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains(
                "namespace shop lacks label elbv2.k8s.aws/pod-readiness-gate-inject=enabled"
            ),
            "{warnings:?}"
        );
        let (_, warnings, _) = run_with(&lb(), "", NO_CLUSTER);
        assert!(
            warnings[0].contains("not checked: no cluster access"),
            "{warnings:?}"
        );
        // Nothing set, nothing said.
        let owner = annotated(lb(), NLB_TARGET_TYPE, "ip");
        assert!(run_with(&owner, "", &InMemory::default()).1.is_empty());
    }

    #[test]
    fn other_classes_and_types_untouched() {
        let metallb = with(lb(), &["spec", "loadBalancerClass"], json!("metallb.io/l2"));
        for svc in [
            metallb,
            service(),
            with(service(), &["spec", "type"], json!("NodePort")),
        ] {
            assert_eq!(run_with(&svc, "", &gated()).2, 0);
        }
    }

    #[test]
    fn external_traffic_policy_local_is_left_alone_with_the_way_to_have_both() {
        let svc = with(lb(), &["spec", "externalTrafficPolicy"], json!("Local"));
        let (out, warnings, ops) = run_with(
            &svc,
            "service: {loadBalancer: {setType: true, crossZone: disabled}}",
            &gated(),
        );
        assert_eq!(ops, 0, "{out}");
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("client IP")
                && warnings[0].contains("preserve_client_ip.enabled=true"),
            "{warnings:?}"
        );
        // The owner who chose IP targets anyway is not second-guessed.
        let owner = annotated(svc, NLB_TARGET_TYPE, "ip");
        assert_eq!(run_with(&owner, "", &gated()), (owner.clone(), vec![], 0));
        // Cluster (the default) is patched as usual.
        let cluster = with(lb(), &["spec", "externalTrafficPolicy"], json!("Cluster"));
        assert_eq!(
            annotations(&run_with(&cluster, "", &gated()).0)[NLB_TARGET_TYPE],
            "ip"
        );
    }

    #[test]
    fn owner_choice_kept_and_instance_warned() {
        let svc = annotated(lb(), NLB_TARGET_TYPE, "instance");
        let (out, warnings, ops) = run_with(&svc, "", &gated());
        assert_eq!(ops, 0);
        assert_eq!(annotations(&out)[NLB_TARGET_TYPE], "instance");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("instance"), "{warnings:?}");
        let svc = annotated(lb(), LB_TYPE, "nlb-ip");
        assert_eq!(
            run_with(&svc, "", &gated()).2,
            0,
            "legacy nlb-ip is already ip mode"
        );
    }

    #[test]
    fn target_type_off() {
        assert_eq!(
            run_with(
                &lb(),
                "service: {loadBalancer: {targetType: off}}",
                &gated()
            )
            .2,
            0
        );
    }

    #[test]
    fn set_type_only_without_class_or_existing_type() {
        let y = "service: {loadBalancer: {setType: true}}";
        let (out, _, _) = run_with(&lb(), y, &gated());
        assert_eq!(annotations(&out)[LB_TYPE], "external");
        let classed = with(
            lb(),
            &["spec", "loadBalancerClass"],
            json!("service.k8s.aws/nlb"),
        );
        assert!(!annotations(&run_with(&classed, y, &gated()).0).contains_key(LB_TYPE));
        let typed = annotated(lb(), LB_TYPE, "nlb");
        assert_eq!(
            annotations(&run_with(&typed, y, &gated()).0)[LB_TYPE],
            "nlb"
        );
    }

    #[test]
    fn cross_zone_merge_keeps_attributes() {
        let y = "service: {loadBalancer: {crossZone: disabled}}";
        let (out, _, _) = run_with(&lb(), y, &gated());
        assert_eq!(
            annotations(&out)[LB_ATTRIBUTES],
            "load_balancing.cross_zone.enabled=false"
        );
        let svc = annotated(
            lb(),
            LB_ATTRIBUTES,
            "deletion_protection.enabled=true, access_logs.s3.enabled=false",
        );
        assert_eq!(
            annotations(&run_with(&svc, y, &gated()).0)[LB_ATTRIBUTES],
            "deletion_protection.enabled=true,access_logs.s3.enabled=false,load_balancing.cross_zone.enabled=false"
        );
        let svc = annotated(
            lb(),
            LB_ATTRIBUTES,
            "load_balancing.cross_zone.enabled=true",
        );
        assert_eq!(
            annotations(&run_with(&svc, y, &gated()).0)[LB_ATTRIBUTES],
            "load_balancing.cross_zone.enabled=true"
        );
    }

    #[test]
    fn the_dedicated_cross_zone_annotation_wins() {
        let svc = annotated(
            annotated(lb(), LB_CROSS_ZONE, "true"),
            LB_ATTRIBUTES,
            "deletion_protection.enabled=true",
        );
        let (out, warnings, _) = run_with(
            &svc,
            "service: {loadBalancer: {crossZone: disabled}}",
            &gated(),
        );
        assert_eq!(
            annotations(&out)[LB_ATTRIBUTES],
            "deletion_protection.enabled=true"
        );
        assert_eq!(
            annotations(&out)[NLB_TARGET_TYPE],
            "ip",
            "the rest still applies"
        );
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("owner chose"), "{warnings:?}");
    }
}
