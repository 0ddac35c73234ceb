//! Property tests: arbitrary Services and Deployments (valid shapes plus
//! random extra fields, missing fields, odd types, large label maps,
//! unicode and `~`/`/` in keys) through the same path the server takes
//! (AdmissionReview bytes → sparse decode → review → response), checked for:
//! no panic; every patch applies to the full object; the result still
//! parses as the k8s-openapi type whenever the input did; a second review
//! adds nothing; nothing outside the rules' own paths changes; and the
//! sparse and full parses give the same answer.

mod common;

use base64::Engine;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{Map, Value, json};
use zonewise::config::Config;
use zonewise::lookups::NoCluster;
use zonewise::policy::{Environment, Policy};
use zonewise::review::{Endpoint, review};
use zonewise::wire::{self, Objects};

// --------------------------------------------------------------- strategies

/// Keys as people and tools write them, plus the awkward ones.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,12}",
        "[a-z]{1,8}\\.(io|com)/[a-z][a-z0-9._-]{0,10}",
        "[a-z~/]{1,6}",
        "\\PC{1,8}",
        Just("zonewise.io/applied".to_string()),
        Just("a/b~c".to_string()),
    ]
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9][a-z0-9._-]{0,10}", Just(String::new())]
}

fn string_map(max: usize) -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(key(), label_value(), 0..max)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
}

/// Any JSON value, small.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e9f64..1e9).prop_map(|f| json!(f)),
        "\\PC{0,10}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Sometimes the expected value, sometimes absent, sometimes anything.
fn maybe(expected: impl Strategy<Value = Value> + 'static) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        6 => expected.prop_map(Some),
        2 => Just(None),
        1 => any_json().prop_map(Some),
    ]
}

fn put(obj: &mut Map<String, Value>, k: &str, v: Option<Value>) {
    if let Some(v) = v {
        obj.insert(k.to_string(), v);
    }
}

const ZONE: &str = "topology.kubernetes.io/zone";
const HOST: &str = "kubernetes.io/hostname";

fn annotations() -> impl Strategy<Value = Value> {
    let zonewise = prop::collection::vec(
        prop_oneof![
            (
                Just("zonewise.io/skip"),
                prop_oneof![
                    Just("true"),
                    Just("zone-spread"),
                    Just("bogus,local-policy")
                ]
            ),
            (
                Just("zonewise.io/calls"),
                prop_oneof![Just("orders"), Just("a.b, c.d.svc, Bad!"), Just("")]
            ),
            (
                Just("zonewise.io/allow-local"),
                prop_oneof![Just("reason"), Just(" ")]
            ),
            (
                Just("zonewise.io/applied"),
                prop_oneof![Just("zone-routing"), Just("")]
            ),
            (
                Just("service.kubernetes.io/topology-mode"),
                prop_oneof![Just("Auto"), Just("Disabled")]
            ),
            (
                Just("service.beta.kubernetes.io/aws-load-balancer-nlb-target-type"),
                prop_oneof![Just("instance"), Just("ip")]
            ),
            (
                Just("service.beta.kubernetes.io/aws-load-balancer-attributes"),
                prop_oneof![Just("a=b"), Just("load_balancing.cross_zone.enabled=true")]
            ),
        ],
        0..3,
    );
    (string_map(6), zonewise).prop_map(|(mut m, z)| {
        for (k, v) in z {
            m.insert(k.to_string(), json!(v));
        }
        Value::Object(m)
    })
}

fn metadata() -> impl Strategy<Value = Value> {
    (
        "[a-z][a-z0-9-]{0,10}",
        maybe(string_map(40).prop_map(Value::Object)),
        maybe(annotations()),
        prop::option::of(any_json()),
    )
        .prop_map(|(name, labels, ann, extra)| {
            let mut m = Map::new();
            m.insert("name".into(), json!(name));
            m.insert("namespace".into(), json!("shop"));
            put(&mut m, "labels", labels);
            put(&mut m, "annotations", ann);
            put(&mut m, "managedFields", extra);
            Value::Object(m)
        })
}

