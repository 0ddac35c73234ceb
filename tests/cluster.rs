//! Cluster awareness without a cluster: the fake API server
//! (`common::fake_api`) speaks the Kubernetes list/watch protocol
//! (real-shaped lists and watch events, metadata-only Nodes and Namespaces,
//! dropped watches, `410 Gone`), a real `kube::Client` reaches it through a
//! kubeconfig, and reviews sent to the real zonewise server show what the
//! cache resolved.

mod common;

use std::time::Duration;

use common::fake_api::*;
use common::*;
use serde_json::{Value, json};
use zonewise::cluster::Scope;
use zonewise::server::ClusterOptions;

// ------------------------------------------------------------------ helpers

async fn zonewise_with(
    fake: &FakeApi,
    scope: Scope,
    config: &str,
) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config).unwrap();
    let kubeconfig = fake.kubeconfig.clone();
    let server = TestServer::start_with(move |o| {
        o.config = Some(config_path);
        o.cluster = ClusterOptions {
            enabled: true,
            kubeconfig: Some(kubeconfig),
            scope,
            sync_timeout: Duration::from_secs(10),
        };
    })
    .await;
    let addr = server.metrics_addr;
    eventually(
        "readiness after the initial lists",
        Duration::from_secs(10),
        async || plain_get(addr, "/readyz").await.0 == 200,
    )
    .await;
    (server, dir)
}

fn review(kind: &str, object: Value, ns: &str) -> Vec<u8> {
    let (group, version) = match kind {
        "Deployment" | "StatefulSet" => ("apps", "v1"),
        _ => ("", "v1"),
    };
    serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "e911857d-c318-11e8-bbad-025000000001",
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": format!("{}s", kind.to_lowercase())},
        "namespace": ns, "name": object["metadata"]["name"], "operation": "CREATE",
        "userInfo": {"username": "admin"}, "object": object, "oldObject": null, "dryRun": false}}))
    .unwrap()
}

fn caller(calls: &str) -> Vec<u8> {
    review(
        "Deployment",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "annotations": {"zonewise.io/calls": calls}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": "web:1"}]}}}}),
        "shop",
    )
}

/// The patched object for a review.
fn patched(request: &[u8], answer: &Answer) -> Value {
    let req: Value = serde_json::from_slice(request).unwrap();
    let mut obj = req["request"]["object"].clone();
    if let Some(p) = &answer.patch {
        json_patch::patch(&mut obj, p).unwrap();
    }
    obj
}

fn affinity(obj: &Value) -> &Value {
    &obj["spec"]["template"]["spec"]["affinity"]["podAffinity"]
}

fn preferred_selector(obj: &Value, i: usize) -> &Value {
    &affinity(obj)["preferredDuringSchedulingIgnoredDuringExecution"][i]["podAffinityTerm"]["labelSelector"]
        ["matchLabels"]
}

