//! Property tests: arbitrary Services and Deployments (valid shapes plus
//! random extra fields, missing fields, odd types, large label maps,
//! unicode and `~`/`/` in keys) through the same path the server takes
//! (AdmissionReview bytes → sparse decode → review → response), checked for:
//! no panic; every patch applies to the full object; the result still
//! parses as the k8s-openapi type whenever the input did; a second review
//! adds nothing; nothing outside the rules' own paths changes; and the
//! sparse and full parses give the same answer; and every rule reads only
//! the paths it declares in the rule table (run on the object pruned to its
//! declared paths, it answers exactly as on the whole object).

mod common;

use base64::Engine;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde::de::DeserializeSeed;
use serde_json::{Map, Value, json};
use zonewise::core::admission::{Kind, Operation};
use zonewise::core::config::Config;
use zonewise::core::lookups::{
    DaemonSetEntry, DaemonSetFacts, InMemory, Lookups, NoCluster, ServiceFacts,
};
use zonewise::core::policy::{Environment, Policy};
use zonewise::core::review::{Endpoint, review};
use zonewise::core::rules::{self, Action, Context, Mutation, Read, RuleSpec};
use zonewise::core::sparse::{Budget, Interest, Sparse};
use zonewise::core::wire::{self, Objects};

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
            (
                Just(
                    "service.beta.kubernetes.io/aws-load-balancer-cross-zone-load-balancing-enabled"
                ),
                prop_oneof![Just("true"), Just("false")]
            ),
            (
                Just("zonewise.io/calls"),
                prop_oneof![
                    Just("cache"),
                    Just("web.billing, web"),
                    Just("orders,payments.billing")
                ]
            ),
            (
                Just("kubectl.kubernetes.io/last-applied-configuration"),
                prop_oneof![
                    Just(r#"{"spec":{"replicas":2}}"#),
                    Just(r#"{"spec":{}}"#),
                    Just("not json")
                ]
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

/// Field managers as the API server records them (server-side apply or
/// not, owning `spec.replicas` or not).
fn managed_fields() -> impl Strategy<Value = Value> {
    prop::collection::vec(
        (prop_oneof![Just("Apply"), Just("Update")], any::<bool>()).prop_map(|(op, owns)| {
            let fields = if owns {
                json!({"f:spec": {"f:replicas": {}}})
            } else {
                json!({"f:spec": {"f:template": {}}})
            };
            json!({"manager": "m", "operation": op, "fieldsV1": fields})
        }),
        0..3,
    )
    .prop_map(Value::Array)
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
        (
            maybe(prop_oneof![Just("Local"), Just("Cluster")].prop_map(|s| json!(s))),
            maybe(prop_oneof![
                Just(json!(["None"])),
                Just(json!(["10.0.0.2"]))
            ]),
        ),
        prop::option::of((key(), any_json())),
    )
        .prop_map(|(ty, sel, cip, itp, td, lbc, (etp, cips), extra)| {
            let mut m = Map::new();
            m.insert("ports".into(), json!([{"port": 80, "protocol": "TCP"}]));
            put(&mut m, "type", ty);
            put(&mut m, "selector", sel);
            put(&mut m, "clusterIP", cip);
            put(&mut m, "internalTrafficPolicy", itp);
            put(&mut m, "trafficDistribution", td);
            put(&mut m, "loadBalancerClass", lbc);
            put(&mut m, "externalTrafficPolicy", etp);
            put(&mut m, "clusterIPs", cips);
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

fn node_term() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..3),
        prop_oneof![Just("In"), Just("NotIn"), Just("Exists")],
        any::<bool>(),
    )
        .prop_map(|(z, op, empty)| {
            if empty {
                json!({})
            } else {
                json!({"matchExpressions": [{"key": ZONE, "operator": op, "values": z}]})
            }
        })
}

fn affinity() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec(node_term(), 1..3)),
        prop::option::of(prop_oneof![
            Just(json!([{"weight": 5, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "orders"}}, "topologyKey": ZONE}}])),
            Just(json!([{"weight": 5, "podAffinityTerm": {"labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["orders"]}]}, "topologyKey": ZONE}}])),
        ]),
        prop::option::of(Just(json!({"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": HOST}]}))),
    )
        .prop_map(|(terms, pref, anti)| {
            let mut a = Map::new();
            if let Some(terms) = terms {
                a.insert(
                    "nodeAffinity".into(),
                    json!({"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}),
                );
            }
            if let Some(anti) = anti {
                a.insert("podAntiAffinity".into(), anti);
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
    (
        (metadata(), prop::option::of(managed_fields())),
        string_map(20),
        maybe(pod_spec),
        maybe((0u8..8).prop_map(|n| json!(n))),
        prop::option::of(prop_oneof![
            Just(json!({"zonewise.io/calls": "orders"})),
            Just(json!({"zonewise.io/skip": "true", "x": "y"})),
        ]),
        // Now and then without the selector or the template apps/v1
        // requires (k8s-openapi alone would default them).
        (prop::bool::weighted(0.9), prop::bool::weighted(0.9)),
    )
        .prop_map(|((mut meta, managed), mut labels, pod, replicas, template_ann, (has_selector, has_template))| {
            if let Some(m) = managed {
                meta["managedFields"] = m;
            }
            labels.insert("app".into(), json!("web"));
            let mut template = Map::new();
            let mut template_meta = json!({"labels": labels.clone()});
            if let Some(a) = template_ann {
                template_meta["annotations"] = a;
            }
            template.insert("metadata".into(), template_meta);
            put(&mut template, "spec", pod);
            let mut spec = Map::new();
            if has_selector {
                spec.insert("selector".into(), json!({"matchLabels": {"app": "web"}}));
            }
            if has_template {
                spec.insert("template".into(), Value::Object(template));
            }
            put(&mut spec, "replicas", replicas);
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec, "status": {}})
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(""),
        Just("service: {routing: annotation, loadBalancer: {setType: true, crossZone: disabled}}"),
        Just("service: {localPolicy: warn, routing: PreferSameZone}"),
        Just("kubernetesVersion: \"1.34\"\nservice: {localPolicy: convert}\nzones: [a, b, c]"),
        Just("kubernetesVersion: \"1.30\"\nzones: [a, b]"),
        Just("deployment: {zoneSpread: {whenUnsatisfiable: DoNotSchedule, minDomains: 3, nodeSpread: false}}\nzones: [a, b, c, d]"),
        Just("callGraph: [{from: shop/web, to: [shop/orders, billing/payments]}]\nserviceSelectors: {billing/payments: {app: pay}}"),
    ]
    .prop_map(|y| Policy::new(Config::from_yaml(y).unwrap(), &Environment::default()))
}

/// No cluster, or a small one: Local and non-Local callees, a DaemonSet,
/// a namespace with the readiness-gate label.
fn lookups() -> impl Strategy<Value = InMemoryOrNone> {
    any::<bool>().prop_map(|cluster| {
        if !cluster {
            return InMemoryOrNone(None);
        }
        let facts = |app: &str, local| ServiceFacts {
            selector: Some([("app".to_string(), app.to_string())].into()),
            local,
        };
        InMemoryOrNone(Some(
            InMemory::default()
                .with_service("shop", "orders", facts("orders", false))
                .with_service("shop", "cache", facts("node-cache", true))
                .with_service("billing", "web", facts("billing-web", false))
                .with_daemonset(
                    "shop",
                    DaemonSetEntry {
                        labels: [("app".to_string(), "node-cache".to_string())].into(),
                        facts: DaemonSetFacts {
                            name: "node-cache".into(),
                            restricted: false,
                        },
                    },
                )
                .with_readiness_gate("shop"),
        ))
    })
}

#[derive(Debug, Clone)]
struct InMemoryOrNone(Option<InMemory>);

impl InMemoryOrNone {
    fn get(&self) -> &dyn Lookups {
        match &self.0 {
            Some(m) => m,
            None => &NoCluster,
        }
    }
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
    // localPolicy: convert replaces Local with PreferSameNode.
    "/spec/internalTrafficPolicy",
    "/spec/trafficDistribution",
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

/// `obj` with only the parts at `reads` (what the admission path would
/// keep if those were all that was declared).
fn prune(obj: &Value, reads: &[&Read]) -> Value {
    let interest = Interest::of_paths(reads.iter().map(|r| r.path));
    let text = serde_json::to_string(obj).unwrap();
    let mut de = serde_json::Deserializer::from_str(&text);
    Sparse(&interest, &Budget::new(usize::MAX))
        .deserialize(&mut de)
        .unwrap()
}

/// What one rule row says about `obj`: its verdict, patch and warnings.
fn run_rule(
    spec: &RuleSpec,
    kind: Kind,
    obj: &Value,
    policy: &Policy,
    lookups: &dyn Lookups,
) -> String {
    let ctx = Context {
        kind,
        namespace: "shop",
        operation: Operation::Create,
        can_patch: true,
        policy,
        lookups,
    };
    let mut m = Mutation::new(obj);
    let verdict = match spec.action {
        Action::Mutate(f) => format!("{:?}", f(obj, &ctx, &mut m)),
        Action::Check(f) => format!("{:?}", f(obj, None, &ctx, &mut m)),
    };
    let warnings: Vec<&str> = m.warnings.texts().collect();
    format!(
        "{verdict} {} {warnings:?}",
        serde_json::to_string(&m.patch.into_patch()).unwrap()
    )
}

/// Each rule answers the same on the object pruned to the paths it (and the
/// pipeline) declares as on the whole object: a rule that reads a path it
/// did not declare would see nothing there on the admission path, and the
/// two answers would differ.
fn rules_read_only_what_they_declare(
    kind: Kind,
    obj: &Value,
    policy: &Policy,
    lookups: &dyn Lookups,
) -> Result<(), TestCaseError> {
    if rules::typed_check(kind, obj, true).is_err() {
        return Ok(());
    }
    for spec in rules::rules_for(kind) {
        let reads: Vec<_> = rules::pipeline_reads(kind).chain(spec.reads).collect();
        let pruned = prune(obj, &reads);
        prop_assert_eq!(
            run_rule(spec, kind, obj, policy, lookups),
            run_rule(spec, kind, &pruned, policy, lookups),
            "{} reads a path it does not declare; pruned object: {}",
            spec.rule,
            pruned
        );
    }
    Ok(())
}

/// The same over every fixture object, Ingresses and StatefulSets included.
#[test]
fn fixture_objects_are_read_only_where_declared() {
    for case in common::CASES.iter() {
        let review: Value = serde_json::from_slice(&common::fixture(&case.name)).unwrap();
        let obj = &review["request"]["object"];
        let (group, version) = (
            &review["request"]["kind"]["group"],
            &review["request"]["kind"]["version"],
        );
        let gvk = zonewise::core::admission::GroupVersionKind::new(
            group.as_str().unwrap(),
            version.as_str().unwrap(),
            review["request"]["kind"]["kind"].as_str().unwrap(),
        );
        let Some(kind) = Kind::of(&gvk) else { continue };
        if obj.is_null() {
            continue;
        }
        let policy = case.policy();
        rules_read_only_what_they_declare(kind, obj, &policy, &NoCluster)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn service_rules_read_only_what_they_declare(obj in service(), policy in policy(), l in lookups()) {
        rules_read_only_what_they_declare(Kind::Service, &obj, &policy, l.get())?;
    }

    #[test]
    fn workload_rules_read_only_what_they_declare(obj in deployment(), policy in policy(), l in lookups(), sts in any::<bool>()) {
        let mut obj = obj;
        let kind = if sts {
            obj["kind"] = json!("StatefulSet");
            Kind::StatefulSet
        } else {
            Kind::Deployment
        };
        rules_read_only_what_they_declare(kind, &obj, &policy, l.get())?;
    }


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
