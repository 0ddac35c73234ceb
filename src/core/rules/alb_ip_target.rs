//! `alb-ip-target`: AWS Application Load Balancers send straight to pod IPs.
//!
//! The Ingress twin of `lb-ip-target`. An Ingress served by the AWS Load
//! Balancer Controller defaults to `instance` targets: the ALB sends to a
//! NodePort on any node and kube-proxy forwards from there, often into
//! another zone. `alb.ingress.kubernetes.io/target-type: ip` removes that
//! hop. Ingresses of other controllers are not touched.

use serde_json::Value;

use super::{Action, Context, Kind, Mutation, Rule, RuleSpec, read};
use crate::core::config::TargetType;
use crate::core::object;
use crate::core::patch::PatchError;
use crate::core::rules::lb_ip_target::prefer_ip_targets;

pub const ALB_TARGET_TYPE: &str = "alb.ingress.kubernetes.io/target-type";
/// The class annotation from before `spec.ingressClassName` (1.18); the
/// controller still honours it.
pub const LEGACY_CLASS: &str = "kubernetes.io/ingress.class";

pub const SPEC: RuleSpec = RuleSpec {
    rule: Rule::AlbIpTarget,
    kinds: &[Kind::Ingress],
    action: Action::Mutate(apply),
    reads: &[read::<String>(&["spec", "ingressClassName"])],
    reads_old: &[],
};

pub fn apply(ing: &Value, ctx: &Context<'_>, out: &mut Mutation<'_>) -> Result<(), PatchError> {
    let cfg = &ctx.policy.config.ingress;
    if cfg.target_type == TargetType::Off || !served_by_alb(ing, &cfg.alb_classes) {
        return Ok(());
    }
    prefer_ip_targets(ing, ALB_TARGET_TYPE, (ALB_TARGET_TYPE, "ALB"), ctx, out)
}

/// `spec.ingressClassName`, or else the legacy annotation, names an ALB
/// class. An Ingress with neither is left alone: the cluster's default
/// IngressClass decides, and zonewise cannot see which one that is.
fn served_by_alb(ing: &Value, classes: &[String]) -> bool {
    let class = object::str_at(ing, &["spec", "ingressClassName"])
        .or_else(|| object::annotation(ing, LEGACY_CLASS));
    class.is_some_and(|c| classes.iter().any(|a| a == c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::lookups::{InMemory, Lookups};
    use crate::core::rules::test_support::*;
    use serde_json::json;

    fn ingress(class: Option<&str>) -> Value {
        let mut v = json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "shop", "namespace": "shop"},
            "spec": {"rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}
        });
        if let Some(c) = class {
            v["spec"]["ingressClassName"] = json!(c);
        }
        v
    }

    fn run_with(ing: &Value, yaml: &str, lookups: &dyn Lookups) -> (Value, Vec<String>, usize) {
        let p = policy(yaml);
        let c = ctx(Kind::Ingress, &p, lookups);
        run(ing, |o, m| apply(o, &c, m))
    }

    fn gated() -> InMemory {
        InMemory::default().with_readiness_gate("shop")
    }

    #[test]
    fn alb_class_or_legacy_annotation_gets_ip_targets() {
        for ing in [
            ingress(Some("alb")),
            annotated(ingress(None), LEGACY_CLASS, "alb"),
        ] {
            let (out, warnings, _) = run_with(&ing, "", &gated());
            assert_eq!(out["metadata"]["annotations"][ALB_TARGET_TYPE], "ip");
            assert!(warnings.is_empty(), "{warnings:?}");
        }
        let (out, _, _) = run_with(
            &ingress(Some("internal-alb")),
            "ingress: {albClasses: [alb, internal-alb]}",
            &gated(),
        );
        assert_eq!(out["metadata"]["annotations"][ALB_TARGET_TYPE], "ip");
    }

    #[test]
    fn other_classes_and_no_class_are_untouched() {
        for ing in [
            ingress(Some("nginx")),
            ingress(None),
            annotated(ingress(None), LEGACY_CLASS, "nginx"),
            annotated(ingress(Some("nginx")), "unrelated", "alb"),
        ] {
            assert_eq!(run_with(&ing, "", &gated()), (ing.clone(), vec![], 0));
        }
        assert_eq!(
            run_with(
                &ingress(Some("alb")),
                "ingress: {targetType: off}",
                &gated()
            )
            .2,
            0
        );
    }

    #[test]
    fn explicit_instance_is_kept_with_a_warning() {
        let ing = annotated(ingress(Some("alb")), ALB_TARGET_TYPE, "instance");
        let (out, warnings, ops) = run_with(&ing, "", &gated());
        assert_eq!(ops, 0);
        assert_eq!(out, ing);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("instance") && warnings[0].contains("Ingress shop/shop"),
            "{warnings:?}"
        );
        let ip = annotated(ingress(Some("alb")), ALB_TARGET_TYPE, "ip");
        assert_eq!(run_with(&ip, "", &gated()).1.len(), 0);
    }

    #[test]
    fn missing_readiness_gate_label_is_said() {
        let (_, warnings, _) = run_with(&ingress(Some("alb")), "", &InMemory::default());
        assert!(
            warnings[0].contains("elbv2.k8s.aws/pod-readiness-gate-inject=enabled"),
            "{warnings:?}"
        );
    }
}
