//! `zone-routing`: make kube-proxy prefer same-zone endpoints of a Service.
//!
//! Sets either `spec.trafficDistribution` or the
//! `service.kubernetes.io/topology-mode: Auto` annotation, never both: the
//! annotation takes precedence in the EndpointSlice controller, so setting
//! both would silently change which mechanism is in charge. Which one, and
//! which value, follows the API server's version
//! ([`crate::core::versions::resolve_routing`]): a patch of zonewise's never
//! makes the API server reject the object or warn about it.

use serde_json::{Value, json};

use super::{
    Action, Context, Kind, Mutation, Rule, RuleSpec, SERVICE_ROUTING, TOPOLOGY_MODE, has_selector,
    has_topology_setting, is_headless, is_local, service_type,
};
use crate::core::patch::PatchError;
use crate::core::versions::RoutingMode;
use crate::core::warnings::Priority;

pub const SPEC: RuleSpec = RuleSpec {
    rule: Rule::ZoneRouting,
    kinds: &[Kind::Service],
    action: Action::Mutate(apply),
    reads: &SERVICE_ROUTING,
    reads_old: &[],
};

pub fn apply(svc: &Value, ctx: &Context<'_>, out: &mut Mutation<'_>) -> Result<(), PatchError> {
    let routing = &ctx.policy.routing;
    if routing.mode == RoutingMode::Off || !eligible(svc) {
        return Ok(());
    }
    match routing.mode {
        RoutingMode::Field(value) => out
            .patch
            .set(&["spec", "trafficDistribution"], json!(value))?,
        RoutingMode::Annotation => out
            .patch
            .set(&["metadata", "annotations", TOPOLOGY_MODE], json!("Auto"))?,
        RoutingMode::Off => {}
    }
    if routing.substituted
        && let Some(note) = routing.note()
    {
        out.warn(Priority::High, format!("zonewise: {note}"));
    }
    Ok(())
}

