//! `zonewise audit` as a user runs it, against the fake API server (a real
//! `kube::Client` through a kubeconfig): a small multi-zone cluster with
//! one of each situation the audit reports, every output format checked
//! field by field, pagination, scope, and the ways a list can fail. The
//! fake fails the test on any request that is not a GET.

mod common;

use std::process::{Command, Output};

use common::fake_api::*;
use serde_json::{Value, json};

const READY: bool = true;

/// The cluster: three zones (b2 not Ready), two opted-in namespaces.
async fn cluster() -> FakeApi {
    let fake = FakeApi::start("1", "34").await;
    for (name, zone, ready) in [
        ("a1", "eu-west-1a", READY),
        ("a2", "eu-west-1a", READY),
        ("b1", "eu-west-1b", READY),
        ("b2", "eu-west-1b", !READY),
        ("c1", "eu-west-1c", READY),
        ("c2", "eu-west-1c", READY),
    ] {
        fake.apply("nodes", node(name, Some(zone), ready));
    }
    fake.apply(
        "namespaces",
        namespace("shop", &[("zonewise.io/enabled", "true")]),
    );
    fake.apply(
        "namespaces",
        namespace(
            "billing",
            &[
                ("zonewise.io/enabled", "true"),
                ("elbv2.k8s.aws/pod-readiness-gate-inject", "enabled"),
            ],
        ),
    );
    fake.apply("namespaces", namespace("other", &[]));
    fake.apply(
        "namespaces",
        namespace("kube-system", &[("zonewise.io/enabled", "true")]),
    );

    let svc = |name: &str, extra: Value| {
        let mut s = service("shop", name, json!({"app": name}), false);
        merge(&mut s, extra);
        s
    };
    // Not routed: zone-routing would act; its endpoints miss zone c.
    fake.apply("services", svc("orders", json!({})));
    // A load balancer already routed: lb-ip-target would act.
    fake.apply(
        "services",
        svc(
            "web",
            json!({"spec": {"type": "LoadBalancer", "trafficDistribution": "PreferClose"}}),
        ),
    );
    // topology-mode Auto with no hints in its slices.
    fake.apply(
        "services",
        svc(
            "hinted",
            json!({"metadata": {"annotations": {"service.kubernetes.io/topology-mode": "Auto"}}}),
        ),
    );
    // Local, no DaemonSet, no annotation: denied, and dropping traffic.
    fake.apply(
        "services",
        svc("cache", json!({"spec": {"internalTrafficPolicy": "Local"}})),
    );
    // Local on a DaemonSet covering every Ready node: fine.
    fake.apply(
        "services",
        svc("agent", json!({"spec": {"internalTrafficPolicy": "Local"}})),
    );
    fake.apply(
        "daemonsets",
        daemonset("shop", "agent", json!({"app": "agent"}), None),
    );
    // Routed, with a zone holding far fewer endpoints than its nodes' share.
    fake.apply(
        "services",
        svc(
            "api",
            json!({"spec": {"trafficDistribution": "PreferSameZone"}}),
        ),
    );
    // The owner opted out.
    fake.apply(
        "services",
        svc(
            "skipped",
            json!({"metadata": {"annotations": {"zonewise.io/skip": "true"}}}),
        ),
    );

    let slice = |svc: &str, n: usize, eps: &[(&str, &str, bool)], hints: bool| {
        endpoint_slice("shop", svc, n, eps, hints)
    };
    fake.apply(
        "endpointslices",
        slice(
            "orders",
            0,
            &[("a1", "eu-west-1a", true), ("b1", "eu-west-1b", true)],
            false,
        ),
    );
    fake.apply(
        "endpointslices",
        slice(
            "web",
            0,
            &[
                ("a1", "eu-west-1a", true),
                ("b1", "eu-west-1b", true),
                ("c1", "eu-west-1c", true),
            ],
            true,
        ),
    );
    fake.apply(
        "endpointslices",
        slice(
            "hinted",
            0,
            &[
                ("a1", "eu-west-1a", true),
                ("b1", "eu-west-1b", true),
                ("c1", "eu-west-1c", true),
            ],
            false,
        ),
    );
    fake.apply(
        "endpointslices",
        slice(
            "cache",
            0,
            &[
                ("a1", "eu-west-1a", true),
                ("c1", "eu-west-1c", true),
                ("c2", "eu-west-1c", false),
            ],
            false,
        ),
    );
    fake.apply(
        "endpointslices",
        slice(
            "agent",
            0,
            &[
                ("a1", "eu-west-1a", true),
                ("a2", "eu-west-1a", true),
                ("b1", "eu-west-1b", true),
                ("c1", "eu-west-1c", true),
                ("c2", "eu-west-1c", true),
            ],
            false,
        ),
    );
    let mut api = vec![("c1", "eu-west-1c", true)];
    api.extend(std::iter::repeat_n(("a1", "eu-west-1a", true), 6));
    api.extend(std::iter::repeat_n(("b1", "eu-west-1b", true), 6));
    // Two slices for one Service.
    fake.apply("endpointslices", slice("api", 0, &api[..7], false));
    fake.apply("endpointslices", slice("api", 1, &api[7..], false));

    // Workloads.
    let mut web = deployment("shop", "storefront", 3);
    web["metadata"]["annotations"] = json!({"zonewise.io/calls": "orders",
        "kubectl.kubernetes.io/last-applied-configuration": "{\"spec\":{\"replicas\":3}}",
        "deployment.kubernetes.io/revision": "4"});
    fake.apply("deployments", web);
    let mut spread = deployment("shop", "spread", 3);
    spread["spec"]["template"]["spec"]["topologySpreadConstraints"] = json!([
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
         "labelSelector": {"matchLabels": {"app": "spread"}}},
        {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
         "labelSelector": {"matchLabels": {"app": "spread"}}}]);
    fake.apply("deployments", spread);
    let mut db = deployment("billing", "db", 3);
    db["kind"] = json!("StatefulSet");
    db["spec"]["serviceName"] = json!("db");
    fake.apply("statefulsets", db);
    fake.apply(
        "ingresses",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "front", "namespace": "billing", "uid": "u", "resourceVersion": "3"},
            "spec": {"ingressClassName": "alb", "rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]},
            "status": {"loadBalancer": {}}}),
    );
    fake.apply("deployments", deployment("other", "elsewhere", 2));
    fake.apply("deployments", deployment("kube-system", "coredns", 2));
    fake
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Runs the audit binary (from a blocking thread: the fake answers on this
/// test's runtime).
async fn audit(fake: &FakeApi, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zonewise"));
    cmd.arg("audit")
        .arg("--kubeconfig")
        .arg(&fake.kubeconfig)
        .args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json_report(out: &Output) -> Value {
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

fn findings<'a>(report: &'a Value, name: &str, check: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["name"] == name && f["check"] == check)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_reports_what_would_change_and_where_traffic_leaves_its_zone() {
    let fake = cluster().await;
    let report = json_report(&audit(&fake, &["-o", "json"]).await);
    let s = &report["summary"];
    assert_eq!(s["serverVersion"], "1.34");
    assert_eq!(
        s["namespaces"], 3,
        "shop, billing, kube-system (excluded by policy)"
    );
    assert_eq!(
        s["objectsRead"],
        json!({"Deployment": 3, "Ingress": 1, "Service": 7, "StatefulSet": 1})
    );
    assert_eq!(
        s["zones"],
        json!(["eu-west-1a", "eu-west-1b", "eu-west-1c"])
    );
    assert_eq!(s["readyNodes"], 5);
    assert_eq!(s["routing"], "trafficDistribution: PreferSameZone");

    // What the rules would change, one finding per rule, with its patch.
    let one = |name: &str, check: &str| {
        let f = findings(&report, name, check);
        assert_eq!(f.len(), 1, "{name} {check}: {f:?}");
        f[0].clone()
    };
    let orders = one("orders", "zone-routing");
    assert_eq!(orders["kind"], "Service");
    assert_eq!(orders["namespace"], "shop");
    assert_eq!(
        orders["message"],
        "would set spec.trafficDistribution: PreferSameZone"
    );
    assert_eq!(
        orders["patch"][0],
        json!({"op": "add", "path": "/spec/trafficDistribution", "value": "PreferSameZone"})
    );
    let lb = findings(&report, "web", "lb-ip-target");
    assert_eq!(lb.len(), 2, "{lb:?}");
    assert_eq!(
        lb[0]["message"],
        "would set annotation service.beta.kubernetes.io/aws-load-balancer-nlb-target-type: ip"
    );
    // A finding without patch: the readiness gate (shop lacks the label).
    assert!(lb[1].get("patch").is_none());
    assert!(
        lb[1]["message"]
            .as_str()
            .unwrap()
            .contains("lacks label elbv2.k8s.aws/pod-readiness-gate-inject=enabled")
    );
    assert!(
        findings(&report, "web", "zone-routing").is_empty(),
        "the owner's PreferClose wins"
    );
    let cache = one("cache", "local-policy");
    assert!(cache.get("patch").is_none());
    assert!(
        cache["message"]
            .as_str()
            .unwrap()
            .contains("(1) replace it with spec.trafficDistribution: PreferSameNode")
    );
    assert!(
        findings(&report, "agent", "local-policy").is_empty(),
        "DaemonSet-backed"
    );
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["name"] != "skipped")
    );
    let storefront = one("storefront", "call-affinity");
    assert_eq!(
        storefront["message"],
        "would add preferred pod affinity (weight 100) on topology.kubernetes.io/zone to app=orders"
    );
    assert_eq!(
        one("storefront", "zone-spread")["message"],
        "would add topologySpreadConstraints on topology.kubernetes.io/zone, kubernetes.io/hostname"
    );
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["name"] != "spread"),
        "compliant"
    );
    let db = one("db", "zone-spread");
    assert_eq!(db["kind"], "StatefulSet");
    assert!(!db["patch"].to_string().contains("pod-template-hash"));
    let front = one("front", "alb-ip-target");
    assert_eq!(front["kind"], "Ingress");
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["namespace"] != "other")
    );
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["namespace"] != "kube-system")
    );

    // Whether zone-local routing can work.
    let cov = one("orders", "zone-coverage");
    assert!(
        cov["message"].as_str().unwrap().starts_with(
            "zone eu-west-1c has Ready nodes but no ready endpoint once zone-routing applies"
        ),
        "{cov}"
    );
    assert!(
        findings(&report, "web", "zone-coverage").is_empty(),
        "covered everywhere"
    );
    let hints = one("hinted", "topology-hints");
    assert!(
        hints["message"]
            .as_str()
            .unwrap()
            .contains("carry no hints"),
        "{hints}"
    );
    let drop = one("cache", "local-drop");
    assert!(
        drop["message"]
            .as_str()
            .unwrap()
            .contains("3 of 5 Ready nodes"),
        "{drop}"
    );
    assert!(
        drop["message"].as_str().unwrap().contains("a2, b1, c2"),
        "{drop}"
    );
    assert!(findings(&report, "agent", "local-drop").is_empty());
    let balance = one("api", "zone-balance");
    assert!(
        balance["message"]
            .as_str()
            .unwrap()
            .starts_with("zone eu-west-1c has 8%"),
        "{balance}"
    );

    assert_eq!(s["zonesUncovered"], 1);
    assert_eq!(s["nodesDroppingTraffic"], 3);
    assert_eq!(
        s["wouldChange"], 5,
        "orders, web, storefront, db, front: {s}"
    );
    assert_eq!(s["wouldDeny"], 1);
    assert_eq!(s["findings"], report["findings"].as_array().unwrap().len());
    assert!(fake.state.lock().unwrap().writes.is_empty());
}