fn service() -> impl Strategy<Value = Value> {
    let spec = (
        maybe(
            prop_oneof![
                Just("ClusterIP"),
                Just("NodePort"),
                Just("LoadBalancer"),
                Just("ExternalName")
            ]
            .prop_map(|s| json!(s)),
        ),
        maybe(string_map(30).prop_map(Value::Object)),
        maybe(prop_oneof![Just("None"), Just("10.0.0.1")].prop_map(|s| json!(s))),
        maybe(prop_oneof![Just("Local"), Just("Cluster")].prop_map(|s| json!(s))),
        maybe(prop_oneof![Just("PreferClose"), Just("PreferSameNode")].prop_map(|s| json!(s))),
        maybe(
            prop_oneof![Just("service.k8s.aws/nlb"), Just("metallb.io/l2")].prop_map(|s| json!(s)),
        ),
        prop::option::of((key(), any_json())),
    )
        .prop_map(|(ty, sel, cip, itp, td, lbc, extra)| {
            let mut m = Map::new();
            m.insert("ports".into(), json!([{"port": 80, "protocol": "TCP"}]));
            put(&mut m, "type", ty);
            put(&mut m, "selector", sel);
            put(&mut m, "clusterIP", cip);
            put(&mut m, "internalTrafficPolicy", itp);
            put(&mut m, "trafficDistribution", td);
            put(&mut m, "loadBalancerClass", lbc);
            if let Some((k, v)) = extra {
                m.entry(k).or_insert(v);
            }
            Value::Object(m)
        });
    (metadata(), maybe(spec)).prop_map(|(meta, spec)| {
        let mut m = Map::new();
        m.insert("apiVersion".into(), json!("v1"));
        m.insert("kind".into(), json!("Service"));
        m.insert("metadata".into(), meta);
        put(&mut m, "spec", spec);
        Value::Object(m)
    })
}

fn constraint() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            Just(ZONE),
            Just(HOST),
            Just("failure-domain.beta.kubernetes.io/zone"),
            Just("rack")
        ],
        prop_oneof![Just("ScheduleAnyway"), Just("DoNotSchedule")],
    )
        .prop_map(|(k, w)| json!({"maxSkew": 1, "topologyKey": k, "whenUnsatisfiable": w}))
}

fn affinity() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec(prop_oneof![Just("a"), Just("b")], 1..3)),
        prop::option::of(Just(json!([{"weight": 5, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "orders"}}, "topologyKey": ZONE}}]))),
    )
        .prop_map(|(zones, pref)| {
            let mut a = Map::new();
            if let Some(z) = zones {
                a.insert(
                    "nodeAffinity".into(),
                    json!({"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [{"key": ZONE, "operator": "In", "values": z}]}]}}),
                );
            }
            if let Some(p) = pref {
                a.insert("podAffinity".into(), json!({"preferredDuringSchedulingIgnoredDuringExecution": p}));
            }
            Value::Object(a)
        })
}

fn deployment() -> impl Strategy<Value = Value> {
    let pod_spec = (
        maybe(prop::collection::vec(constraint(), 0..3).prop_map(Value::Array)),
        maybe(affinity()),
        maybe(prop_oneof![
            Just(json!({ZONE: "a"})),
            Just(json!({"disk": "ssd"}))
        ]),
        prop::option::of((key(), any_json())),
    )
        .prop_map(|(tsc, aff, ns, extra)| {
            let mut m = Map::new();
            m.insert(
                "containers".into(),
                json!([{"name": "c", "image": "i:1", "env": [{"name": "A", "value": "b"}]}]),
            );
            put(&mut m, "topologySpreadConstraints", tsc);
            put(&mut m, "affinity", aff);
            put(&mut m, "nodeSelector", ns);
            if let Some((k, v)) = extra {
                m.entry(k).or_insert(v);
            }
            Value::Object(m)
        });
    (metadata(), string_map(20), maybe(pod_spec), maybe(any::<u8>().prop_map(|n| json!(n))))
        .prop_map(|(meta, mut labels, pod, replicas)| {
            labels.insert("app".into(), json!("web"));
            let mut template = Map::new();
            template.insert("metadata".into(), json!({"labels": labels.clone()}));
            put(&mut template, "spec", pod);
            let mut spec = Map::new();
            spec.insert("selector".into(), json!({"matchLabels": {"app": "web"}}));
            spec.insert("template".into(), Value::Object(template));
            put(&mut spec, "replicas", replicas);
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec, "status": {}})
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(""),
        Just("service: {routing: annotation, loadBalancer: {setType: true, crossZone: disabled}}"),
        Just("service: {localPolicy: warn, routing: PreferSameZone}"),
        Just("deployment: {zoneSpread: {whenUnsatisfiable: DoNotSchedule, minDomains: 3, nodeSpread: false}}"),
        Just("callGraph: [{from: shop/web, to: [shop/orders, billing/payments]}]\nserviceSelectors: {billing/payments: {app: pay}}"),
    ]
    .prop_map(|y| Policy::new(Config::from_yaml(y).unwrap(), &Environment::default()))
}

// --------------------------------------------------------------- checking

fn review_bytes(kind: &str, obj: &Value) -> Vec<u8> {
    let (group, resource) = if kind == "Deployment" {
        ("apps", "deployments")
    } else {
        ("", "services")
    };
    serde_json::to_vec(
        &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "prop", "kind": {"group": group, "version": "v1", "kind": kind},
        "resource": {"group": group, "version": "v1", "resource": resource},
        "namespace": "shop", "operation": "CREATE", "userInfo": {"username": "u"},
        "object": obj, "oldObject": null, "dryRun": false}}),
    )
    .unwrap()
}

