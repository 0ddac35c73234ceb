//! The dependency tree as `cargo metadata` resolves it from Cargo.lock,
//! checked offline: every crate comes from crates.io, TLS is rustls on ring
//! (no OpenSSL, no native-tls, no aws-lc C build), and every license is one
//! a webhook shipped to clusters can carry. Security advisories need the
//! RustSec database from the network: `cargo deny check advisories` (see
//! SECURITY.md).

use std::process::Command;

use serde_json::Value;

fn metadata() -> Value {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Packages in the normal (non-dev, non-build) dependency closure of
/// zonewise: what ships in the binary.
fn shipped(meta: &Value) -> Vec<&Value> {
    let root = meta["resolve"]["root"].as_str().unwrap();
    let nodes: std::collections::HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            if normal {
                stack.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| seen.contains(p["id"].as_str().unwrap()))
        .collect()
}

#[test]
fn every_dependency_comes_from_crates_io() {
    let meta = metadata();
    for p in meta["packages"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        match p["source"].as_str() {
            None => assert_eq!(name, "zonewise", "only zonewise itself is a path crate"),
            Some(src) => assert!(
                src.starts_with("registry+https://github.com/rust-lang/crates.io-index"),
                "{name} comes from {src}"
            ),
        }
    }
}

#[test]
fn tls_is_rustls_on_ring_only() {
    let meta = metadata();
    let names: Vec<&str> = shipped(&meta)
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for banned in [
        "openssl",
        "openssl-sys",
        "native-tls",
        "aws-lc-rs",
        "aws-lc-sys",
    ] {
        assert!(
            !names.contains(&banned),
            "{banned} is in the shipped dependency tree"
        );
    }
    assert!(names.contains(&"rustls") && names.contains(&"ring"));
}

const ALLOWED: &[&str] = &[
    "MIT",
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Zlib",
    "Unicode-3.0",
    "Unicode-DFS-2016",
    "CC0-1.0",
    "0BSD",
    "BSL-1.0",
    "MPL-2.0",
    "CDLA-Permissive-2.0",
    "Unlicense",
];

/// Whether an SPDX expression (`A OR B`, `A AND B`, `A/B`, parentheses) can
/// be satisfied with allowed licenses only.
fn satisfiable(expr: &str) -> bool {
    let expr = expr.replace(['(', ')'], " ");
    expr.split(" OR ")
        .flat_map(|alt| alt.split('/'))
        .any(|alt| alt.split(" AND ").all(|lic| ALLOWED.contains(&lic.trim())))
}

#[test]
fn licenses_are_on_the_allow_list() {
    let meta = metadata();
    let mut bad = Vec::new();
    for p in shipped(&meta) {
        let name = p["name"].as_str().unwrap();
        match p["license"].as_str() {
            Some(l) if satisfiable(l) => {}
            other => bad.push(format!("{name}: {other:?}")),
        }
    }
    assert!(
        bad.is_empty(),
        "licenses outside the allow list:\n{}",
        bad.join("\n")
    );
}

#[test]
fn spdx_expressions() {
    assert!(satisfiable("MIT OR Apache-2.0"));
    assert!(satisfiable("(MIT OR Apache-2.0) AND Unicode-3.0"));
    assert!(satisfiable("Apache-2.0 AND ISC"));
    assert!(satisfiable("MIT/Apache-2.0"));
    assert!(!satisfiable("GPL-3.0-only"));
    assert!(!satisfiable("MIT AND GPL-2.0"));
}
