//! `zone-routing`: make kube-proxy prefer same-zone endpoints of a Service.
//!
//! Sets either `spec.trafficDistribution` or the
//! `service.kubernetes.io/topology-mode: Auto` annotation, never both: the
//! annotation takes precedence in the EndpointSlice controller, so setting
//! both would silently change which mechanism is in charge.

use serde_json::{Value, json};

use super::{Mutation, TOPOLOGY_MODE, has_selector, has_topology_setting, is_local, service_type};
use crate::config::RoutingMode;
use crate::object;
use crate::patch::PatchError;

pub fn apply(svc: &Value, mode: RoutingMode, out: &mut Mutation<'_>) -> Result<(), PatchError> {
    if mode == RoutingMode::Off || !eligible(svc) {
        return Ok(());
    }
    match mode {
        RoutingMode::Field(value) => out
            .patch
            .set(&["spec", "trafficDistribution"], json!(value)),
        RoutingMode::Annotation => out
            .patch
            .set(&["metadata", "annotations", TOPOLOGY_MODE], json!("Auto")),
        RoutingMode::Off => Ok(()),
    }
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

/// `clusterIP: None` (or `clusterIPs: [None]`): DNS returns pod IPs and
/// kube-proxy is not involved, so there is nothing to route.
fn is_headless(svc: &Value) -> bool {
    object::str_at(svc, &["spec", "clusterIP"]) == Some("None")
        || object::array_at(svc, &["spec", "clusterIPs"])
            .first()
            .and_then(Value::as_str)
            == Some("None")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::test_support::*;
    use crate::rules::{TOPOLOGY_HINTS, is_local};

    const PREFER_CLOSE: RoutingMode = RoutingMode::Field("PreferClose");

    fn run_mode(svc: &Value, mode: RoutingMode) -> (Value, usize) {
        let (out, warnings, ops) = run(svc, |o, m| apply(o, mode, m));
        assert!(warnings.is_empty());
        (out, ops)
    }

    #[test]
    fn sets_traffic_distribution_on_plain_service() {
        let (out, ops) = run_mode(&service(), PREFER_CLOSE);
        assert_eq!(ops, 1);
        assert_eq!(out["spec"]["trafficDistribution"], "PreferClose");
        assert!(out["metadata"].get("annotations").is_none());
    }

    #[test]
    fn prefer_same_zone_and_annotation_modes() {
        let (out, _) = run_mode(&service(), RoutingMode::Field("PreferSameZone"));
        assert_eq!(out["spec"]["trafficDistribution"], "PreferSameZone");

        let (out, ops) = run_mode(&service(), RoutingMode::Annotation);
        assert_eq!(ops, 2, "annotations object created, then the key");
        assert_eq!(out["metadata"]["annotations"][TOPOLOGY_MODE], "Auto");
        assert!(
            out["spec"].get("trafficDistribution").is_none(),
            "never both"
        );
    }

    #[test]
    fn off_does_nothing() {
        assert_eq!(run_mode(&service(), RoutingMode::Off).1, 0);
    }

    #[test]
    fn every_service_type_that_kube_proxy_routes() {
        for ty in ["ClusterIP", "NodePort", "LoadBalancer"] {
            let svc = with(service(), &["spec", "type"], json!(ty));
            assert_eq!(run_mode(&svc, PREFER_CLOSE).1, 1, "{ty}");
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
            for mode in [PREFER_CLOSE, RoutingMode::Annotation] {
                let mut m = Mutation::new(&svc);
                apply(&svc, mode, &mut m).unwrap();
                assert!(m.patch.is_empty(), "{why}: {:?}", m.patch.ops());
            }
        }
        // Sanity: the Local case really is Local.
        assert!(is_local(&with(
            service(),
            &["spec", "internalTrafficPolicy"],
            json!("Local")
        )));
    }

    #[test]
    fn explicit_cluster_policy_is_eligible_and_null_field_counts_as_unset() {
        let svc = with(
            service(),
            &["spec", "internalTrafficPolicy"],
            json!("Cluster"),
        );
        assert_eq!(run_mode(&svc, PREFER_CLOSE).1, 1);
        let svc = with(service(), &["spec", "trafficDistribution"], Value::Null);
        let (out, _) = run_mode(&svc, PREFER_CLOSE);
        assert_eq!(out["spec"]["trafficDistribution"], "PreferClose");
    }

    #[test]
    fn existing_annotations_are_kept() {
        let svc = annotated(service(), "team", "payments");
        let (out, ops) = run_mode(&svc, RoutingMode::Annotation);
        assert_eq!(ops, 1);
        assert_eq!(out["metadata"]["annotations"]["team"], "payments");
    }
}
