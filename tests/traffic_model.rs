//! The audit's cross-zone estimate against a simulation of what it models.
//!
//! Random clusters (zones, Nodes with different CPU, some not Ready),
//! random Services under every routing setting, with ready and unready
//! endpoints, slices' own hints for topology-mode, and callers whose pods
//! sit on random nodes, are served by the fake API server; `zonewise audit
//! -o json` estimates each Service. Independently of zonewise's code, the
//! simulation below plays request after request: it picks a client (a
//! caller pod, else a Ready node by allocatable CPU), sets the hints the
//! EndpointSlice controller would set, filters the endpoints as kube-proxy
//! does for that node, and picks one uniformly. The two must agree within
//! the simulation's sampling error.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::fake_api::*;
use serde_json::{Value, json};

/// Requests simulated per Service.
const REQUESTS: usize = 40_000;
/// |model − simulation| allowed: six standard errors of a share at
/// `REQUESTS` (≤ 0.0025 each) plus the report's rounding to 3 decimals.
const TOLERANCE: f64 = 0.016;

/// splitmix64: a seeded generator written here so the test needs nothing
/// shared with the code under test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone)]
struct SimNode {
    name: String,
    zone: String,
    ready: bool,
    cpu_millis: u64,
}

#[derive(Clone)]
struct SimEndpoint {
    node: usize,
    ready: bool,
    /// The slice's own zone hints (topology-mode only).
    hints: Option<Vec<String>>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Setting {
    None,
    SameZone,
    SameNode,
    TopologyMode,
    Local,
}

struct SimService {
    name: String,
    setting: Setting,
    endpoints: Vec<SimEndpoint>,
    /// The pods of the workload that calls it, by node.
    callers: Option<Vec<usize>>,
}

/// The endpoint kube-proxy may use for a client on `node` (indexes into
/// the service's endpoints); empty: the request is dropped.
fn usable(svc: &SimService, nodes: &[SimNode], node: usize, setting: Setting) -> Vec<usize> {
    let ready: Vec<usize> = (0..svc.endpoints.len())
        .filter(|i| svc.endpoints[*i].ready)
        .collect();
    let my_zone = &nodes[node].zone;
    // The hints the controller publishes for each ready endpoint:
    // (zone hints, node hint).
    let hints: Vec<(Vec<String>, Option<usize>)> = ready
        .iter()
        .map(|i| {
            let e = &svc.endpoints[*i];
            let own_zone = nodes[e.node].zone.clone();
            match setting {
                Setting::None | Setting::Local => (vec![], None),
                Setting::SameZone => (vec![own_zone], None),
                Setting::SameNode => (vec![own_zone], Some(e.node)),
                Setting::TopologyMode => (e.hints.clone().unwrap_or_default(), None),
            }
        })
        .collect();
    if setting == Setting::Local {
        return ready
            .into_iter()
            .filter(|i| svc.endpoints[*i].node == node)
            .collect();
    }
    let every_node_hint = hints.iter().all(|(_, n)| n.is_some());
    let mine_by_node: Vec<usize> = ready
        .iter()
        .zip(&hints)
        .filter(|(_, (_, n))| *n == Some(node))
        .map(|(i, _)| *i)
        .collect();
    if every_node_hint && !mine_by_node.is_empty() {
        return mine_by_node;
    }
    let every_zone_hint = hints.iter().all(|(z, _)| !z.is_empty());
    let mine_by_zone: Vec<usize> = ready
        .iter()
        .zip(&hints)
        .filter(|(_, (z, _))| z.contains(my_zone))
        .map(|(i, _)| *i)
        .collect();
    if every_zone_hint && !mine_by_zone.is_empty() {
        return mine_by_zone;
    }
    ready
}

/// Plays `REQUESTS` requests: (cross-zone share, dropped share).
fn simulate(svc: &SimService, nodes: &[SimNode], setting: Setting, rng: &mut Rng) -> (f64, f64) {
    // Clients: the callers' pods, one weight each, else Ready nodes by CPU.
    let clients: Vec<(usize, f64)> = match &svc.callers {
        Some(pods) => pods.iter().map(|n| (*n, 1.0)).collect(),
        None => nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.ready)
            .map(|(i, n)| (i, n.cpu_millis as f64))
            .collect(),
    };
    let total: f64 = clients.iter().map(|c| c.1).sum();
    let mut cache: HashMap<usize, Vec<usize>> = HashMap::new();
    let (mut cross, mut dropped) = (0usize, 0usize);
    for _ in 0..REQUESTS {
        let mut x = rng.unit() * total;
        let mut client = clients[clients.len() - 1].0;
        for (n, w) in &clients {
            if x < *w {
                client = *n;
                break;
            }
            x -= w;
        }
        let options = cache
            .entry(client)
            .or_insert_with(|| usable(svc, nodes, client, setting));
        if options.is_empty() {
            dropped += 1;
            continue;
        }
        let ep = &svc.endpoints[options[rng.below(options.len())]];
        if nodes[ep.node].zone != nodes[client].zone {
            cross += 1;
        }
    }
    (
        cross as f64 / REQUESTS as f64,
        dropped as f64 / REQUESTS as f64,
    )
}

