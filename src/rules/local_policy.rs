//! `local-policy`: `internalTrafficPolicy: Local` only where it is safe.
//!
//! With Local, kube-proxy on a node without a ready endpoint of the Service
//! drops the traffic instead of forwarding it, and ignores topology hints
//! and `trafficDistribution`. That is right for node agents (a DaemonSet has
//! a pod on every node) and wrong almost everywhere else, where it fails
//! silently. On UPDATE the rule only looks at a change *to* Local, so
//! existing Services are never blocked by a later policy change.

use serde_json::Value;

use super::{ALLOW_LOCAL, Context, has_topology_setting, is_local, service_selector};
use crate::config::LocalPolicyMode;
use crate::lookups::Lookup;
use crate::object;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Deny with this message (HTTP-style status 403).
    Deny(String),
}

/// Checks a Service being created, or updated from `old`.
pub fn check(
    svc: &Value,
    old: Option<&Value>,
    ctx: &Context<'_>,
    warnings: &mut Vec<String>,
) -> Verdict {
    let mode = ctx.policy.config.service.local_policy;
    if mode == LocalPolicyMode::Off || !is_local(svc) || old.is_some_and(is_local) {
        return Verdict::Allow;
    }
    let name = format!("{}/{}", ctx.namespace, object::display_name(svc));
    if has_topology_setting(svc) {
        warnings.push(format!(
            "zonewise: Service {name}: internalTrafficPolicy: Local makes kube-proxy ignore \
             spec.trafficDistribution and topology annotations"
        ));
    }
    if object::annotation(svc, ALLOW_LOCAL).is_some_and(|reason| !reason.trim().is_empty()) {
        return Verdict::Allow;
    }
    let selector = service_selector(svc);
    let note = match ctx.lookups.daemonset_matching(ctx.namespace, &selector) {
        Lookup::Found(ds) => {
            if ds.restricted {
                warnings.push(format!(
                    "zonewise: Service {name} is backed by DaemonSet {}, whose node selection \
                     leaves some nodes without a local endpoint; traffic from those is dropped",
                    ds.name
                ));
            }
            return Verdict::Allow;
        }
        Lookup::NotFound => "",
        Lookup::Unavailable(reason) => reason,
    };
    match mode {
        LocalPolicyMode::Enforce => Verdict::Deny(deny_message(&name, note)),
        LocalPolicyMode::Warn => {
            warnings.push(format!(
                "zonewise: Service {name}: internalTrafficPolicy: Local drops traffic on nodes \
                 without a local endpoint; set {ALLOW_LOCAL}: \"<reason>\" if intended"
            ));
            Verdict::Allow
        }
        LocalPolicyMode::Off => Verdict::Allow,
    }
}

