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
    assert!(printed.contains("routing: auto"), "{printed}");
    // No version known: auto sets what every server with the field takes.
    assert!(
        printed.contains("zone-routing: trafficDistribution: PreferClose"),
        "{printed}"
    );
    assert!(printed.contains("kubernetes version: unknown"), "{printed}");

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
        zonewise::server::tls::load_pair(&dir.path().join("tls.crt"), &dir.path().join("tls.key"))
            .unwrap();
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

/// The routing a manifest gets for a given API server version, offline.
fn routing_in(stdout: &[u8]) -> String {
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text(stdout)).unwrap();
    let svc = &docs[0];
    match (
        svc["spec"]["trafficDistribution"].as_str(),
        svc["metadata"]["annotations"]["service.kubernetes.io/topology-mode"].as_str(),
    ) {
        (Some(v), None) => v.to_string(),
        (None, Some("Auto")) => "annotation".into(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn mutate_follows_the_kube_version() {
    for (version, want) in [
        (None, "PreferClose"),
        (Some("1.29"), "annotation"),
        (Some("1.33"), "PreferClose"),
        (Some("1.34"), "PreferSameZone"),
        (Some("v1.36.2"), "PreferSameZone"),
        (Some("1.37"), "PreferSameZone"),
        (Some("1.38"), "PreferSameZone"),
    ] {
        let shop = path("shop.yaml");
        let mut args = vec!["mutate", "-f", shop.as_str()];
        if let Some(v) = version {
            args.extend(["--kube-version", v]);
        }
        let out = zonewise(&args, None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(routing_in(&out.stdout), want, "{version:?}");
        assert!(!text(&out.stderr).contains("not accepted"), "{version:?}");
        // A newer server is answered as the newest known, said on stderr.
        assert_eq!(
            text(&out.stderr).contains("1.38 is newer than 1.37, answered as 1.37"),
            version == Some("1.38"),
            "{version:?}: {}",
            text(&out.stderr)
        );
    }
    // A configured value 1.33 rejects is replaced, with a warning.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(&config, "service: {routing: PreferSameZone}\n").unwrap();
    let out = zonewise(
        &[
            "mutate",
            "-f",
            &path("shop.yaml"),
            "--kube-version",
            "1.33",
            "--config",
            config.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(routing_in(&out.stdout), "PreferClose");
    assert!(
        text(&out.stderr).contains("PreferSameZone is not accepted by Kubernetes 1.33"),
        "{}",
        text(&out.stderr)
    );
    // The version also comes from the config.
    std::fs::write(&config, "kubernetesVersion: \"1.30\"\n").unwrap();
    let out = zonewise(
        &[
            "mutate",
            "-f",
            &path("shop.yaml"),
            "--config",
            config.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(routing_in(&out.stdout), "annotation");
    // And the denial offers what the version takes.
    let out = zonewise(
        &[
            "mutate",
            "-f",
            &path("local-service.yaml"),
            "--kube-version",
            "1.36",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("PreferSameNode"),
        "{}",
        text(&out.stderr)
    );
    let out = zonewise(
        &[
            "mutate",
            "-f",
            &path("local-service.yaml"),
            "--kube-version",
            "1.33",
        ],
        None,
    );
    assert!(
        !text(&out.stderr).contains("PreferSameNode"),
        "{}",
        text(&out.stderr)
    );
    let out = zonewise(
        &[
            "mutate",
            "-f",
            &path("shop.yaml"),
            "--kube-version",
            "latest",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_config_shows_the_policy_for_a_version() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    for (routing, version, effective, note) in [
        ("auto", "1.36", "trafficDistribution: PreferSameZone", None),
        ("auto", "1.33", "trafficDistribution: PreferClose", None),
        (
            "auto",
            "1.29",
            "service.kubernetes.io/topology-mode: Auto",
            None,
        ),
        (
            "PreferSameZone",
            "1.36",
            "trafficDistribution: PreferSameZone",
            None,
        ),
        (
            "PreferSameZone",
            "1.33",
            "trafficDistribution: PreferClose",
            Some("not accepted by Kubernetes 1.33"),
        ),
        (
            "PreferClose",
            "1.36",
            "trafficDistribution: PreferClose",
            Some("deprecated on Kubernetes 1.36"),
        ),
        (
            "PreferClose",
            "1.30",
            "service.kubernetes.io/topology-mode: Auto",
            Some("not accepted by Kubernetes 1.30"),
        ),
        (
            "annotation",
            "1.36",
            "service.kubernetes.io/topology-mode: Auto",
            None,
        ),
        ("off", "1.36", "zone-routing: off", None),
        ("auto", "1.37", "trafficDistribution: PreferSameZone", None),
        (
            "auto",
            "1.38",
            "trafficDistribution: PreferSameZone",
            Some("newer than 1.37, answered as 1.37"),
        ),
        (
            "auto",
            "1.27",
            "service.kubernetes.io/topology-mode: Auto",
            Some("older than 1.29 and out of support"),
        ),
    ] {
        std::fs::write(&config, format!("service: {{routing: {routing}}}\n")).unwrap();
        let out = zonewise(
            &[
                "check-config",
                config.to_str().unwrap(),
                "--kube-version",
                version,
            ],
            None,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let shown = text(&out.stdout);
        assert!(
            shown.contains(&format!(
                "kubernetes version: {version} (from --kube-version)"
            )),
            "{shown}"
        );
        assert!(shown.contains(effective), "{routing} on {version}: {shown}");
        assert!(!shown.contains("outside the supported"), "{shown}");
        match note {
            Some(n) => assert!(shown.contains(n), "{routing} on {version}: {shown}"),
            None => assert!(
                !shown.contains("# note:"),
                "{routing} on {version}: {shown}"
            ),
        }
    }
    // The same file reading as serve: UTF-8 or an error.
    std::fs::write(&config, b"service: {routing: auto}\n# caf\xe9\n").unwrap();
    let out = zonewise(&["check-config", config.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not UTF-8"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn mutate_statefulsets_and_ingresses() {
    let out = zonewise(&["mutate", "-f", &path("stateful-and-ingress.yaml")], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text(&out.stdout)).unwrap();
    let tsc = docs[0]["spec"]["template"]["spec"]["topologySpreadConstraints"]
        .as_array()
        .unwrap();
    assert_eq!(tsc.len(), 2);
    assert!(
        tsc.iter().all(|c| c.get("matchLabelKeys").is_none()),
        "no pod-template-hash: {tsc:?}"
    );
    assert_eq!(
        docs[0]["metadata"]["annotations"]["zonewise.io/applied"],
        "zone-spread,call-affinity"
    );
    assert_eq!(
        docs[1]["metadata"]["annotations"]["alb.ingress.kubernetes.io/target-type"],
        "ip"
    );
    assert!(
        text(&out.stderr).contains("pod-readiness-gate-inject"),
        "{}",
        text(&out.stderr)
    );
}