/// A random cluster: its nodes and Services.
fn generate(rng: &mut Rng) -> (Vec<SimNode>, Vec<SimService>) {
    let zones = 2 + rng.below(3);
    let count = zones + rng.below(8);
    let cpus = [2000, 3920, 4000, 8000, 16000];
    let nodes: Vec<SimNode> = (0..count)
        .map(|i| SimNode {
            name: format!("node-{i}"),
            // Every zone has a node; the rest fall anywhere.
            zone: format!("zone-{}", if i < zones { i } else { rng.below(zones) }),
            ready: i < zones || rng.below(6) != 0,
            cpu_millis: cpus[rng.below(cpus.len())],
        })
        .collect();
    let settings = [
        Setting::None,
        Setting::SameZone,
        Setting::SameNode,
        Setting::TopologyMode,
        Setting::Local,
    ];
    let zone_names: Vec<String> = (0..zones).map(|z| format!("zone-{z}")).collect();
    let mut services = Vec::new();
    for s in 0..30 {
        let setting = settings[s % settings.len()];
        let n = 1 + rng.below(7);
        let endpoints: Vec<SimEndpoint> = (0..n)
            .map(|_| {
                let node = rng.below(count);
                let hints = match rng.below(4) {
                    // Own zone, as the controller would; another zone (lent);
                    // or none.
                    0 | 1 => Some(vec![nodes[node].zone.clone()]),
                    2 => Some(vec![zone_names[rng.below(zones)].clone()]),
                    _ => None,
                };
                SimEndpoint {
                    node,
                    ready: rng.below(8) != 0,
                    hints: if setting == Setting::TopologyMode && rng.below(3) != 0 {
                        // Mostly: every endpoint hinted, as a working controller does.
                        Some(hints.unwrap_or_else(|| vec![nodes[node].zone.clone()]))
                    } else if setting == Setting::TopologyMode {
                        hints
                    } else {
                        None
                    },
                }
            })
            .collect();
        let callers =
            (rng.below(3) == 0).then(|| (0..1 + rng.below(5)).map(|_| rng.below(count)).collect());
        services.push(SimService {
            name: format!("svc-{s}"),
            setting,
            endpoints,
            callers,
        });
    }
    (nodes, services)
}

