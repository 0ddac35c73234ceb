//! `lb-ip-target`: AWS Network Load Balancers send straight to pod IPs.
//!
//! With `instance` targets (the AWS Load Balancer Controller's default for
//! `loadBalancerClass: service.k8s.aws/nlb`) the NLB sends to a NodePort on
//! any node, and kube-proxy then forwards to a pod that may sit in another
//! zone: a hidden cross-AZ hop on every connection. `ip` targets remove it.

use serde_json::{Value, json};

use super::{Mutation, service_type};
use crate::config::{CrossZone, LoadBalancerConfig, TargetType};
use crate::object;
use crate::patch::PatchError;

pub const NLB_TARGET_TYPE: &str = "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type";
pub const LB_TYPE: &str = "service.beta.kubernetes.io/aws-load-balancer-type";
pub const LB_ATTRIBUTES: &str = "service.beta.kubernetes.io/aws-load-balancer-attributes";
const CROSS_ZONE_ATTR: &str = "load_balancing.cross_zone.enabled";

pub fn apply(
    svc: &Value,
    cfg: &LoadBalancerConfig,
    out: &mut Mutation<'_>,
) -> Result<(), PatchError> {
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

    if cfg.target_type == TargetType::Ip {
        match object::annotation(svc, NLB_TARGET_TYPE) {
            // The deprecated `nlb-ip` type already means IP targets.
            None if object::annotation(svc, LB_TYPE) == Some("nlb-ip") => {}
            None => out
                .patch
                .set(&["metadata", "annotations", NLB_TARGET_TYPE], json!("ip"))?,
            Some(v) if v.trim().eq_ignore_ascii_case("instance") => out.warnings.push(format!(
                "zonewise: Service {} keeps {NLB_TARGET_TYPE}: instance; NLB traffic then \
                 takes a NodePort hop that can cross zones (ip avoids it)",
                object::display_name(svc)
            )),
            Some(_) => {}
        }
    }

    // Without a class, `external` hands the Service from the in-tree cloud
    // provider to the AWS Load Balancer Controller; with a class it is moot.
    if cfg.set_type && class.is_none() && !object::has_annotation(svc, LB_TYPE) {
        out.patch
            .set(&["metadata", "annotations", LB_TYPE], json!("external"))?;
    }

    if cfg.cross_zone == CrossZone::Disabled {
        let current = object::annotation(svc, LB_ATTRIBUTES).unwrap_or("");
        if let Some(merged) = merge_cross_zone_off(current) {
            out.patch
                .set(&["metadata", "annotations", LB_ATTRIBUTES], json!(merged))?;
        }
    }
    Ok(())
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
    use crate::rules::test_support::*;

    fn lb() -> Value {
        with(service(), &["spec", "type"], json!("LoadBalancer"))
    }

    fn cfg(yaml: &str) -> LoadBalancerConfig {
        policy(yaml).config.service.load_balancer
    }

    fn run_cfg(svc: &Value, c: &LoadBalancerConfig) -> (Value, Vec<String>, usize) {
        run(svc, |o, m| apply(o, c, m))
    }

    fn annotations(v: &Value) -> &serde_json::Map<String, Value> {
        v["metadata"]["annotations"].as_object().unwrap()
    }

    #[test]
    fn adds_ip_target_without_class_and_with_aws_classes() {
        let default = cfg("");
        for class in [
            None,
            Some("service.k8s.aws/nlb"),
            Some("eks.amazonaws.com/nlb"),
        ] {
            let svc = match class {
                Some(c) => with(lb(), &["spec", "loadBalancerClass"], json!(c)),
                None => lb(),
            };
            let (out, warnings, _) = run_cfg(&svc, &default);
            assert_eq!(annotations(&out)[NLB_TARGET_TYPE], "ip", "{class:?}");
            assert!(warnings.is_empty());
        }
    }

    #[test]
    fn other_classes_and_types_untouched() {
        let default = cfg("");
        let metallb = with(lb(), &["spec", "loadBalancerClass"], json!("metallb.io/l2"));
        for svc in [
            metallb,
            service(),
            with(service(), &["spec", "type"], json!("NodePort")),
        ] {
            assert_eq!(run_cfg(&svc, &default).2, 0);
        }
    }

    #[test]
    fn owner_choice_kept_and_instance_warned() {
        let default = cfg("");
        let svc = annotated(lb(), NLB_TARGET_TYPE, "instance");
        let (out, warnings, ops) = run_cfg(&svc, &default);
        assert_eq!(ops, 0);
        assert_eq!(annotations(&out)[NLB_TARGET_TYPE], "instance");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("instance"), "{warnings:?}");

        let svc = annotated(lb(), NLB_TARGET_TYPE, "ip");
        let (_, warnings, ops) = run_cfg(&svc, &default);
        assert_eq!((ops, warnings.len()), (0, 0));

        let svc = annotated(lb(), LB_TYPE, "nlb-ip");
        assert_eq!(
            run_cfg(&svc, &default).2,
            0,
            "legacy nlb-ip is already ip mode"
        );
    }

    #[test]
    fn target_type_off() {
        assert_eq!(
            run_cfg(&lb(), &cfg("service: {loadBalancer: {targetType: off}}")).2,
            0
        );
    }

    #[test]
    fn set_type_only_without_class_or_existing_type() {
        let c = cfg("service: {loadBalancer: {setType: true}}");
        let (out, _, _) = run_cfg(&lb(), &c);
        assert_eq!(annotations(&out)[LB_TYPE], "external");

        let classed = with(
            lb(),
            &["spec", "loadBalancerClass"],
            json!("service.k8s.aws/nlb"),
        );
        let (out, _, _) = run_cfg(&classed, &c);
        assert!(!annotations(&out).contains_key(LB_TYPE));

        let typed = annotated(lb(), LB_TYPE, "nlb");
        let (out, _, _) = run_cfg(&typed, &c);
        assert_eq!(annotations(&out)[LB_TYPE], "nlb");
    }

    #[test]
    fn cross_zone_merge_keeps_attributes() {
        let c = cfg("service: {loadBalancer: {crossZone: disabled}}");
        let (out, _, _) = run_cfg(&lb(), &c);
        assert_eq!(
            annotations(&out)[LB_ATTRIBUTES],
            "load_balancing.cross_zone.enabled=false"
        );

        let svc = annotated(
            lb(),
            LB_ATTRIBUTES,
            "deletion_protection.enabled=true, access_logs.s3.enabled=false",
        );
        let (out, _, _) = run_cfg(&svc, &c);
        assert_eq!(
            annotations(&out)[LB_ATTRIBUTES],
            "deletion_protection.enabled=true,access_logs.s3.enabled=false,load_balancing.cross_zone.enabled=false"
        );

        let svc = annotated(
            lb(),
            LB_ATTRIBUTES,
            "load_balancing.cross_zone.enabled=true",
        );
        let (out, _, _) = run_cfg(&svc, &c);
        assert_eq!(
            annotations(&out)[LB_ATTRIBUTES],
            "load_balancing.cross_zone.enabled=true"
        );
    }
}
