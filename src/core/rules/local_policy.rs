//! `local-policy`: `internalTrafficPolicy: Local` only where it is safe.
//!
//! With Local, kube-proxy on a node without a ready endpoint of the Service
//! drops the traffic instead of forwarding it, and ignores topology hints
//! and `trafficDistribution`. That is right for node agents (a DaemonSet has
//! a pod on every node) and wrong almost everywhere else, where it fails
//! silently. ExternalName and headless Services are not proxied by
//! kube-proxy, so nothing can be dropped there and they are exempt.
//!
//! From 1.34, `trafficDistribution: PreferSameNode` keeps traffic on the
//! node when it can and falls back instead of dropping: the safe form of
//! Local, offered first where the server accepts it, and what `convert`
//! mode replaces Local with. On UPDATE the rule only looks at a change
//! *to* Local, so existing Services are never blocked by a later policy.

use serde_json::{Value, json};

use super::{
    ALLOW_LOCAL, Action, Check, Context, Kind, Mutation, Rule, RuleSpec, SERVICE_ROUTING,
    has_topology_annotation, has_topology_setting, is_headless, is_local, read, service_selector,
    service_type,
};
use crate::core::config::LocalPolicyMode;
use crate::core::lookups::Lookup;
use crate::core::policy::Policy;
use crate::core::versions::{PREFER_SAME_NODE, RoutingMode};
use crate::core::warnings::Priority;

pub const SPEC: RuleSpec = RuleSpec {
    rule: Rule::LocalPolicy,
    kinds: &[Kind::Service],
    action: Action::Check(check),
    reads: &SERVICE_ROUTING,
    reads_old: &[read::<String>(&["spec", "internalTrafficPolicy"])],
};

/// Checks a Service being created, or updated from `old`.
pub fn check(svc: &Value, old: Option<&Value>, ctx: &Context<'_>, out: &mut Mutation<'_>) -> Check {
    let mode = ctx.policy.config.service.local_policy;
    if mode == LocalPolicyMode::Off
        || !is_local(svc)
        || old.is_some_and(is_local)
        || service_type(svc) == "ExternalName"
        || is_headless(svc)
    {
        return Check::Allow;
    }
    let name = format!(
        "{}/{}",
        ctx.namespace,
        crate::core::object::display_name(svc)
    );
    if has_topology_setting(svc) {
        out.warn(
            Priority::Normal,
            format!(
                "zonewise: Service {name}: internalTrafficPolicy: Local makes kube-proxy ignore \
                 spec.trafficDistribution and topology annotations"
            ),
        );
    }
    if crate::core::object::annotation(svc, ALLOW_LOCAL).is_some_and(|r| !r.trim().is_empty()) {
        return Check::Allow;
    }
    let selector = service_selector(svc);
    let unavailable = match ctx.lookups.daemonset_matching(ctx.namespace, &selector) {
        Lookup::Found(ds) => {
            if ds.restricted {
                out.warn(
                    Priority::High,
                    format!(
                        "zonewise: Service {name} is backed by DaemonSet {}, whose node selection \
                         leaves some nodes without a local endpoint; their traffic is dropped",
                        ds.name
                    ),
                );
            }
            return Check::Allow;
        }
        Lookup::NotFound => None,
        Lookup::Unavailable(reason) => Some(reason),
    };
    match mode {
        LocalPolicyMode::Off => Check::Allow,
        LocalPolicyMode::Warn => {
            out.warn(
                Priority::High,
                format!(
                    "zonewise: Service {name}: internalTrafficPolicy: Local drops traffic on nodes \
                     without a local endpoint; set {ALLOW_LOCAL}: \"<reason>\" if intended"
                ),
            );
            Check::Allow
        }
        LocalPolicyMode::Convert if ctx.can_patch && ctx.policy.features.prefer_same_node => {
            if has_topology_annotation(svc) {
                // The annotation takes precedence over trafficDistribution,
                // so the result would be zone routing, not node-local.
                return Check::Deny(deny_message(
                    &name,
                    ctx.policy,
                    unavailable,
                    Some(
                        "it also carries a topology annotation, which would override PreferSameNode",
                    ),
                ));
            }
            // Patch errors only arise on malformed objects, which the typed
            // check has already turned away.
            let converted = out
                .patch
                .set(&["spec", "internalTrafficPolicy"], json!("Cluster"))
                .and_then(|()| {
                    out.patch
                        .set(&["spec", "trafficDistribution"], json!(PREFER_SAME_NODE))
                });
            if converted.is_err() {
                return Check::Deny(deny_message(&name, ctx.policy, unavailable, None));
            }
            out.warn(
                Priority::High,
                format!(
                    "zonewise: Service {name}: internalTrafficPolicy: Local replaced with Cluster \
                     and trafficDistribution: PreferSameNode, which keeps traffic on the node but \
                     falls back instead of dropping it"
                ),
            );
            Check::Allow
        }
        LocalPolicyMode::Enforce | LocalPolicyMode::Convert => {
            let why_not = (mode == LocalPolicyMode::Convert).then_some(if ctx.can_patch {
                "localPolicy: convert needs PreferSameNode (Kubernetes 1.34+)"
            } else {
                "the validating webhook cannot convert it"
            });
            Check::Deny(deny_message(&name, ctx.policy, unavailable, why_not))
        }
    }
}

