//! zonewise against a large cluster, served by the fake API server of the
//! tests (`tests/common/fake_api.rs`) over HTTPS on loopback:
//!
//! 1. `zonewise audit` of 200 namespaces holding 10,000 Services, 10,000
//!    Deployments and 50,000 endpoints (10,000 EndpointSlices) on 600
//!    Nodes in three zones: wall time and peak RSS of the audit process
//!    (`/usr/bin/time`), for each output format.
//! 2. `zonewise serve`'s cluster cache with 5,000 Nodes (watched as
//!    metadata only, one zone label kept each) against none: resident
//!    memory once the cache has synced.
//!
//!     cargo bench --bench cluster
//!
//! The figures are printed, not asserted (BENCHMARKS.md has the last ones).

#[path = "../tests/common/fake_api.rs"]
mod fake_api;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fake_api::*;
use serde_json::json;

const NAMESPACES: usize = 200;
const SERVICES_PER_NS: usize = 50;
const ZONES: [&str; 3] = ["eu-west-1a", "eu-west-1b", "eu-west-1c"];

fn populate(fake: &FakeApi, nodes: usize) {
    fake.load(
        "nodes",
        (0..nodes).map(|i| node(&format!("node-{i:04}"), Some(ZONES[i % 3]), i % 50 != 0)),
    );
    fake.load(
        "namespaces",
        (0..NAMESPACES)
            .map(|n| namespace(&format!("team-{n:03}"), &[("zonewise.io/enabled", "true")])),
    );
    let names = || {
        (0..NAMESPACES).flat_map(|n| {
            (0..SERVICES_PER_NS).map(move |i| (format!("team-{n:03}"), format!("svc-{i:02}")))
        })
    };
    fake.load(
        "services",
        names().map(|(ns, name)| service(&ns, &name, json!({"app": name}), false)),
    );
    fake.load(
        "deployments",
        names().map(|(ns, name)| {
            let mut d = deployment(&ns, &name, 3);
            // A realistic pod template: most of a Deployment's bytes.
            d["spec"]["template"]["spec"]["containers"][0]["env"] = json!((0..30)
                .map(|i| json!({"name": format!("SETTING_{i}"), "value": format!("value-{i}-{}", "x".repeat(40))}))
                .collect::<Vec<_>>());
            d["metadata"]["annotations"] = json!({"zonewise.io/calls": "svc-00, svc-01.team-000"});
            d
        }),
    );
    // Five endpoints each, in all three zones for most Services.
    fake.load(
        "endpointslices",
        names().enumerate().map(|(k, (ns, name))| {
            let eps: Vec<(String, &str, bool)> = (0..5)
                .map(|i| {
                    let n = (k * 5 + i) % nodes;
                    (format!("node-{n:04}"), ZONES[n % 3], true)
                })
                .collect();
            let eps: Vec<(&str, &str, bool)> =
                eps.iter().map(|(n, z, r)| (n.as_str(), *z, *r)).collect();
            endpoint_slice(&ns, &name, 0, &eps, false)
        }),
    );
}

/// Runs `zonewise <args>` under /usr/bin/time: (seconds, peak RSS KiB,
/// stdout bytes).
fn timed(args: &[&str]) -> (f64, u64, usize) {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%e %M"])
        .arg(env!("CARGO_BIN_EXE_zonewise"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("/usr/bin/time");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    let mut f = last.split_whitespace();
    let secs = f.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let kib = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (secs, kib, out.stdout.len())
}

fn audit(rt: &tokio::runtime::Runtime) {
    let fake = rt.block_on(FakeApi::start("1", "34"));
    let started = Instant::now();
    populate(&fake, 600);
    eprintln!("fake cluster populated in {:?}", started.elapsed());
    let kubeconfig = fake.kubeconfig.display().to_string();
    println!(
        "\nzonewise audit: 200 namespaces, 10,000 Services, 10,000 Deployments, 50,000 endpoints, 600 Nodes"
    );
    println!(
        "{:<8} {:>10} {:>14} {:>14}",
        "output", "seconds", "peak RSS", "stdout"
    );
    for output in ["table", "json", "patch", "yaml"] {
        // The fake runs on the runtime's own threads meanwhile.
        let (secs, kib, bytes) = timed(&["audit", "--kubeconfig", &kubeconfig, "-o", output]);
        println!(
            "{output:<8} {secs:>10.2} {:>10.1} MiB {:>10.1} MiB",
            kib as f64 / 1024.0,
            bytes as f64 / 1024.0 / 1024.0
        );
    }
    let lists = fake
        .requests()
        .iter()
        .filter(|r| r.starts_with("list"))
        .count();
    println!("list requests served: {lists} (page size 500; every request a GET)");
    drop(fake);
}

/// RSS of `zonewise serve` once its cache has synced against `fake`.
fn serve_rss(fake: &FakeApi) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_zonewise"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .arg("--kubeconfig")
        .arg(&fake.kubeconfig)
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("cluster cache synced") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("cache synced");
    std::thread::sleep(Duration::from_millis(500));
    let rss = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();
    rss
}

fn cache_with_nodes(rt: &tokio::runtime::Runtime) {
    println!("\nzonewise serve's cluster cache, Nodes watched as metadata (zone label only)");
    println!("{:<8} {:>14}", "nodes", "RSS synced");
    let mut base = 0;
    for nodes in [0, 5_000] {
        let fake = rt.block_on(FakeApi::start("1", "34"));
        fake.load(
            "nodes",
            (0..nodes).map(|i| {
                node(
                    &format!("ip-10-0-{}-{}.eu-west-1.compute.internal", i / 250, i % 250),
                    Some(ZONES[i % 3]),
                    true,
                )
            }),
        );
        let kib = serve_rss(&fake);
        if nodes == 0 {
            base = kib;
        }
        println!(
            "{nodes:<8} {:>10.1} MiB  ({:+.1} MiB)",
            kib as f64 / 1024.0,
            (kib as f64 - base as f64) / 1024.0
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    audit(&rt);
    cache_with_nodes(&rt);
}