/// The cluster as the API server would serve it.
fn load(fake: &FakeApi, nodes: &[SimNode], services: &[SimService]) {
    for n in nodes {
        let mut obj = node(&n.name, Some(&n.zone), n.ready);
        obj["status"]["allocatable"]["cpu"] = json!(format!("{}m", n.cpu_millis));
        fake.apply("nodes", obj);
    }
    fake.apply(
        "namespaces",
        namespace("sim", &[("zonewise.io/enabled", "true")]),
    );
    let slice = |name: &str, eps: Vec<Value>| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-0"), "namespace": "sim",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "endpoints": eps})
    };
    for s in services {
        let mut svc = service(
            "sim",
            &s.name,
            json!({"app": s.name}),
            s.setting == Setting::Local,
        );
        match s.setting {
            Setting::SameZone => svc["spec"]["trafficDistribution"] = json!("PreferSameZone"),
            Setting::SameNode => svc["spec"]["trafficDistribution"] = json!("PreferSameNode"),
            Setting::TopologyMode => {
                svc["metadata"]["annotations"] =
                    json!({"service.kubernetes.io/topology-mode": "Auto"})
            }
            // Allowed, so local-policy leaves it as it is.
            Setting::Local => {
                svc["metadata"]["annotations"] = json!({"zonewise.io/allow-local": "simulated"})
            }
            Setting::None => {}
        }
        fake.apply("services", svc);
        let eps: Vec<Value> = s
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let n = &nodes[e.node];
                let mut v = json!({"addresses": [format!("10.1.0.{i}")],
                    "conditions": {"ready": e.ready}, "nodeName": n.name, "zone": n.zone});
                if let Some(h) = &e.hints {
                    v["hints"] =
                        json!({"forZones": h.iter().map(|z| json!({"name": z})).collect::<Vec<_>>()});
                }
                v
            })
            .collect();
        fake.apply("endpointslices", slice(&s.name, eps));
        if let Some(pods) = &s.callers {
            // A caller Deployment, and a Service of its own whose ready
            // endpoints are its pods.
            let caller = format!("{}-caller", s.name);
            let mut d = deployment("sim", &caller, pods.len() as i64);
            d["metadata"]["annotations"] = json!({"zonewise.io/calls": s.name});
            fake.apply("deployments", d);
            let mut cs = service("sim", &caller, json!({"app": caller}), false);
            cs["metadata"]["annotations"] = json!({"zonewise.io/skip": "true"});
            fake.apply("services", cs);
            let eps: Vec<Value> = pods
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    json!({"addresses": [format!("10.2.0.{i}")], "conditions": {"ready": true},
                           "nodeName": nodes[*n].name, "zone": nodes[*n].zone})
                })
                .collect();
            fake.apply("endpointslices", slice(&caller, eps));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_estimate_matches_a_request_by_request_simulation() {
    let mut rng = Rng(0x5EED_2026);
    let mut compared = 0;
    let mut by_setting: HashMap<String, usize> = HashMap::new();
    for cluster in 0..8 {
        let (nodes, services) = generate(&mut rng);
        let fake = FakeApi::start("1", "34").await;
        load(&fake, &nodes, &services);
        let kubeconfig = fake.kubeconfig.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_zonewise"))
                .args(["audit", "-o", "json", "--kubeconfig"])
                .arg(kubeconfig)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let modeled: HashMap<&str, &Value> = report["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["name"].as_str().unwrap(), s))
            .collect();
        for s in &services {
            let has_ready = s.endpoints.iter().any(|e| e.ready);
            let Some(m) = modeled.get(s.name.as_str()) else {
                assert!(!has_ready, "cluster {cluster}: {} not modeled", s.name);
                continue;
            };
            let what = format!("cluster {cluster}, {} ({:?})", s.name, s.setting);
            let (cross, dropped) = simulate(s, &nodes, s.setting, &mut rng);
            let model_cross = m["crossZone"]["today"].as_f64().unwrap();
            let model_dropped = m["dropped"]["today"].as_f64().unwrap_or(0.0);
            assert!(
                (model_cross - cross).abs() <= TOLERANCE,
                "{what}: model {model_cross}, simulated {cross}"
            );
            assert!(
                (model_dropped - dropped).abs() <= TOLERANCE,
                "{what}: dropped: model {model_dropped}, simulated {dropped}"
            );
            assert_eq!(
                m["clients"],
                if s.callers.is_some() {
                    "callers"
                } else {
                    "nodes"
                },
                "{what}"
            );
            // Where zonewise would route (no setting today, 1.34), the
            // figure after routing is the simulation under PreferSameZone.
            if s.setting == Setting::None {
                let (after, _) = simulate(s, &nodes, Setting::SameZone, &mut rng);
                let model = m["crossZone"]["afterRouting"].as_f64().unwrap();
                assert!(
                    (model - after).abs() <= TOLERANCE,
                    "{what}: after routing: model {model}, simulated {after}"
                );
            }
            compared += 1;
            *by_setting.entry(format!("{:?}", s.setting)).or_default() += 1;
        }
    }
    // Every setting was exercised, many times.
    assert_eq!(by_setting.len(), 5, "{by_setting:?}");
    assert!(by_setting.values().all(|n| *n >= 20), "{by_setting:?}");
    assert!(compared >= 200, "{compared}");
}