/// Routing only matters for Services kube-proxy load-balances over
/// selected pods; the owner's own topology choice always wins.
fn eligible(svc: &Value) -> bool {
    matches!(service_type(svc), "ClusterIP" | "NodePort" | "LoadBalancer")
        && has_selector(svc)
        && !is_headless(svc)
        && !is_local(svc)
        && !has_topology_setting(svc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::policy::Environment;
    use crate::core::rules::TOPOLOGY_HINTS;
    use crate::core::rules::test_support::*;
    use crate::core::versions::KubeVersion;

    fn run_yaml(svc: &Value, yaml: &str, minor: Option<u32>) -> (Value, Vec<String>, usize) {
        let env = Environment {
            version_flag: minor.map(|m| KubeVersion::new(1, m)),
            ..Environment::default()
        };
        let p = policy_for(yaml, env);
        let c = ctx(Kind::Service, &p, NO_CLUSTER);
        run(svc, |o, m| apply(o, &c, m))
    }

    #[test]
    fn default_is_prefer_close_without_a_version() {
        let (out, warnings, ops) = run_yaml(&service(), "", None);
        assert_eq!(ops, 1);
        assert_eq!(out["spec"]["trafficDistribution"], "PreferClose");
        assert!(out["metadata"].get("annotations").is_none());
        assert!(warnings.is_empty());
    }

    #[test]
    fn auto_follows_the_version_and_never_warns() {
        for (minor, field, annotation) in [
            (29, None, Some("Auto")),
            (30, None, Some("Auto")),
            (31, Some("PreferClose"), None),
            (33, Some("PreferClose"), None),
            (34, Some("PreferSameZone"), None),
            (36, Some("PreferSameZone"), None),
        ] {
            let (out, warnings, _) = run_yaml(&service(), "service: {routing: auto}", Some(minor));
            assert_eq!(
                out["spec"]["trafficDistribution"].as_str(),
                field,
                "1.{minor}"
            );
            assert_eq!(
                out["metadata"]["annotations"][TOPOLOGY_MODE].as_str(),
                annotation,
                "1.{minor}: never both"
            );
            assert!(warnings.is_empty(), "1.{minor}: {warnings:?}");
        }
    }

    #[test]
    fn a_value_the_server_rejects_is_replaced_with_a_warning() {
        let (out, warnings, _) =
            run_yaml(&service(), "service: {routing: PreferSameZone}", Some(33));
        assert_eq!(out["spec"]["trafficDistribution"], "PreferClose");
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("not accepted by Kubernetes 1.33"),
            "{warnings:?}"
        );
        let (out, warnings, _) = run_yaml(&service(), "service: {routing: PreferClose}", Some(30));
        assert_eq!(out["metadata"]["annotations"][TOPOLOGY_MODE], "Auto");
        assert!(out["spec"].get("trafficDistribution").is_none());
        assert_eq!(warnings.len(), 1);
        // Kept as asked on 1.35+ (deprecated, which check-config says).
        let (out, warnings, _) = run_yaml(&service(), "service: {routing: PreferClose}", Some(36));
        assert_eq!(out["spec"]["trafficDistribution"], "PreferClose");
        assert!(warnings.is_empty());
    }

    #[test]
    fn annotation_mode_and_off() {
        let (out, _, ops) = run_yaml(&service(), "service: {routing: annotation}", Some(36));
        assert_eq!(ops, 2, "annotations object created, then the key");
        assert_eq!(out["metadata"]["annotations"][TOPOLOGY_MODE], "Auto");
        assert!(
            out["spec"].get("trafficDistribution").is_none(),
            "never both"
        );
        assert_eq!(run_yaml(&service(), "service: {routing: off}", None).2, 0);
    }

    #[test]
    fn every_service_type_that_kube_proxy_routes() {
        for ty in ["ClusterIP", "NodePort", "LoadBalancer"] {
            let svc = with(service(), &["spec", "type"], json!(ty));
            assert_eq!(run_yaml(&svc, "", None).2, 1, "{ty}");
        }
    }

    #[test]
    fn ineligible_services_are_untouched() {
        let cases = [
            (
                "ExternalName",
                with(service(), &["spec", "type"], json!("ExternalName")),
            ),
            (
                "no selector",
                with(service(), &["spec", "selector"], Value::Null),
            ),
            (
                "empty selector",
                with(service(), &["spec", "selector"], json!({})),
            ),
            (
                "headless",
                with(service(), &["spec", "clusterIP"], json!("None")),
            ),
            (
                "headless clusterIPs",
                with(service(), &["spec", "clusterIPs"], json!(["None"])),
            ),
            (
                "Local",
                with(
                    service(),
                    &["spec", "internalTrafficPolicy"],
                    json!("Local"),
                ),
            ),
            (
                "owner set field",
                with(
                    service(),
                    &["spec", "trafficDistribution"],
                    json!("PreferSameNode"),
                ),
            ),
            (
                "owner set topology-mode",
                annotated(service(), TOPOLOGY_MODE, "Disabled"),
            ),
            (
                "owner set legacy hints",
                annotated(service(), TOPOLOGY_HINTS, "auto"),
            ),
        ];
        for (why, svc) in cases {
            for yaml in ["", "service: {routing: annotation}"] {
                assert_eq!(run_yaml(&svc, yaml, Some(34)).2, 0, "{why}");
            }
        }
    }

    #[test]
    fn explicit_cluster_policy_is_eligible_and_null_field_counts_as_unset() {
        let svc = with(
            service(),
            &["spec", "internalTrafficPolicy"],
            json!("Cluster"),
        );
        assert_eq!(run_yaml(&svc, "", None).2, 1);
        let svc = with(service(), &["spec", "trafficDistribution"], Value::Null);
        let (out, _, _) = run_yaml(&svc, "", None);
        assert_eq!(out["spec"]["trafficDistribution"], "PreferClose");
    }

    #[test]
    fn existing_annotations_are_kept() {
        let svc = annotated(service(), "team", "payments");
        let (out, _, ops) = run_yaml(&svc, "service: {routing: annotation}", None);
        assert_eq!(ops, 1);
        assert_eq!(out["metadata"]["annotations"]["team"], "payments");
    }
}
