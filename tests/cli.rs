//! The `zonewise` binary's offline commands, run as a user runs them, on the
//! example manifests: `mutate`, `check-config`, `certs`.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use base64::Engine;
use common::example;
use serde_json::Value;

fn zonewise(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zonewise"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn path(name: &str) -> String {
    example(name).display().to_string()
}

#[test]
fn mutate_examples_to_yaml() {
    let out = zonewise(&["mutate", "-f", &path("shop.yaml")], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text(&out.stdout)).unwrap();
    assert_eq!(docs.len(), 4);
    // orders Service: zone routing
    assert_eq!(docs[0]["spec"]["trafficDistribution"], "PreferClose");
    // orders Deployment: zone + hostname spread
    let tsc = docs[1]["spec"]["template"]["spec"]["topologySpreadConstraints"]
        .as_array()
        .unwrap();
    assert_eq!(tsc.len(), 2);
    // storefront: affinity to orders (same namespace) and payments (billing)
    let terms = &docs[2]["spec"]["template"]["spec"]["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
    assert_eq!(terms[1]["podAffinityTerm"]["namespaces"][0], "billing");
    // storefront LB: IP targets, existing annotation kept
    let ann = &docs[3]["metadata"]["annotations"];
    assert_eq!(
        ann["service.beta.kubernetes.io/aws-load-balancer-nlb-target-type"],
        "ip"
    );
    assert_eq!(
        ann["service.beta.kubernetes.io/aws-load-balancer-scheme"],
        "internet-facing"
    );
    // Each deserializes into its k8s-openapi type.
    serde_json::from_value::<k8s_openapi::api::core::v1::Service>(docs[0].clone()).unwrap();
    serde_json::from_value::<k8s_openapi::api::apps::v1::Deployment>(docs[2].clone()).unwrap();
    // The guesses made without a cluster are reported, kubectl-style.
    let err = text(&out.stderr);
    assert!(
        err.contains("Warning: zonewise: call-affinity: selector of Service shop/orders unknown"),
        "{err}"
    );
}

#[test]
fn mutated_output_is_stable() {
    let first = zonewise(&["mutate", "-f", &path("shop.yaml")], None);
    let again = zonewise(&["mutate", "-f", "-", "-o", "patch"], Some(&first.stdout));
    assert!(again.status.success(), "{}", text(&again.stderr));
    let printed = text(&again.stdout);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines, vec!["[]"; 4], "baking the output into Git converges");
}

#[test]
fn mutate_json_and_review_outputs() {
    let out = zonewise(&["mutate", "-f", &path("shop.yaml"), "-o", "json"], None);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().unwrap().len(), 4);

    let out = zonewise(
        &[
            "mutate",
            "-f",
            &path("admission-review.json"),
            "-o",
            "review",
        ],
        None,
    );
    assert!(out.status.success());
    let review: Value = serde_json::from_slice(&out.stdout).unwrap();
    let request: Value =
        serde_json::from_slice(&std::fs::read(example("admission-review.json")).unwrap()).unwrap();
    assert_eq!(review["response"]["uid"], request["request"]["uid"]);
    assert_eq!(review["response"]["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(review["response"]["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut obj = request["request"]["object"].clone();
    json_patch::patch(&mut obj, &patch).unwrap();
    assert_eq!(obj["spec"]["trafficDistribution"], "PreferClose");
}

#[test]
fn mutate_denial_exits_non_zero_with_the_reason() {
    let out = zonewise(&["mutate", "-f", &path("local-service.yaml")], None);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("Service shop/cache denied"), "{err}");
    assert!(err.contains("internalTrafficPolicy: Local"), "{err}");
    assert!(err.contains("zonewise.io/allow-local"), "{err}");
}

#[test]
fn mutate_with_config_uses_declared_selectors() {
    let out = zonewise(
        &[
            "mutate",
            "-f",
            &path("shop.yaml"),
            "--config",
            &path("config.yaml"),
            "-o",
            "json",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let terms = &list["items"][2]["spec"]["template"]["spec"]["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
    assert_eq!(
        terms[1]["podAffinityTerm"]["labelSelector"]["matchLabels"],
        serde_json::json!({"app.kubernetes.io/name": "payments"})
    );
}

#[test]
fn mutate_bad_input_exits_2() {
    let out = zonewise(&["mutate", "-f", "-"], Some(b"kind: [unclosed"));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("error:"));
    let out = zonewise(&["mutate", "-f", "/nonexistent.yaml"], None);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_config_prints_policy_or_names_the_field() {
    let out = zonewise(&["check-config", &path("config.yaml")], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(printed.contains("routing: PreferClose"), "{printed}");
    assert!(
        printed.contains("zone-routing: trafficDistribution: PreferClose"),
        "{printed}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "deployment:\n  callAffinity:\n    weight: 500\n").unwrap();
    let out = zonewise(&["check-config", bad.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("deployment.callAffinity.weight"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn certs_writes_a_usable_pair_and_prints_the_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let out = zonewise(&["certs", "--out", dir.path().to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
    let printed = text(&out.stdout);
    let bundle = base64::engine::general_purpose::STANDARD
        .decode(printed.trim())
        .unwrap();
    assert_eq!(bundle, ca, "stdout is the caBundle");
    let pair =
        zonewise::tls::load_pair(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap();
    assert!(pair.not_after > 0);
    let pem = std::fs::read(dir.path().join("tls.crt")).unwrap();
    let (_, p) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = p.parse_x509().unwrap();
    let sans = format!(
        "{:?}",
        cert.subject_alternative_name().unwrap().unwrap().value
    );
    assert!(sans.contains("zonewise.zonewise-system.svc"), "{sans}");
}

#[test]
fn certs_again_keeps_the_ca_so_the_ca_bundle_stays_valid() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().to_str().unwrap();
    let first = zonewise(&["certs", "--out", out_dir], None);
    let serving = std::fs::read(dir.path().join("tls.crt")).unwrap();
    let second = zonewise(&["certs", "--out", out_dir], None);
    assert!(second.status.success());
    assert_eq!(first.stdout, second.stdout, "same caBundle");
    assert_ne!(
        std::fs::read(dir.path().join("tls.crt")).unwrap(),
        serving,
        "new serving certificate"
    );
    assert!(text(&second.stderr).contains("reusing the CA"));
    let third = zonewise(&["certs", "--out", out_dir, "--new-ca"], None);
    assert_ne!(third.stdout, first.stdout, "--new-ca replaces it");
}