/// (allowed, patch ops) through decode → review → encode → decode answer.
fn answer(
    body: &[u8],
    policy: &Policy,
    objects: Objects,
) -> (bool, Option<json_patch::Patch>, Vec<String>) {
    let req = wire::decode_with(body, objects).unwrap();
    let out = review(&req, policy, &NoCluster, Endpoint::Mutate);
    let resp: Value = serde_json::from_slice(&wire::encode(&req.uid, &out)).unwrap();
    let patch = resp["response"]["patch"].as_str().map(|b64| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        serde_json::from_slice::<json_patch::Patch>(&bytes).unwrap()
    });
    (
        resp["response"]["allowed"].as_bool().unwrap(),
        patch,
        out.warnings,
    )
}

/// Arrays the rules may append to.
const APPENDABLE: &[&str] = &[
    "/spec/template/spec/topologySpreadConstraints",
    "/spec/template/spec/affinity/podAffinity/preferredDuringSchedulingIgnoredDuringExecution",
    "/spec/template/spec/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution",
];

/// Existing values the rules may replace (merges), besides `null`s, which
/// the API server treats as absent.
const REPLACEABLE: &[&str] = &[
    "/metadata/annotations/zonewise.io~1applied",
    "/metadata/annotations/service.beta.kubernetes.io~1aws-load-balancer-attributes",
];

fn escape(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

/// Everything in `orig` is still in `patched`, unchanged, except at the
/// rules' own paths.
fn preserved(orig: &Value, patched: &Value, path: &str) -> Result<(), String> {
    if REPLACEABLE.contains(&path) || orig.is_null() {
        return Ok(());
    }
    match (orig, patched) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}/{}", escape(k));
                let w = b.get(k).ok_or_else(|| format!("{p} removed"))?;
                preserved(v, w, &p)?;
            }
            Ok(())
        }
        (Value::Array(a), Value::Array(b)) => {
            if b.len() < a.len() || (b.len() > a.len() && !APPENDABLE.contains(&path)) {
                return Err(format!(
                    "{path}: array changed length {} → {}",
                    a.len(),
                    b.len()
                ));
            }
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                preserved(v, w, &format!("{path}/{i}"))?;
            }
            Ok(())
        }
        (a, b) if a == b => Ok(()),
        (a, b) => Err(format!("{path}: {a} → {b}")),
    }
}

fn check(kind: &str, obj: &Value, policy: &Policy) -> Result<(), TestCaseError> {
    let body = review_bytes(kind, obj);
    let (allowed, patch, warnings) = answer(&body, policy, Objects::Sparse);
    let full = answer(&body, policy, Objects::Full);
    let typed_ok = |v: &Value| match kind {
        "Service" => {
            serde_json::from_value::<k8s_openapi::api::core::v1::Service>(v.clone()).is_ok()
        }
        _ => serde_json::from_value::<k8s_openapi::api::apps::v1::Deployment>(v.clone()).is_ok(),
    };
    let parsed = typed_ok(obj);
    if parsed {
        // Same answer whether the object was parsed whole or sparsely.
        prop_assert_eq!(allowed, full.0);
        prop_assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            serde_json::to_value(&full.1).unwrap()
        );
        prop_assert_eq!(&warnings, &full.2);
    }
    let Some(patch) = patch else { return Ok(()) };
    prop_assert!(allowed, "a patch comes only with an allowed answer");
    let mut out = obj.clone();
    json_patch::patch(&mut out, &patch)
        .map_err(|e| TestCaseError::fail(format!("patch does not apply: {e}\n{patch:?}")))?;
    if parsed {
        prop_assert!(typed_ok(&out), "patched object no longer parses: {}", out);
    }
    preserved(obj, &out, "").map_err(|e| TestCaseError::fail(format!("{e}\npatch: {patch:?}")))?;
    let (_, again, _) = answer(&review_bytes(kind, &out), policy, Objects::Sparse);
    prop_assert!(again.is_none(), "second review patched again: {:?}", again);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn services(obj in service(), policy in policy()) {
        check("Service", &obj, &policy)?;
    }

    #[test]
    fn deployments(obj in deployment(), policy in policy()) {
        check("Deployment", &obj, &policy)?;
    }

    /// Arbitrary JSON as the object: never a panic, never a patch that
    /// does not apply.
    #[test]
    fn arbitrary_objects(obj in any_json(), kind in prop_oneof![Just("Service"), Just("Deployment")]) {
        check(kind, &obj, &Policy::default())?;
    }
}