fn deny_message(name: &str, unavailable: &str) -> String {
    let mut msg = format!(
        "Service {name} sets internalTrafficPolicy: Local, so kube-proxy drops its traffic on \
         every node that has no ready endpoint of it, and ignores topology-aware routing. \
         Ways out: (1) remove internalTrafficPolicy (or set Cluster) and keep traffic in-zone \
         with spec.trafficDistribution: PreferClose; (2) select the pods of a DaemonSet in \
         this namespace, so every node has a local endpoint; (3) accept the risk with the \
         annotation {ALLOW_LOCAL}: \"<reason>\"."
    );
    if !unavailable.is_empty() {
        msg.push_str(&format!(" (DaemonSet check not possible: {unavailable}.)"));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policy;
    use crate::lookups::{DaemonSetEntry, DaemonSetFacts, InMemory, Lookups};
    use crate::rules::TOPOLOGY_MODE;
    use crate::rules::test_support::*;
    use serde_json::json;

    fn local() -> Value {
        with(
            service(),
            &["spec", "internalTrafficPolicy"],
            json!("Local"),
        )
    }

    fn check_with(
        svc: &Value,
        old: Option<&Value>,
        p: &Policy,
        l: &dyn Lookups,
    ) -> (Verdict, Vec<String>) {
        let mut w = Vec::new();
        let v = check(svc, old, &ctx(p, l), &mut w);
        (v, w)
    }

    fn agent_daemonset(restricted: bool) -> InMemory {
        InMemory::default().with_daemonset(
            "shop",
            DaemonSetEntry {
                labels: [("app".to_string(), "orders".to_string())].into(),
                facts: DaemonSetFacts {
                    name: "orders-agent".into(),
                    restricted,
                },
            },
        )
    }

    #[test]
    fn local_without_exception_is_denied_with_the_ways_out() {
        let (v, _) = check_with(&local(), None, &policy(""), NO_CLUSTER);
        let Verdict::Deny(msg) = v else {
            panic!("expected deny")
        };
        assert!(msg.contains("shop/orders"));
        assert!(msg.contains("internalTrafficPolicy: Local"));
        assert!(msg.contains("drops"));
        assert!(msg.contains("trafficDistribution: PreferClose"));
        assert!(msg.contains("DaemonSet"));
        assert!(msg.contains(ALLOW_LOCAL));
        assert!(
            msg.contains("no cluster access"),
            "says why the DaemonSet check was skipped"
        );
    }

    #[test]
    fn cluster_policy_and_default_are_allowed() {
        for svc in [
            service(),
            with(
                service(),
                &["spec", "internalTrafficPolicy"],
                json!("Cluster"),
            ),
        ] {
            assert_eq!(
                check_with(&svc, None, &policy(""), NO_CLUSTER),
                (Verdict::Allow, vec![])
            );
        }
    }

    #[test]
    fn allow_local_needs_a_reason() {
        let ok = annotated(
            local(),
            ALLOW_LOCAL,
            "node-local cache, agent on every node",
        );
        assert_eq!(
            check_with(&ok, None, &policy(""), NO_CLUSTER).0,
            Verdict::Allow
        );
        let blank = annotated(local(), ALLOW_LOCAL, "  ");
        assert!(matches!(
            check_with(&blank, None, &policy(""), NO_CLUSTER).0,
            Verdict::Deny(_)
        ));
    }

    #[test]
    fn daemonset_backed_service_is_allowed() {
        let (v, w) = check_with(&local(), None, &policy(""), &agent_daemonset(false));
        assert_eq!((v, w.len()), (Verdict::Allow, 0));
        let (v, w) = check_with(&local(), None, &policy(""), &agent_daemonset(true));
        assert_eq!(v, Verdict::Allow);
        assert!(w[0].contains("orders-agent"), "{w:?}");
        let (v, _) = check_with(&local(), None, &policy(""), &InMemory::default());
        let Verdict::Deny(msg) = v else {
            panic!("expected deny")
        };
        assert!(!msg.contains("not possible"), "the check ran: {msg}");
    }

    #[test]
    fn warn_and_off_modes() {
        let (v, w) = check_with(
            &local(),
            None,
            &policy("service: {localPolicy: warn}"),
            NO_CLUSTER,
        );
        assert_eq!(v, Verdict::Allow);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains(ALLOW_LOCAL));
        assert_eq!(
            check_with(
                &local(),
                None,
                &policy("service: {localPolicy: off}"),
                NO_CLUSTER
            ),
            (Verdict::Allow, vec![])
        );
    }

    #[test]
    fn update_only_when_turning_local() {
        let p = policy("");
        assert_eq!(
            check_with(&local(), Some(&local()), &p, NO_CLUSTER).0,
            Verdict::Allow
        );
        assert!(matches!(
            check_with(&local(), Some(&service()), &p, NO_CLUSTER).0,
            Verdict::Deny(_)
        ));
    }

    #[test]
    fn topology_setting_with_local_is_always_reported() {
        let svc = annotated(
            with(
                local(),
                &["spec", "trafficDistribution"],
                json!("PreferClose"),
            ),
            ALLOW_LOCAL,
            "per-node agent",
        );
        let (v, w) = check_with(&svc, None, &policy(""), NO_CLUSTER);
        assert_eq!(v, Verdict::Allow);
        assert!(w[0].contains("ignore"), "{w:?}");
        let svc = annotated(local(), TOPOLOGY_MODE, "Auto");
        let (v, w) = check_with(&svc, None, &policy(""), NO_CLUSTER);
        assert!(matches!(v, Verdict::Deny(_)));
        assert_eq!(w.len(), 1);
    }
}
