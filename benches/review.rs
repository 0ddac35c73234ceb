//! Criterion benchmarks of the pure core, on fixed AdmissionReview bodies
//! (benches/fixtures: a ~2 KB Service, ~10 KB and ~20 KB Deployments).
//!
//!     cargo bench --bench review
//!
//! For each body: `parse_floor` (serde_json parsing the body into a `Value`
//! and nothing else) and `whole_review` (decode → typed check → rules →
//! patch → serialize the response), then a ratio table. Also each rule on
//! its own, and the extra cost of call-affinity answered from a populated
//! cluster cache instead of the config.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use serde_json::Value;
use zonewise::cluster::{ClusterCache, Metered, Scope};
use zonewise::core::admission::{Kind, Operation};
use zonewise::core::config::ObjectRef;
use zonewise::core::lookups::{InMemory, Lookups, NoCluster, ServiceFacts};
use zonewise::core::policy::Policy;
use zonewise::core::review::{Endpoint, review};
use zonewise::core::rules::{
    Context, Mutation, call_affinity, lb_ip_target, zone_routing, zone_spread,
};
use zonewise::core::wire;
use zonewise::telemetry::metrics::Metrics;

const BODIES: [(&str, &str); 3] = [
    ("service-2k", include_str!("fixtures/service-2k.json")),
    (
        "deployment-10k",
        include_str!("fixtures/deployment-10k.json"),
    ),
    (
        "deployment-20k",
        include_str!("fixtures/deployment-20k.json"),
    ),
];

fn whole(body: &[u8], policy: &Policy, lookups: &dyn Lookups) -> Vec<u8> {
    let req = wire::decode(body).expect("fixture decodes");
    let outcome = review(&req, policy, lookups, Endpoint::Mutate);
    wire::encode(&req.uid, &outcome)
}

fn object(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap();
    v["request"]["object"].clone()
}

fn floor_and_whole(c: &mut Criterion) {
    let policy = Policy::default();
    for (name, body) in BODIES {
        let body = body.as_bytes();
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function("parse_floor", |b| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(body)).unwrap())
        });
        g.bench_function("whole_review", |b| {
            b.iter(|| whole(black_box(body), &policy, &NoCluster))
        });
        g.finish();
    }
}

fn rules(c: &mut Criterion) {
    let policy = Policy::default();
    let mut g = c.benchmark_group("rules");
    let svc = object(BODIES[0].1);
    let dep = object(BODIES[1].1);
    let ctx = |kind| Context {
        kind,
        namespace: "shop",
        operation: Operation::Create,
        can_patch: true,
        policy: &policy,
        lookups: &NoCluster,
    };
    let (svc_ctx, dep_ctx) = (ctx(Kind::Service), ctx(Kind::Deployment));
    g.bench_function("zone-routing", |b| {
        b.iter(|| {
            let mut m = Mutation::new(black_box(&svc));
            zone_routing::apply(&svc, &svc_ctx, &mut m).unwrap();
            m.patch.len()
        })
    });
    g.bench_function("lb-ip-target", |b| {
        b.iter(|| {
            let mut m = Mutation::new(black_box(&svc));
            lb_ip_target::apply(&svc, &svc_ctx, &mut m).unwrap();
            m.patch.len()
        })
    });
    g.bench_function("zone-spread", |b| {
        b.iter(|| {
            let mut m = Mutation::new(black_box(&dep));
            zone_spread::apply(&dep, &dep_ctx, &mut m).unwrap();
            m.patch.len()
        })
    });
    g.bench_function("call-affinity", |b| {
        b.iter(|| {
            let mut m = Mutation::new(black_box(&dep));
            call_affinity::apply(&dep, &dep_ctx, &mut m).unwrap();
            m.patch.len()
        })
    });
    // The k8s-openapi check every review does before its rules.
    g.bench_function("typed-check-deployment-10k", |b| {
        b.iter(|| {
            use serde::Deserialize;
            k8s_openapi::api::apps::v1::Deployment::deserialize(black_box(&dep)).unwrap()
        })
    });
    g.finish();
}

/// The same 10 KB review (three callees) with lookups answered by a cache
/// holding 10,000 Services, against no cluster at all.
fn cache_lookups(c: &mut Criterion) {
    let policy = Policy::default();
    let mut snapshot = InMemory::default();
    for i in 0..10_000 {
        let ns = format!("team-{}", i % 100);
        let selector = BTreeMap::from([("app.kubernetes.io/name".to_string(), format!("svc-{i}"))]);
        snapshot.services.insert(
            ObjectRef::new(ns, format!("svc-{i}")),
            ServiceFacts {
                selector: Some(selector),
                local: false,
            },
        );
    }
    for (ns, name) in [
        ("billing", "payments"),
        ("shop", "inventory"),
        ("shop", "pricing"),
    ] {
        let selector = BTreeMap::from([("app.kubernetes.io/name".to_string(), name.to_string())]);
        snapshot.services.insert(
            ObjectRef::new(ns, name),
            ServiceFacts {
                selector: Some(selector),
                local: false,
            },
        );
    }
    let metrics = Arc::new(Metrics::default());
    let cache = ClusterCache::new(Scope::All, metrics.clone());
    cache.load_snapshot(snapshot);
    let cached = Metered {
        inner: cache,
        metrics: metrics.clone(),
    };
    let uncached = Metered {
        inner: NoCluster,
        metrics,
    };
    let body = BODIES[1].1.as_bytes();
    let mut g = c.benchmark_group("call-affinity-lookups");
    g.bench_function("no-cluster", |b| {
        b.iter(|| whole(black_box(body), &policy, &uncached))
    });
    g.bench_function("cache-10k-services", |b| {
        b.iter(|| whole(black_box(body), &policy, &cached))
    });
    g.finish();
}

/// Mean time of one benchmark from criterion's saved estimates, in ns.
fn mean_ns(group: &str, function: &str) -> Option<f64> {
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = format!("{dir}/criterion/{group}/{function}/new/estimates.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn summary() {
    println!(
        "\n{:<16} {:>8} {:>14} {:>14} {:>7}",
        "body", "bytes", "parse floor", "whole review", "ratio"
    );
    for (name, body) in BODIES {
        if let (Some(floor), Some(whole)) =
            (mean_ns(name, "parse_floor"), mean_ns(name, "whole_review"))
        {
            println!(
                "{name:<16} {:>8} {:>11.1} µs {:>11.1} µs {:>6.2}×  (target ≤ 2×)",
                body.len(),
                floor / 1e3,
                whole / 1e3,
                whole / floor
            );
        }
    }
    if let (Some(a), Some(b)) = (
        mean_ns("call-affinity-lookups", "no-cluster"),
        mean_ns("call-affinity-lookups", "cache-10k-services"),
    ) {
        println!(
            "\ncall-affinity from the cluster cache (10k Services): {:.1} µs vs {:.1} µs without ({:+.1} µs)",
            b / 1e3,
            a / 1e3,
            (b - a) / 1e3
        );
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    floor_and_whole(&mut c);
    rules(&mut c);
    cache_lookups(&mut c);
    c.final_summary();
    summary();
}