/// Why Local is refused, and the ways out that the API server of this
/// version accepts without a warning, safest first.
pub fn deny_message(
    name: &str,
    policy: &Policy,
    unavailable: Option<&str>,
    note: Option<&str>,
) -> String {
    let mut ways = Vec::new();
    match (policy.version, policy.features.prefer_same_node) {
        (_, true) => ways.push(format!(
            "replace it with spec.trafficDistribution: {PREFER_SAME_NODE}, which keeps traffic on \
             the node and falls back instead of dropping"
        )),
        (None, false) => ways.push(format!(
            "on Kubernetes 1.34 or later, replace it with spec.trafficDistribution: \
             {PREFER_SAME_NODE}, which keeps traffic on the node and falls back instead of dropping"
        )),
        (Some(_), false) => {}
    }
    ways.push(match policy.recommended_routing() {
        RoutingMode::Field(value) => format!(
            "remove it (or set Cluster) and keep traffic in-zone with spec.trafficDistribution: {value}"
        ),
        _ => "remove it (or set Cluster) and keep traffic in-zone with the annotation \
              service.kubernetes.io/topology-mode: Auto"
            .to_string(),
    });
    ways.push(
        "select the pods of a DaemonSet in this namespace, so every node has a local endpoint"
            .to_string(),
    );
    ways.push(format!(
        "accept the risk with the annotation {ALLOW_LOCAL}: \"<reason>\""
    ));
    let mut msg = format!(
        "Service {name} sets internalTrafficPolicy: Local, so kube-proxy drops its traffic on \
         every node that has no ready endpoint of it, and ignores topology-aware routing. Ways out:"
    );
    for (i, way) in ways.iter().enumerate() {
        msg.push_str(&format!(
            " ({}) {way}{}",
            i + 1,
            if i + 1 == ways.len() { "." } else { ";" }
        ));
    }
    if let Some(note) = note {
        msg.push_str(&format!(" (Not converted: {note}.)"));
    }
    if let Some(why) = unavailable {
        msg.push_str(&format!(" (DaemonSet check not possible: {why}.)"));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::admission::Operation;
    use crate::core::lookups::{DaemonSetEntry, DaemonSetFacts, InMemory, Lookups};
    use crate::core::policy::Environment;
    use crate::core::rules::TOPOLOGY_MODE;
    use crate::core::rules::test_support::*;
    use crate::core::versions::KubeVersion;

    fn local() -> Value {
        with(
            service(),
            &["spec", "internalTrafficPolicy"],
            json!("Local"),
        )
    }

    fn on(yaml: &str, minor: Option<u32>) -> Policy {
        policy_for(
            yaml,
            Environment {
                version_flag: minor.map(|m| KubeVersion::new(1, m)),
                ..Environment::default()
            },
        )
    }

    /// (verdict, warnings, patched object)
    fn check_with(
        svc: &Value,
        old: Option<&Value>,
        p: &Policy,
        l: &dyn Lookups,
        can_patch: bool,
    ) -> (Check, Vec<String>, Value) {
        let mut c = ctx(Kind::Service, p, l);
        c.can_patch = can_patch;
        if old.is_some() {
            c.operation = Operation::Update;
        }
        let mut m = Mutation::new(svc);
        let v = check(svc, old, &c, &mut m);
        let w = m.warnings.texts().map(str::to_string).collect();
        let mut out = svc.clone();
        json_patch::patch(&mut out, &m.patch.into_patch()).unwrap();
        (v, w, out)
    }

    fn verdict(svc: &Value, p: &Policy, l: &dyn Lookups) -> Check {
        check_with(svc, None, p, l, true).0
    }

    fn denial(svc: &Value, p: &Policy) -> String {
        match verdict(svc, p, NO_CLUSTER) {
            Check::Deny(m) => m,
            Check::Allow => panic!("expected a denial"),
        }
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
        let msg = denial(&local(), &policy(""));
        for needle in [
            "shop/orders",
            "internalTrafficPolicy: Local",
            "drops",
            "DaemonSet",
            ALLOW_LOCAL,
            "no cluster access",
        ] {
            assert!(msg.contains(needle), "{needle} missing: {msg}");
        }
    }

    #[test]
    fn the_ways_out_fit_the_version() {
        // 1.34+: PreferSameNode first, then PreferSameZone; never PreferClose.
        for minor in [34, 35, 36] {
            let msg = denial(&local(), &on("", Some(minor)));
            let node = msg.find("(1) replace it with spec.trafficDistribution: PreferSameNode");
            assert!(node.is_some(), "1.{minor}: {msg}");
            assert!(msg.contains("(2) remove it (or set Cluster) and keep traffic in-zone with spec.trafficDistribution: PreferSameZone"), "{msg}");
            assert!(!msg.contains("PreferClose"), "1.{minor}: {msg}");
        }
        // 1.31–1.33: no PreferSameNode, PreferClose.
        for minor in [31, 33] {
            let msg = denial(&local(), &on("", Some(minor)));
            assert!(!msg.contains("PreferSameNode"), "1.{minor}: {msg}");
            assert!(msg.contains("(1) remove it (or set Cluster) and keep traffic in-zone with spec.trafficDistribution: PreferClose"), "{msg}");
        }
        // 1.29–1.30: the annotation.
        for minor in [29, 30] {
            let msg = denial(&local(), &on("", Some(minor)));
            assert!(!msg.contains("trafficDistribution"), "1.{minor}: {msg}");
            assert!(msg.contains("topology-mode: Auto"), "{msg}");
        }
        // Unknown: says which version PreferSameNode needs.
        let msg = denial(&local(), &on("", None));
        assert!(msg.contains("on Kubernetes 1.34 or later, replace it with spec.trafficDistribution: PreferSameNode"), "{msg}");
        assert!(msg.contains("PreferClose"), "{msg}");
    }

    #[test]
    fn headless_and_external_name_services_are_exempt_without_a_word() {
        for svc in [
            with(local(), &["spec", "clusterIP"], json!("None")),
            with(local(), &["spec", "clusterIPs"], json!(["None"])),
            with(
                with(local(), &["spec", "type"], json!("ExternalName")),
                &["spec", "externalName"],
                json!("db.example.com"),
            ),
        ] {
            let svc = with(svc, &["spec", "trafficDistribution"], json!("PreferClose"));
            assert_eq!(
                check_with(&svc, None, &policy(""), NO_CLUSTER, true).0,
                Check::Allow
            );
            assert!(
                check_with(&svc, None, &policy(""), NO_CLUSTER, true)
                    .1
                    .is_empty()
            );
        }
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
            let (v, w, _) = check_with(&svc, None, &policy(""), NO_CLUSTER, true);
            assert_eq!((v, w.len()), (Check::Allow, 0));
        }
    }

    #[test]
    fn allow_local_needs_a_reason() {
        let ok = annotated(
            local(),
            ALLOW_LOCAL,
            "node-local cache, agent on every node",
        );
        assert_eq!(verdict(&ok, &policy(""), NO_CLUSTER), Check::Allow);
        let blank = annotated(local(), ALLOW_LOCAL, "  ");
        assert!(matches!(
            verdict(&blank, &policy(""), NO_CLUSTER),
            Check::Deny(_)
        ));
    }

    #[test]
    fn daemonset_backed_service_is_allowed() {
        let (v, w, _) = check_with(&local(), None, &policy(""), &agent_daemonset(false), true);
        assert_eq!((v, w.len()), (Check::Allow, 0));
        let (v, w, _) = check_with(&local(), None, &policy(""), &agent_daemonset(true), true);
        assert_eq!(v, Check::Allow);
        assert!(w[0].contains("orders-agent"), "{w:?}");
        let Check::Deny(msg) = verdict(&local(), &policy(""), &InMemory::default()) else {
            panic!("expected deny")
        };
        assert!(!msg.contains("not possible"), "the check ran: {msg}");
    }

    #[test]
    fn warn_and_off_modes() {
        let (v, w, _) = check_with(
            &local(),
            None,
            &policy("service: {localPolicy: warn}"),
            NO_CLUSTER,
            true,
        );
        assert_eq!(v, Check::Allow);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains(ALLOW_LOCAL));
        let (v, w, _) = check_with(
            &local(),
            None,
            &policy("service: {localPolicy: off}"),
            NO_CLUSTER,
            true,
        );
        assert_eq!((v, w.len()), (Check::Allow, 0));
    }

    #[test]
    fn convert_replaces_local_with_prefer_same_node_where_accepted() {
        let p = on("service: {localPolicy: convert}", Some(34));
        let (v, w, out) = check_with(&local(), None, &p, NO_CLUSTER, true);
        assert_eq!(v, Check::Allow);
        assert_eq!(out["spec"]["internalTrafficPolicy"], "Cluster");
        assert_eq!(out["spec"]["trafficDistribution"], "PreferSameNode");
        assert!(
            w.iter().any(|w| w.contains("replaced with Cluster")),
            "{w:?}"
        );
        // Converted: nothing more to say on a second look.
        let (v, w, again) = check_with(&out, None, &p, NO_CLUSTER, true);
        assert_eq!((v, w.len()), (Check::Allow, 0));
        assert_eq!(again, out);
        // The owner's trafficDistribution was ignored under Local anyway.
        let owned = with(
            local(),
            &["spec", "trafficDistribution"],
            json!("PreferClose"),
        );
        let (_, _, out) = check_with(&owned, None, &p, NO_CLUSTER, true);
        assert_eq!(out["spec"]["trafficDistribution"], "PreferSameNode");
    }

    #[test]
    fn convert_acts_as_enforce_where_it_cannot_convert() {
        let p33 = on("service: {localPolicy: convert}", Some(33));
        let (v, _, out) = check_with(&local(), None, &p33, NO_CLUSTER, true);
        let Check::Deny(msg) = v else {
            panic!("1.33 denies")
        };
        assert!(msg.contains("convert needs PreferSameNode"), "{msg}");
        assert_eq!(out, local(), "no patch with a denial");
        let p34 = on("service: {localPolicy: convert}", Some(34));
        let Check::Deny(msg) = check_with(&local(), None, &p34, NO_CLUSTER, false).0 else {
            panic!("/validate denies")
        };
        assert!(msg.contains("validating webhook cannot convert"), "{msg}");
        let hinted = annotated(local(), TOPOLOGY_MODE, "Auto");
        let Check::Deny(msg) = check_with(&hinted, None, &p34, NO_CLUSTER, true).0 else {
            panic!("annotation would override")
        };
        assert!(msg.contains("topology annotation"), "{msg}");
    }

    #[test]
    fn update_only_when_turning_local() {
        let p = policy("");
        assert_eq!(
            check_with(&local(), Some(&local()), &p, NO_CLUSTER, true).0,
            Check::Allow
        );
        assert!(matches!(
            check_with(&local(), Some(&service()), &p, NO_CLUSTER, true).0,
            Check::Deny(_)
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
        let (v, w, _) = check_with(&svc, None, &policy(""), NO_CLUSTER, true);
        assert_eq!(v, Check::Allow);
        assert!(w[0].contains("ignore"), "{w:?}");
        let svc = annotated(local(), TOPOLOGY_MODE, "Auto");
        let (v, w, _) = check_with(&svc, None, &policy(""), NO_CLUSTER, true);
        assert!(matches!(v, Check::Deny(_)));
        assert_eq!(w.len(), 1);
    }
}