// -------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callees_daemonsets_and_version_resolve_from_the_cache() {
    let fake = FakeApi::start("1", "34").await;
    fake.apply(
        "services",
        service(
            "shop",
            "orders",
            json!({"app.kubernetes.io/name": "orders"}),
            false,
        ),
    );
    fake.apply(
        "services",
        service("shop", "cache", json!({"app": "node-cache"}), true),
    );
    fake.apply(
        "services",
        service("billing", "payments", json!({"app": "pay"}), false),
    );
    fake.apply("services", service("shop", "external-db", json!({}), false));
    fake.apply(
        "daemonsets",
        daemonset("shop", "node-cache", json!({"app": "node-cache"}), None),
    );
    fake.apply(
        "daemonsets",
        daemonset(
            "shop",
            "gpu-cache",
            json!({"app": "gpu-cache"}),
            Some(json!({"gpu": "true"})),
        ),
    );
    let (server, _dir) = zonewise_with(&fake, Scope::All, "service: {routing: auto}\n").await;
    let requests_after_sync = fake.requests().len();
    let mut c = server.h1().await;

    // call-affinity: selectors from the cluster; the Local callee is
    // required on the node; cross-namespace callee gets `namespaces`.
    let req = caller("orders, cache, payments.billing");
    let a = c.review(&req).await;
    let obj = patched(&req, &a);
    assert_eq!(
        *preferred_selector(&obj, 0),
        json!({"app.kubernetes.io/name": "orders"})
    );
    assert_eq!(*preferred_selector(&obj, 1), json!({"app": "pay"}));
    assert_eq!(
        affinity(&obj)["preferredDuringSchedulingIgnoredDuringExecution"][1]["podAffinityTerm"]["namespaces"],
        json!(["billing"])
    );
    assert_eq!(
        affinity(&obj)["requiredDuringSchedulingIgnoredDuringExecution"],
        json!([{"labelSelector": {"matchLabels": {"app": "node-cache"}}, "topologyKey": "kubernetes.io/hostname"}])
    );
    assert_eq!(
        a.warnings.len(),
        1,
        "only the Local explanation: {:?}",
        a.warnings
    );
    assert!(a.warnings[0].contains("shop/cache") && a.warnings[0].contains("Local"));

    // A callee without a selector is skipped with a warning.
    let a = c.review(&caller("external-db")).await;
    assert!(
        a.warnings
            .iter()
            .any(|w| w.contains("external-db") && w.contains("no selector")),
        "{:?}",
        a.warnings
    );

    // local-policy: DaemonSet-backed Local Services are allowed.
    let local = |name: &str, app: &str| {
        review(
            "Service",
            service("shop", name, json!({"app": app}), true),
            "shop",
        )
    };
    let a = c.review(&local("node-cache", "node-cache")).await;
    assert!(a.allowed && a.warnings.is_empty(), "{a:?}");
    let a = c.review(&local("gpu-cache", "gpu-cache")).await;
    assert!(a.allowed);
    assert!(
        a.warnings.iter().any(|w| w.contains("DaemonSet gpu-cache")),
        "{:?}",
        a.warnings
    );
    let a = c.review(&local("redis", "redis")).await;
    assert!(!a.allowed);
    assert!(
        !a.message.unwrap().contains("not possible"),
        "the DaemonSet check ran"
    );

    // routing: auto on 1.34 → PreferSameZone.
    let req = fixture("svc-clusterip");
    let obj = patched(&req, &c.review(&req).await);
    assert_eq!(obj["spec"]["trafficDistribution"], "PreferSameZone");

    // None of this called the API server.
    assert_eq!(
        fake.requests().len(),
        requests_after_sync,
        "{:?}",
        fake.requests()
    );
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, r#"zonewise_cache_objects{kind="Service"}"#),
        4.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"zonewise_cache_objects{kind="DaemonSet"}"#),
        2.0
    );
    assert!(
        m.contains(r#"zonewise_cache_last_sync_age_seconds{kind="Service"}"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_drops_and_410_relists_keep_the_cache_current() {
    let fake = FakeApi::start("1", "33").await;
    fake.apply(
        "services",
        service("shop", "orders", json!({"app": "orders-v1"}), false),
    );
    let (server, _dir) = zonewise_with(&fake, Scope::All, "").await;
    let mut c = server.h1().await;
    eventually("both watches open", Duration::from_secs(5), async || {
        fake.open_watches() == 4
    })
    .await;
    let selector_of_orders = async |c: &mut Client| {
        let req = caller("orders");
        let a = c.review(&req).await;
        preferred_selector(&patched(&req, &a), 0).clone()
    };
    assert_eq!(
        selector_of_orders(&mut c).await,
        json!({"app": "orders-v1"})
    );

    // A watch event.
    fake.apply(
        "services",
        service("shop", "orders", json!({"app": "orders-v2"}), false),
    );
    eventually(
        "the MODIFIED event to apply",
        Duration::from_secs(5),
        async || selector_of_orders(&mut c).await == json!({"app": "orders-v2"}),
    )
    .await;

    // The watch drops: the last known state keeps serving, the client
    // re-watches, and later events arrive.
    fake.drop_watches();
    assert_eq!(
        selector_of_orders(&mut c).await,
        json!({"app": "orders-v2"})
    );
    eventually(
        "the watches to reconnect",
        Duration::from_secs(10),
        async || fake.open_watches() == 4,
    )
    .await;
    fake.apply(
        "services",
        service("shop", "stock", json!({"app": "stock"}), false),
    );
    eventually(
        "the ADDED event after reconnect",
        Duration::from_secs(5),
        async || {
            let a = c.review(&caller("stock")).await;
            a.warnings.is_empty()
        },
    )
    .await;

    // Changes missed while disconnected, then 410 Gone: the client relists
    // and the cache is replaced whole (stock deleted, orders changed).
    fake.apply_silently(
        "services",
        service("shop", "orders", json!({"app": "orders-v3"}), false),
    );
    fake.delete_silently("services", "shop", "stock");
    fake.expire_watches();
    eventually(
        "the relist after 410",
        Duration::from_secs(10),
        async || selector_of_orders(&mut c).await == json!({"app": "orders-v3"}),
    )
    .await;
    let a = c.review(&caller("stock")).await;
    assert!(
        a.warnings
            .iter()
            .any(|w| w.contains("shop/stock") && w.contains("not found")),
        "{:?}",
        a.warnings
    );
    let m = server.metrics().await;
    assert!(
        metric(&m, r#"zonewise_cache_watch_restarts_total{kind="Service"}"#) >= 1.0,
        "{m}"
    );
    assert_eq!(metric(&m, r#"zonewise_cache_objects{kind="Service"}"#), 1.0);
    assert!(metric(&m, r#"zonewise_lookup_fallbacks_total{reason="not found"}"#) >= 1.0);
}

/// What zonewise answers on an API server of each supported version: the
/// routing value it sets (never one the server rejects or warns about,
/// unless the operator asked for it), the warning when it replaced a
/// configured value, and the ways out it offers in a Local denial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_supported_version_gets_values_it_accepts() {
    // (minor reported, auto, PreferSameZone configured, PreferClose configured)
    let rows = [
        ("29", "annotation", "annotation", "annotation"),
        ("31", "PreferClose", "PreferClose", "PreferClose"),
        ("33", "PreferClose", "PreferClose", "PreferClose"),
        ("34", "PreferSameZone", "PreferSameZone", "PreferClose"),
        ("35+", "PreferSameZone", "PreferSameZone", "PreferClose"),
        ("36", "PreferSameZone", "PreferSameZone", "PreferClose"),
        ("37", "PreferSameZone", "PreferSameZone", "PreferClose"),
        // Newer than the newest known: answered as 1.37, no warning.
        ("38", "PreferSameZone", "PreferSameZone", "PreferClose"),
    ];
    for (minor, auto, same_zone, close) in rows {
        let fake = FakeApi::start("1", minor).await;
        let n: u32 = minor.trim_end_matches('+').parse().unwrap();
        for (config, want, substituted) in [
            ("", auto, false),
            ("service: {routing: PreferSameZone}", same_zone, n < 34),
            ("service: {routing: PreferClose}", close, n < 31),
        ] {
            let (server, _dir) = zonewise_with(&fake, Scope::All, config).await;
            let mut c = server.h1().await;
            let req = fixture("svc-clusterip");
            let a = c.review(&req).await;
            let obj = patched(&req, &a);
            let set = match (
                obj["spec"]["trafficDistribution"].as_str(),
                obj["metadata"]["annotations"]["service.kubernetes.io/topology-mode"].as_str(),
            ) {
                (Some(v), None) => v.to_string(),
                (None, Some("Auto")) => "annotation".to_string(),
                other => panic!("1.{minor} {config:?}: {other:?}"),
            };
            assert_eq!(set, want, "1.{minor} {config:?}");
            if substituted {
                assert!(
                    a.warnings
                        .iter()
                        .any(|w| w.contains(&format!("not accepted by Kubernetes 1.{n}"))),
                    "1.{minor} {config:?}: {:?}",
                    a.warnings
                );
            } else {
                assert!(
                    a.warnings.is_empty(),
                    "1.{minor} {config:?}: {:?}",
                    a.warnings
                );
            }
            let m = server.metrics().await;
            assert_eq!(
                metric(&m, "zonewise_routing_substitutions_total") > 0.0,
                substituted,
                "1.{minor} {config:?}"
            );
            assert_eq!(
                metric(&m, "zonewise_version_beyond_newest_total") > 0.0,
                n > 37,
                "1.{minor}"
            );
            // The Local denial offers what this server takes.
            let local = review(
                "Service",
                service("shop", "cache", json!({"app": "cache"}), true),
                "shop",
            );
            let denial = c.review(&local).await.message.unwrap();
            assert_eq!(
                denial.contains("PreferSameNode"),
                n >= 34,
                "1.{minor}: {denial}"
            );
            assert_eq!(
                denial.contains("PreferClose"),
                (31..34).contains(&n),
                "1.{minor}: {denial}"
            );
            assert_eq!(
                denial.contains("topology-mode: Auto"),
                n < 31,
                "1.{minor}: {denial}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_api_server_means_degraded_not_stuck() {
    let fake = FakeApi::start("1", "34").await;
    fake.state.lock().unwrap().hang_lists = true;
    let kubeconfig = fake.kubeconfig.clone();
    let server = TestServer::start_with(move |o| {
        o.cluster = ClusterOptions {
            enabled: true,
            kubeconfig: Some(kubeconfig),
            scope: Scope::All,
            sync_timeout: Duration::from_millis(500),
        };
    })
    .await;
    let (status, body) = plain_get(server.metrics_addr, "/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: cluster cache not synced\n")
    );
    let addr = server.metrics_addr;
    eventually(
        "degraded readiness after the bounded wait",
        Duration::from_secs(3),
        async || plain_get(addr, "/readyz").await.0 == 200,
    )
    .await;
    let a = server.h1().await.review(&caller("orders")).await;
    assert!(
        a.warnings
            .iter()
            .any(|w| w.contains("cluster cache not synced")),
        "{:?}",
        a.warnings
    );
    let m = server.metrics().await;
    assert!(
        metric(
            &m,
            r#"zonewise_lookup_fallbacks_total{reason="cluster cache not synced"}"#
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_scope_watches_only_opted_in_namespaces() {
    let fake = FakeApi::start("1", "34").await;
    fake.apply(
        "namespaces",
        namespace("shop", &[("zonewise.io/enabled", "true")]),
    );
    fake.apply("namespaces", namespace("billing", &[]));
    fake.apply(
        "services",
        service("shop", "orders", json!({"app": "orders"}), false),
    );
    fake.apply(
        "services",
        service("billing", "payments", json!({"app": "pay"}), false),
    );
    let (server, _dir) = zonewise_with(&fake, Scope::Labelled, "").await;
    let mut c = server.h1().await;

    let req = caller("orders, payments.billing");
    let a = c.review(&req).await;
    assert_eq!(
        *preferred_selector(&patched(&req, &a), 1),
        json!({"app": "payments"}),
        "fallback label"
    );
    assert!(
        a.warnings
            .iter()
            .any(|w| w.contains("billing/payments") && w.contains("not watched")),
        "{:?}",
        a.warnings
    );
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.contains("Some(\"billing\")")),
        "billing not listed"
    );

    // Opting billing in starts its watches.
    fake.apply(
        "namespaces",
        namespace("billing", &[("zonewise.io/enabled", "true")]),
    );
    eventually(
        "billing to be watched",
        Duration::from_secs(10),
        async || {
            let a = c.review(&req).await;
            *preferred_selector(&patched(&req, &a), 1) == json!({"app": "pay"})
        },
    )
    .await;

    // Opting out forgets it again.
    fake.apply("namespaces", namespace("billing", &[]));
    eventually(
        "billing to be forgotten",
        Duration::from_secs(10),
        async || {
            let a = c.review(&req).await;
            a.warnings.iter().any(|w| w.contains("not watched"))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_is_read_again_when_a_watch_reconnects() {
    let fake = FakeApi::start("1", "33").await;
    let (server, _dir) = zonewise_with(&fake, Scope::All, "service: {routing: auto}\n").await;
    let mut c = server.h1().await;
    let routing = async |c: &mut Client| {
        let req = fixture("svc-clusterip");
        patched(&req, &c.review(&req).await)["spec"]["trafficDistribution"].clone()
    };
    assert_eq!(routing(&mut c).await, "PreferClose");
    eventually("both watches open", Duration::from_secs(5), async || {
        fake.open_watches() == 4
    })
    .await;

    let local = review(
        "Service",
        service("shop", "cache", json!({"app": "cache"}), true),
        "shop",
    );
    assert!(
        !c.review(&local)
            .await
            .message
            .unwrap()
            .contains("PreferSameNode")
    );

    // The control plane is upgraded to 1.36; the watches break and
    // reconnect.
    fake.state.lock().unwrap().minor = "36".into();
    fake.expire_watches();
    eventually(
        "routing: auto to follow the new version",
        Duration::from_secs(10),
        async || routing(&mut c).await == "PreferSameZone",
    )
    .await;
    let denial = c.review(&local).await.message.unwrap();
    assert!(
        denial.contains("(1) replace it with spec.trafficDistribution: PreferSameNode"),
        "{denial}"
    );
    assert!(!denial.contains("PreferClose"), "{denial}");
}

fn workload(kind: &str, name: &str, replicas: i64) -> Vec<u8> {
    review(
        kind,
        json!({"apiVersion": "apps/v1", "kind": kind,
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"replicas": replicas, "serviceName": name, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": name, "image": "x:1"}]}}}}),
        "shop",
    )
}

/// The zone capacity warning, with the zones from the cluster's Nodes (read
/// as metadata only), following Nodes that come and go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_capacity_follows_the_nodes() {
    let fake = FakeApi::start("1", "34").await;
    for (i, zone) in ["eu-west-1a", "eu-west-1b", "eu-west-1c", "eu-west-1a"]
        .iter()
        .enumerate()
    {
        fake.apply("nodes", node(&format!("node-{i}"), Some(zone), true));
    }
    fake.apply("nodes", node("no-zone", None, true));
    let (server, _dir) = zonewise_with(&fake, Scope::All, "").await;
    let mut c = server.h1().await;
    let capacity = async |c: &mut Client, kind: &str, n: i64| {
        c.review(&workload(kind, &format!("w{n}"), n))
            .await
            .warnings
            .into_iter()
            .find(|w| w.contains("zones"))
    };
    let one = capacity(&mut c, "Deployment", 1).await.expect("1 of 3");
    assert!(one.contains("1 replica for 3 zones"), "{one}");
    assert_eq!(capacity(&mut c, "Deployment", 3).await, None);
    let four = capacity(&mut c, "StatefulSet", 4)
        .await
        .expect("4 of 3, PreferSameZone on 1.34");
    assert!(four.contains("multiples of 3"), "{four}");
    // Metadata only: the list asked for PartialObjectMetadata.
    assert!(
        fake.requests()
            .iter()
            .any(|r| r == "list nodes None metadata"),
        "{:?}",
        fake.requests()
    );
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, r#"zonewise_cache_objects{kind="Node"}"#),
        4.0,
        "{m}"
    );
    // A fourth zone appears.
    fake.apply("nodes", node("node-9", Some("eu-west-1d"), true));
    eventually("four zones", Duration::from_secs(5), async || {
        capacity(&mut c, "Deployment", 3)
            .await
            .is_some_and(|w| w.contains("3 replicas for 4 zones"))
    })
    .await;
}

/// The readiness-gate label, learnt from a metadata watch of the labelled
/// namespaces only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_targets_warn_where_the_readiness_gate_label_is_missing() {
    let fake = FakeApi::start("1", "34").await;
    fake.apply("namespaces", namespace("shop", &[]));
    fake.apply(
        "namespaces",
        namespace(
            "gated",
            &[("elbv2.k8s.aws/pod-readiness-gate-inject", "enabled")],
        ),
    );
    let (server, _dir) = zonewise_with(&fake, Scope::All, "").await;
    let mut c = server.h1().await;
    let lb = |ns: &str| {
        let mut svc = service(ns, "web", json!({"app": "web"}), false);
        svc["spec"]["type"] = json!("LoadBalancer");
        review("Service", svc, ns)
    };
    let gate_warning = async |c: &mut Client, ns: &str| {
        c.review(&lb(ns))
            .await
            .warnings
            .into_iter()
            .find(|w| w.contains("readiness"))
    };
    let w = gate_warning(&mut c, "shop")
        .await
        .expect("shop lacks the label");
    assert!(
        w.contains("namespace shop lacks label elbv2.k8s.aws/pod-readiness-gate-inject=enabled"),
        "{w}"
    );
    assert_eq!(gate_warning(&mut c, "gated").await, None);
    // Only labelled namespaces were listed, as metadata.
    let lists: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("list namespaces"))
        .collect();
    assert_eq!(
        lists,
        ["list namespaces None elbv2.k8s.aws/pod-readiness-gate-inject=enabled metadata"],
        "{lists:?}"
    );
    // The label added later: no more warning.
    fake.apply(
        "namespaces",
        namespace(
            "shop",
            &[("elbv2.k8s.aws/pod-readiness-gate-inject", "enabled")],
        ),
    );
    eventually("the label to be seen", Duration::from_secs(5), async || {
        gate_warning(&mut c, "shop").await.is_none()
    })
    .await;
}

/// A Local callee backed by a DaemonSet gets a required node term; one
/// allowed by annotation (a Deployment's pods) a preferred one and a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_node_affinity_only_towards_daemonsets() {
    let fake = FakeApi::start("1", "34").await;
    fake.apply(
        "services",
        service("shop", "agent", json!({"app": "agent"}), true),
    );
    fake.apply(
        "daemonsets",
        daemonset("shop", "agent", json!({"app": "agent"}), None),
    );
    let mut cache = service("shop", "cache", json!({"app": "cache"}), true);
    cache["metadata"]["annotations"] = json!({"zonewise.io/allow-local": "warm per-node cache"});
    fake.apply("services", cache);
    let (server, _dir) = zonewise_with(&fake, Scope::All, "").await;
    let mut c = server.h1().await;
    let req = caller("agent, cache");
    let a = c.review(&req).await;
    let obj = patched(&req, &a);
    assert_eq!(
        affinity(&obj)["requiredDuringSchedulingIgnoredDuringExecution"],
        json!([{"labelSelector": {"matchLabels": {"app": "agent"}}, "topologyKey": "kubernetes.io/hostname"}])
    );
    assert_eq!(
        affinity(&obj)["preferredDuringSchedulingIgnoredDuringExecution"],
        json!([{"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}}])
    );
    assert!(
        a.warnings
            .iter()
            .any(|w| w.contains("shop/cache") && w.contains("dropped")),
        "{:?}",
        a.warnings
    );
}