/// `-o yaml`: manifests for Git, equal to the listed objects with the
/// findings' patches applied, no server-set field, nothing left to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_output_is_the_patched_objects_ready_for_git() {
    let fake = cluster().await;
    let report = json_report(&audit(&fake, &["-o", "json"]).await);
    let out = audit(&fake, &["-o", "yaml"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text(&out.stdout)).unwrap();
    let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    assert_eq!(
        docs.len(),
        report["summary"]["wouldChange"].as_u64().unwrap() as usize
    );
    for doc in &docs {
        // List items come without their type; every manifest has it back,
        // first, as kubectl expects.
        let keys: Vec<&String> = doc.as_object().unwrap().keys().take(2).collect();
        assert_eq!(keys, ["apiVersion", "kind"], "{doc}");
        let (kind, ns, name) = (
            doc["kind"].as_str().unwrap(),
            doc["metadata"]["namespace"].as_str().unwrap(),
            doc["metadata"]["name"].as_str().unwrap(),
        );
        common::typed(name, kind, doc);
        assert!(doc.get("status").is_none(), "{name}");
        for field in zonewise::cmd::audit::report::SERVER_FIELDS {
            assert!(doc["metadata"].get(field).is_none(), "{name}: {field}");
        }
        for a in zonewise::cmd::audit::report::SERVER_ANNOTATIONS {
            assert!(
                doc["metadata"]["annotations"].get(a).is_none(),
                "{name}: {a}"
            );
        }
        // The listed object, plus every finding's patch in order.
        let resource = match kind {
            "Service" => "services",
            "Deployment" => "deployments",
            "StatefulSet" => "statefulsets",
            _ => "ingresses",
        };
        let mut obj = fake.state.lock().unwrap().objects
            [&(resource, ns.to_string(), name.to_string())]
            .clone();
        for f in report["findings"].as_array().unwrap() {
            if f["kind"] == kind
                && f["namespace"] == ns
                && f["name"] == name
                && let Some(p) = f.get("patch")
            {
                let p: json_patch::Patch = serde_json::from_value(p.clone()).unwrap();
                json_patch::patch(&mut obj, &p).unwrap();
            }
        }
        zonewise::cmd::audit::report::strip_server_fields(&mut obj);
        assert_eq!(&obj, doc, "{kind} {ns}/{name}");
    }
    // Reviewed again (offline, as GitOps would bake it): nothing to add.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.yaml");
    std::fs::write(&file, &out.stdout).unwrap();
    // Git-ready: kustomize, as kubectl runs it, takes every manifest
    // (it refuses one without apiVersion or kind).
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "resources: [audit.yaml]\n",
    )
    .unwrap();
    let rendered = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir.path())
        .output()
        .expect("kubectl (see .ci/run)");
    assert!(rendered.status.success(), "{}", text(&rendered.stderr));
    let back: Vec<Value> = serde_saphyr::from_multiple(&text(&rendered.stdout)).unwrap();
    assert_eq!(back.iter().filter(|d| !d.is_null()).count(), docs.len());
    let again = Command::new(env!("CARGO_BIN_EXE_zonewise"))
        .args(["mutate", "--kube-version", "1.34", "-o", "patch", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", text(&again.stderr));
    for line in text(&again.stdout).lines() {
        assert_eq!(line, "[]", "a second review patched again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_and_patch_outputs() {
    let fake = cluster().await;
    let out = audit(&fake, &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let billing = table.find("NAMESPACE billing").unwrap();
    let shop = table.find("NAMESPACE shop").unwrap();
    assert!(billing < shop, "grouped by namespace, in order:\n{table}");
    assert!(table.contains("  KIND "), "{table}");
    let summary = table.lines().find(|l| l.contains("objects read")).unwrap();
    assert!(
        summary.contains("12 objects read (3 Deployments, 1 Ingress, 7 Services, 1 StatefulSet)"),
        "{summary}"
    );
    assert!(
        summary.contains("5 would change") && summary.contains("1 would be denied"),
        "{summary}"
    );
    assert!(
        summary.contains("1 zone(s) uncovered") && summary.contains("3 node(s) dropping traffic"),
        "{summary}"
    );
    // The estimate's line comes last; orders (no routing, no endpoint in
    // zone c) is the one Service above the threshold.
    assert_eq!(
        table.lines().last().unwrap(),
        "6 Services; modeled cross-zone share of requests: 22.8% today \u{2192} 17.8% after \
         routing \u{2192} 17.8% after rollout"
    );
    let block = &table[table.find("CROSS-ZONE TRAFFIC").unwrap()..];
    assert!(block.contains("  orders "), "{block}");
    assert!(!block.contains("  api "), "{block}");
    assert!(
        text(&out.stderr).is_empty(),
        "no progress bar when stderr is not a terminal: {}",
        text(&out.stderr)
    );

    let out = audit(&fake, &["-o", "patch"]).await;
    assert!(out.status.success());
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    let orders = lines.iter().find(|l| l["name"] == "orders").unwrap();
    assert_eq!(orders["apiVersion"], "v1");
    assert_eq!(orders["kind"], "Service");
    assert_eq!(orders["namespace"], "shop");
    assert_eq!(orders["patch"][0]["path"], "/spec/trafficDistribution");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_pagination_exit_codes_and_contexts() {
    let fake = cluster().await;
    let whole = json_report(&audit(&fake, &["-o", "json"]).await);
    // A page of two: continue tokens, the same report.
    let before = fake.requests().len();
    let paged = json_report(&audit(&fake, &["-o", "json", "--page-size", "2"]).await);
    assert_eq!(paged, whole);
    let pages = |resource: &str| {
        fake.requests()[before..]
            .iter()
            .filter(|r| r.starts_with(&format!("list {resource} None")))
            .count()
    };
    assert_eq!(
        (pages("services"), pages("nodes"), pages("endpointslices")),
        (4, 3, 4)
    );
    // One namespace, listed in that namespace.
    let billing = json_report(&audit(&fake, &["-o", "json", "-n", "billing"]).await);
    assert!(
        billing["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["namespace"] == "billing")
    );
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.starts_with("list deployments Some(\"billing\")"))
    );
    // Everything: the unlabelled namespace too.
    let all = json_report(&audit(&fake, &["-o", "json", "-A"]).await);
    assert!(
        all["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["namespace"] == "other")
    );
    // --exit-code: 1 with findings, 0 without.
    let out = audit(&fake, &["--exit-code"]).await;
    assert_eq!(out.status.code(), Some(1));
    fake.apply("namespaces", namespace("empty", &[]));
    let out = audit(&fake, &["--exit-code", "-n", "empty"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // --context picks a kubeconfig context; an unknown one is bad input.
    let out = audit(&fake, &["--context", "other", "-o", "json"]).await;
    assert_eq!(json_report(&out)["summary"], whole["summary"]);
    let out = audit(&fake, &["--context", "nope"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let out = audit(&fake, &["-n", "Not_A_Namespace"]).await;
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_list_names_what_is_missing_and_produces_no_report() {
    let fake = cluster().await;
    fake.forbid("endpointslices", None);
    let out = audit(&fake, &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stdout.is_empty(),
        "no partial report: {}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("list endpointslices.discovery.k8s.io"),
        "{err}"
    );
    assert!(err.contains("in all namespaces"), "{err}");
    assert!(
        err.contains("zonewise-audit"),
        "points at the ClusterRole: {err}"
    );
    // An item that does not read as its kind: no report either, and the
    // list is named.
    let fake = cluster().await;
    fake.apply(
        "daemonsets",
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "odd", "namespace": "shop"}, "spec": "not an object"}),
    );
    let out = audit(&fake, &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("daemonsets.apps") && err.contains("unreadable item"),
        "{err}"
    );
    // Namespaced: the namespace is named.
    let fake = cluster().await;
    fake.forbid("deployments", Some("billing"));
    let out = audit(&fake, &["-n", "shop", "-n", "billing"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("list deployments.apps") && err.contains("in namespace billing"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_dies_mid_list_or_is_not_there() {
    let fake = cluster().await;
    fake.die_after_pages("deployments", 1);
    let out = audit(&fake, &["--page-size", "1"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stdout.is_empty(),
        "no partial report: {}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("listing deployments.apps") && err.contains("no report was produced"),
        "{err}"
    );

    // Nothing listening: said once, no stack of retries.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let original = std::fs::read_to_string(&fake.kubeconfig).unwrap();
    std::fs::write(
        &kubeconfig,
        original.replace(&fake.addr.to_string(), &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_zonewise"))
            .args(["audit", "--kubeconfig"])
            .arg(&kubeconfig)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot reach the API server at https://127.0.0.1:{port}"
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// An API server newer than the newest version zonewise knows is audited
/// as that version: values it accepts, no error, and the summary says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_api_server_is_audited_as_the_newest_known() {
    let fake = FakeApi::start("1", "38").await;
    fake.apply("nodes", node("a1", Some("eu-west-1a"), READY));
    fake.apply(
        "namespaces",
        namespace("shop", &[("zonewise.io/enabled", "true")]),
    );
    fake.apply(
        "services",
        service("shop", "orders", json!({"app": "orders"}), false),
    );
    let out = audit(&fake, &["-o", "json"]).await;
    let report = json_report(&out);
    assert_eq!(report["summary"]["serverVersion"], "1.38");
    assert_eq!(
        report["summary"]["versionNote"],
        "Kubernetes 1.38 is newer than 1.37, answered as 1.37"
    );
    let routing = findings(&report, "orders", "zone-routing");
    assert_eq!(routing.len(), 1);
    assert_eq!(
        routing[0]["patch"][0],
        json!({"op": "add", "path": "/spec/trafficDistribution", "value": "PreferSameZone"})
    );
    assert!(
        text(&out.stderr).contains("answered as 1.37"),
        "{}",
        text(&out.stderr)
    );
}

/// Three zones of two Ready nodes each (equal CPU), one namespace: a
/// Service of each situation the estimate distinguishes.
async fn three_zone_cluster() -> FakeApi {
    let fake = FakeApi::start("1", "34").await;
    for (name, zone) in [
        ("a1", "eu-west-1a"),
        ("a2", "eu-west-1a"),
        ("b1", "eu-west-1b"),
        ("b2", "eu-west-1b"),
        ("c1", "eu-west-1c"),
        ("c2", "eu-west-1c"),
    ] {
        fake.apply("nodes", node(name, Some(zone), READY));
    }
    for ns in ["shop", "kube-system"] {
        fake.apply(
            "namespaces",
            namespace(ns, &[("zonewise.io/enabled", "true")]),
        );
    }
    let zone = |node: &str| format!("eu-west-1{}", &node[..1]);
    let add = |ns: &str, name: &str, extra: Value, on: &[&str], hints: bool| {
        let mut s = service(ns, name, json!({"app": name}), false);
        merge(&mut s, extra);
        fake.apply("services", s);
        let zones: Vec<String> = on.iter().map(|n| zone(n)).collect();
        let eps: Vec<(&str, &str, bool)> = on
            .iter()
            .zip(&zones)
            .map(|(n, z)| (*n, z.as_str(), READY))
            .collect();
        fake.apply("endpointslices", endpoint_slice(ns, name, 0, &eps, hints));
    };
    // One endpoint per zone, no setting: 2/3 today, 0 once routed.
    add("shop", "orders", json!({}), &["a1", "b1", "c1"], false);
    fake.apply("deployments", deployment("shop", "orders", 3));
    // 2/1/0: zone c's clients cross even when routed, until a rollout
    // re-spreads the three replicas.
    add("shop", "payments", json!({}), &["a1", "a2", "b1"], false);
    fake.apply("deployments", deployment("shop", "payments", 3));
    // Called by storefront only, whose pods all run in zone a.
    add("shop", "ledger", json!({}), &["a1", "b1", "c1"], false);
    add("shop", "storefront", json!({}), &["a1", "a2"], false);
    let mut storefront = deployment("shop", "storefront", 2);
    storefront["metadata"]["annotations"] = json!({"zonewise.io/calls": "ledger"});
    fake.apply("deployments", storefront);
    // Already hinted by the controller: stays in zone.
    add(
        "shop",
        "hinted",
        json!({"metadata": {"annotations": {"service.kubernetes.io/topology-mode": "Auto"}}}),
        &["a1", "b1", "c1"],
        true,
    );
    // Local, allowed by its owner, on one node of six: never crosses,
    // drops what the other five nodes send.
    add(
        "shop",
        "cache",
        json!({"metadata": {"annotations": {"zonewise.io/allow-local": "node cache"}},
               "spec": {"internalTrafficPolicy": "Local"}}),
        &["a1"],
        false,
    );
    // Not counted: skipped by its owner, or in an excluded namespace.
    add(
        "shop",
        "skipped",
        json!({"metadata": {"annotations": {"zonewise.io/skip": "true"}}}),
        &["a1"],
        false,
    );
    add("kube-system", "dns", json!({}), &["a1"], false);
    fake
}

fn service_entry<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {}", report["services"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_zone_estimate_per_service_and_in_money() {
    let fake = three_zone_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let volumes = dir.path().join("traffic.csv");
    std::fs::write(
        &volumes,
        "namespace,service,gb_per_month\n\
         # from Hubble, last 30 days\n\
         shop,orders,1000\n\
         shop, payments , 500\n\
         {\"namespace\": \"shop\", \"service\": \"ledger\", \"gb_per_month\": 100}\n\
         shop,gone,5\n",
    )
    .unwrap();
    let report = json_report(
        &audit(
            &fake,
            &["-o", "json", "--traffic", volumes.to_str().unwrap()],
        )
        .await,
    );
    let names: Vec<&str> = report["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "cache",
            "hinted",
            "ledger",
            "orders",
            "payments",
            "storefront"
        ],
        "skipped and excluded Services are not counted"
    );
    let figures = |name: &str| {
        let c = &service_entry(&report, name)["crossZone"];
        (
            c["today"].as_f64().unwrap(),
            c["afterRouting"].as_f64().unwrap(),
            c["afterRollout"].as_f64().unwrap(),
        )
    };
    assert_eq!(figures("orders"), (0.667, 0.0, 0.0));
    assert_eq!(figures("payments"), (0.667, 0.333, 0.0));
    assert_eq!(figures("ledger"), (0.667, 0.0, 0.0));
    assert_eq!(service_entry(&report, "ledger")["clients"], "callers");
    assert_eq!(service_entry(&report, "orders")["clients"], "nodes");
    // Two of three zones get storefront's two pods after a rollout.
    assert_eq!(figures("storefront"), (0.667, 0.667, 0.333));
    assert_eq!(figures("hinted"), (0.0, 0.0, 0.0));
    assert_eq!(figures("cache"), (0.0, 0.0, 0.0));
    let cache = service_entry(&report, "cache");
    assert_eq!(cache["routing"], "Local");
    assert_eq!(cache["dropped"]["today"], 0.833);
    assert_eq!(
        service_entry(&report, "hinted")["routing"],
        "topology-mode: Auto"
    );
    assert_eq!(service_entry(&report, "orders")["routing"], "none");
    // Money: cross-zone GB times the price, per Service and in all.
    let orders = service_entry(&report, "orders");
    assert_eq!(orders["trafficGbPerMonth"], 1000.0);
    assert_eq!(
        orders["gbPerMonth"],
        json!({"today": 666.67, "afterRouting": 0.0, "afterRollout": 0.0})
    );
    assert_eq!(
        orders["costPerMonth"],
        json!({"today": 13.33, "afterRouting": 0.0, "afterRollout": 0.0})
    );
    assert!(
        service_entry(&report, "hinted")
            .get("costPerMonth")
            .is_none()
    );
    let s = &report["summary"]["crossZone"];
    assert_eq!(s["services"], 6);
    assert_eq!(s["weightedBy"], "gbPerMonth");
    // (1000 + 500 + 100) x 2/3 today; 500 x 1/3 after routing; 0 after.
    assert_eq!(
        (&s["today"], &s["afterRouting"], &s["afterRollout"]),
        (&json!(0.667), &json!(0.104), &json!(0.0))
    );
    assert_eq!(s["trafficGbPerMonth"], 1600.0);
    assert_eq!(
        s["costPerMonth"],
        json!({"today": 21.33, "afterRouting": 3.33, "afterRollout": 0.0})
    );
    assert_eq!(s["trafficUnmatched"], 1);

    // Without volumes: plain means over the six Services, no money.
    let plain = json_report(&audit(&fake, &["-o", "json"]).await);
    let s = &plain["summary"]["crossZone"];
    assert_eq!(s["weightedBy"], "services");
    assert!(s.get("costPerMonth").is_none());
    assert_eq!(s["today"], 0.444, "(4 x 2/3) / 6");
    assert!(service_entry(&plain, "orders").get("gbPerMonth").is_none());
    // A higher price scales the money.
    let pricier = json_report(
        &audit(
            &fake,
            &[
                "-o",
                "json",
                "--traffic",
                volumes.to_str().unwrap(),
                "--price-per-gb",
                "0.04",
            ],
        )
        .await,
    );
    assert_eq!(
        service_entry(&pricier, "orders")["costPerMonth"]["today"],
        26.67
    );

    // The table: Services above the threshold, highest first, and the
    // summary line with money.
    let out = audit(&fake, &["--traffic", volumes.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let block = &table[table.find("CROSS-ZONE TRAFFIC").unwrap()..];
    for name in ["orders", "payments", "ledger", "storefront"] {
        assert!(block.contains(&format!("  {name} ")), "{name}: {block}");
    }
    assert!(
        !block.contains("hinted") && !block.contains("cache"),
        "{block}"
    );
    assert!(block.contains("$13.33 → $0.00"), "{block}");
    let last = table.lines().last().unwrap();
    assert_eq!(
        last,
        "6 Services; modeled cross-zone share of requests: 66.7% today \u{2192} 10.4% after \
         routing \u{2192} 0.0% after rollout (weighted by traffic); cross-zone 1067 \u{2192} 167 \
         \u{2192} 0 GB/month, $21.33 \u{2192} $3.33 \u{2192} $0.00 per month (of 1600 GB/month, \
         at $0.02/GB); 1 --traffic line(s) name no modeled Service"
    );
    let out = audit(&fake, &["--cross-zone-threshold", "0.9"]).await;
    assert!(!text(&out.stdout).contains("CROSS-ZONE TRAFFIC"));

    // Bad volumes: a clear error naming the line, exit 2, no report.
    for (content, says) in [
        (
            "shop,orders,1000\nshop,orders\n",
            "line 2: expected namespace,service,gb_per_month, got 2 field(s)",
        ),
        (
            "shop,orders,lots\n",
            "line 1: \"lots\" is not a number of GB",
        ),
        (
            "shop,orders,-3\n",
            "line 1: gb_per_month must be a number of GB, 0 or more",
        ),
        ("\n{\"namespace\": \"shop\"}\n", "line 2: missing field"),
        (
            "shop,orders,1\nshop,orders,2\n",
            "line 2: shop/orders is already on line 1",
        ),
        (
            "Shop!,orders,1\n",
            "line 1: \"Shop!\"/\"orders\" is not a namespace and Service name",
        ),
    ] {
        std::fs::write(&volumes, content).unwrap();
        let out = audit(&fake, &["--traffic", volumes.to_str().unwrap()]).await;
        assert_eq!(out.status.code(), Some(2), "{content:?}");
        assert!(out.stdout.is_empty(), "{content:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("--traffic") && err.contains(says),
            "{content:?}: {err}"
        );
    }
    for bad in [["--price-per-gb", "-1"], ["--cross-zone-threshold", "2"]] {
        let out = audit(&fake, &bad).await;
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}
