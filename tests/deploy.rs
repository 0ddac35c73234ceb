//! deploy/ as `kubectl kustomize` renders it: base and both overlays,
//! checked field by field against docs/design.md. Needs `kubectl` on PATH (only
//! its offline `kustomize` subcommand is used).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kustomize(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "`kubectl` is needed for the deploy tests (offline `kubectl kustomize` only): {e}"
            )
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_multiple::<Value>(&String::from_utf8(out.stdout).unwrap())
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in render"))
}

/// A self-managed overlay needs certificates from `zonewise certs`; render a
/// copy of deploy/ with freshly generated ones.
fn render_self_managed() -> (Vec<Value>, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("deploy"), &tmp.path().join("deploy"));
    let certs = tmp.path().join("deploy/overlays/self-managed/certs");
    let out = Command::new(env!("CARGO_BIN_EXE_zonewise"))
        .args(["certs", "--out"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        kustomize(&tmp.path().join("deploy/overlays/self-managed")),
        tmp,
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Every object parses as its k8s-openapi type (catches misspelled fields
/// that would fail on `kubectl apply`).
fn typed_check(objs: &[Value]) {
    use k8s_openapi::api::{
        admissionregistration::v1 as ar, apps::v1 as apps, core::v1 as core, policy::v1 as policy,
        rbac::v1 as rbac,
    };
    for o in objs {
        let kind = o["kind"].as_str().unwrap();
        let r = match kind {
            "Namespace" => serde_json::from_value::<core::Namespace>(o.clone()).map(drop),
            "ServiceAccount" => serde_json::from_value::<core::ServiceAccount>(o.clone()).map(drop),
            "ConfigMap" => serde_json::from_value::<core::ConfigMap>(o.clone()).map(drop),
            "Secret" => {
                // kustomize wraps long base64 values; Go's decoder skips the
                // newlines, k8s-openapi's does not.
                let mut o = o.clone();
                for v in o["data"]
                    .as_object_mut()
                    .into_iter()
                    .flat_map(|m| m.values_mut())
                {
                    *v = Value::String(v.as_str().unwrap().split_whitespace().collect());
                }
                serde_json::from_value::<core::Secret>(o).map(drop)
            }
            "Service" => serde_json::from_value::<core::Service>(o.clone()).map(drop),
            "Deployment" => serde_json::from_value::<apps::Deployment>(o.clone()).map(drop),
            "PodDisruptionBudget" => {
                serde_json::from_value::<policy::PodDisruptionBudget>(o.clone()).map(drop)
            }
            "ClusterRole" => serde_json::from_value::<rbac::ClusterRole>(o.clone()).map(drop),
            "ClusterRoleBinding" => {
                serde_json::from_value::<rbac::ClusterRoleBinding>(o.clone()).map(drop)
            }
            "MutatingWebhookConfiguration" => {
                serde_json::from_value::<ar::MutatingWebhookConfiguration>(o.clone()).map(drop)
            }
            "ValidatingWebhookConfiguration" => {
                serde_json::from_value::<ar::ValidatingWebhookConfiguration>(o.clone()).map(drop)
            }
            // cert-manager CRDs have no k8s-openapi type.
            "Issuer" | "Certificate" => Ok(()),
            other => panic!("unexpected kind {other} in deploy/"),
        };
        r.unwrap_or_else(|e| panic!("{kind} {}: {e}", o["metadata"]["name"]));
    }
}

fn check_namespace_selector(webhook: &Value) {
    let exprs = webhook["namespaceSelector"]["matchExpressions"]
        .as_array()
        .unwrap();
    let opt_in = exprs
        .iter()
        .find(|e| e["key"] == "zonewise.io/enabled")
        .expect("opt-in label");
    assert_eq!(opt_in["operator"], "In");
    assert_eq!(strings(&opt_in["values"]), ["true"]);
    let never = exprs
        .iter()
        .find(|e| e["key"] == "kubernetes.io/metadata.name")
        .expect("system namespaces excluded by name");
    assert_eq!(never["operator"], "NotIn");
    let names = strings(&never["values"]);
    assert!(
        names.contains(&"kube-system") && names.contains(&"zonewise-system"),
        "{names:?}"
    );
}

#[test]
fn base_renders_everything_the_design_lists() {
    let objs = kustomize(&repo().join("deploy/base"));
    typed_check(&objs);
    for (kind, name) in [
        ("Namespace", "zonewise-system"),
        ("ServiceAccount", "zonewise"),
        ("ClusterRole", "zonewise-read"),
        ("ClusterRoleBinding", "zonewise-read"),
        ("ConfigMap", "zonewise-config"),
        ("Deployment", "zonewise"),
        ("PodDisruptionBudget", "zonewise"),
        ("Service", "zonewise"),
        ("MutatingWebhookConfiguration", "zonewise"),
        ("ValidatingWebhookConfiguration", "zonewise"),
    ] {
        find(&objs, kind, name);
    }
    for o in &objs {
        if o["kind"] != "Namespace"
            && !o["kind"].as_str().unwrap().starts_with("Cluster")
            && !o["kind"]
                .as_str()
                .unwrap()
                .ends_with("WebhookConfiguration")
        {
            assert_eq!(
                o["metadata"]["namespace"], "zonewise-system",
                "{}",
                o["kind"]
            );
        }
    }
}

#[test]
fn mutating_webhook_is_exactly_as_designed() {
    let objs = kustomize(&repo().join("deploy/base"));
    let cfg = find(&objs, "MutatingWebhookConfiguration", "zonewise");
    let hooks = cfg["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1);
    let w = &hooks[0];
    assert_eq!(
        w["sideEffects"], "None",
        "so kubectl apply --dry-run=server works"
    );
    assert_eq!(strings(&w["admissionReviewVersions"]), ["v1"]);
    assert_eq!(
        w["failurePolicy"], "Ignore",
        "an outage must not block deploys"
    );
    assert_eq!(w["reinvocationPolicy"], "IfNeeded");
    let timeout = w["timeoutSeconds"].as_u64().unwrap();
    assert!((1..=5).contains(&timeout), "short timeout, got {timeout}");
    check_namespace_selector(w);
    assert_eq!(w["clientConfig"]["service"]["path"], "/mutate");
    assert_eq!(w["clientConfig"]["service"]["name"], "zonewise");
    assert_eq!(w["clientConfig"]["service"]["namespace"], "zonewise-system");
    assert_eq!(w["clientConfig"]["service"]["port"], 443);
    let rules = w["rules"].as_array().unwrap();
    let covers = |group: &str, resource: &str| {
        rules.iter().any(|r| {
            strings(&r["apiGroups"]).contains(&group)
                && strings(&r["resources"]).contains(&resource)
                && strings(&r["operations"]).contains(&"CREATE")
        })
    };
    // Every kind a rule acts on, from the rule table itself.
    for kind in zonewise::core::admission::Kind::ALL {
        let (group, ..) = kind.api();
        assert!(
            covers(group, kind.resource()),
            "{kind} not sent to the webhook"
        );
    }
}

#[test]
fn validating_webhook_only_sees_services_turning_local() {
    let objs = kustomize(&repo().join("deploy/base"));
    let cfg = find(&objs, "ValidatingWebhookConfiguration", "zonewise");
    let w = &cfg["webhooks"][0];
    assert_eq!(w["failurePolicy"], "Fail");
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(strings(&w["admissionReviewVersions"]), ["v1"]);
    assert!(w["timeoutSeconds"].as_u64().unwrap() <= 5);
    check_namespace_selector(w);
    assert_eq!(w["clientConfig"]["service"]["path"], "/validate");
    let rule = &w["rules"][0];
    assert_eq!(strings(&rule["resources"]), ["services"]);
    assert_eq!(strings(&rule["operations"]), ["CREATE", "UPDATE"]);
    let cond = w["matchConditions"][0]["expression"].as_str().unwrap();
    assert!(
        cond.contains("object.spec.internalTrafficPolicy == 'Local'"),
        "{cond}"
    );
    assert!(
        cond.contains("oldObject.spec.internalTrafficPolicy != 'Local'"),
        "{cond}"
    );
}

#[test]
fn deployment_is_hardened_spread_and_probed() {
    let objs = kustomize(&repo().join("deploy/base"));
    let d = find(&objs, "Deployment", "zonewise");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    let keys: Vec<&str> = pod["topologySpreadConstraints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["topologyKey"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["serviceAccountName"], "zonewise");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();

    // Every container of every workload: the security settings.
    for obj in objs.iter().filter(|o| o["kind"] == "Deployment") {
        for c in obj["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
        {
            let sc = &c["securityContext"];
            assert_eq!(sc["runAsNonRoot"], true, "{}", c["name"]);
            assert_eq!(sc["readOnlyRootFilesystem"], true);
            assert_eq!(sc["allowPrivilegeEscalation"], false);
            assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
            assert!(c["resources"]["requests"]["cpu"].is_string());
            assert!(c["resources"]["requests"]["memory"].is_string());
            assert!(c["resources"]["limits"]["memory"].is_string());
        }
    }

    let c = &pod["containers"][0];
    let args = strings(&c["args"]);
    assert_eq!(args[0], "serve");
    let arg = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("--{name} missing: {args:?}"))
    };
    assert_eq!(arg("log-format"), "json");
    let shutdown: u64 = arg("shutdown-grace").trim_end_matches('s').parse().unwrap();
    assert!(
        shutdown < grace,
        "drain fits in terminationGracePeriodSeconds"
    );
    // The probes hit the metrics port, where /healthz and /readyz live.
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");
    let port = |name: &str| {
        c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["containerPort"]
            .as_u64()
            .unwrap()
    };
    assert!(arg("metrics-listen").ends_with(&format!(":{}", port("metrics"))));
    assert!(arg("listen").ends_with(&format!(":{}", port("webhook"))));
    // Certificate and config paths are where the volumes are mounted.
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mounted = |path: &str| {
        mounts
            .iter()
            .any(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
    };
    assert!(mounted(arg("tls-cert")) && mounted(arg("tls-key")) && mounted(arg("config")));
    let tls_volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tls")
        .unwrap();
    assert_eq!(tls_volume["secret"]["secretName"], "zonewise-tls");
    // The downward API tells zonewise which namespace is its own.
    assert_eq!(c["env"][0]["name"], "POD_NAMESPACE");

    // Service 443 → the webhook port; PDB keeps one replica.
    let svc = find(&objs, "Service", "zonewise");
    let https = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == 443)
        .unwrap();
    assert_eq!(https["targetPort"], "webhook");
    assert_eq!(
        svc["spec"]["selector"],
        d["spec"]["selector"]["matchLabels"]
    );
    let pdb = find(&objs, "PodDisruptionBudget", "zonewise");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["selector"], d["spec"]["selector"]);
}

#[test]
fn rbac_is_read_only_and_covers_what_the_cache_watches() {
    let objs = kustomize(&repo().join("deploy/base"));
    let role = find(&objs, "ClusterRole", "zonewise-read");
    let rules = role["rules"].as_array().unwrap();
    let mut seen = Vec::new();
    for r in rules {
        assert_eq!(strings(&r["verbs"]), ["get", "list", "watch"], "read-only");
        for res in strings(&r["resources"]) {
            seen.push(format!("{}/{res}", strings(&r["apiGroups"]).join(",")));
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        ["/namespaces", "/nodes", "/services", "apps/daemonsets"]
    );
    let binding = find(&objs, "ClusterRoleBinding", "zonewise-read");
    assert_eq!(binding["subjects"][0]["name"], "zonewise");
    assert_eq!(binding["subjects"][0]["namespace"], "zonewise-system");
}

#[test]
fn shipped_config_is_valid() {
    let objs = kustomize(&repo().join("deploy/base"));
    let cm = find(&objs, "ConfigMap", "zonewise-config");
    let text = cm["data"]["config.yaml"].as_str().unwrap();
    let config = zonewise::core::config::Config::from_yaml(text).unwrap();
    assert!(
        config
            .excluded_namespaces
            .contains(&"zonewise-system".to_string())
    );
}

#[test]
fn cert_manager_overlay_injects_the_ca() {
    let objs = kustomize(&repo().join("deploy/overlays/cert-manager"));
    typed_check(&objs);
    let cert = find(&objs, "Certificate", "zonewise-serving");
    assert_eq!(
        cert["spec"]["secretName"], "zonewise-tls",
        "the Secret the Deployment mounts"
    );
    let names = strings(&cert["spec"]["dnsNames"]);
    assert!(names.contains(&"zonewise.zonewise-system.svc"), "{names:?}");
    let issuer = find(
        &objs,
        "Issuer",
        cert["spec"]["issuerRef"]["name"].as_str().unwrap(),
    );
    assert!(
        issuer["spec"]["ca"].is_object(),
        "signed by a long-lived CA, not self-signed"
    );
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        let cfg = find(&objs, kind, "zonewise");
        assert_eq!(
            cfg["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            "zonewise-system/zonewise-serving",
            "{kind}"
        );
    }
}

#[test]
fn self_managed_overlay_carries_generated_certs() {
    let (objs, tmp) = render_self_managed();
    typed_check(&objs);
    let certs = tmp.path().join("deploy/overlays/self-managed/certs");
    let secret = find(&objs, "Secret", "zonewise-tls");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    // kustomize wraps long base64 lines; the API server's decoder skips them.
    let unwrap = |s: &str| s.split_whitespace().collect::<String>();
    let crt = b64
        .decode(unwrap(secret["data"]["tls.crt"].as_str().unwrap()))
        .unwrap();
    assert_eq!(crt, std::fs::read(certs.join("tls.crt")).unwrap());
    let ca = std::fs::read(certs.join("ca.crt")).unwrap();
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        let bundle = find(&objs, kind, "zonewise")["webhooks"][0]["clientConfig"]["caBundle"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            b64.decode(unwrap(&bundle)).unwrap(),
            ca,
            "{kind} trusts the generated CA"
        );
    }
    // The helper ConfigMap is not deployed, and the CA key never is.
    assert!(
        !objs
            .iter()
            .any(|o| o["metadata"]["name"] == "zonewise-ca-bundle")
    );
    let text = serde_json::to_string(&objs).unwrap();
    let ca_key = std::fs::read_to_string(certs.join("ca.key")).unwrap();
    assert!(!text.contains(&b64.encode(ca_key.as_bytes())));
}

#[test]
fn labelled_namespaces_component_only_narrows_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("deploy"), &tmp.path().join("deploy"));
    let overlay = tmp.path().join("deploy/overlays/labelled");
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        "resources: [../../base]\ncomponents: [../../components/labelled-namespaces]\n",
    )
    .unwrap();
    let objs = kustomize(&overlay);
    typed_check(&objs);
    let base = kustomize(&repo().join("deploy/base"));
    assert_eq!(
        find(&objs, "ClusterRole", "zonewise-read"),
        find(&base, "ClusterRole", "zonewise-read"),
        "no extra permissions"
    );
    let args = strings(
        &find(&objs, "Deployment", "zonewise")["spec"]["template"]["spec"]["containers"][0]["args"],
    );
    assert!(args.contains(&"--cache-namespaces=labelled"), "{args:?}");
}

/// The audit's ClusterRole grants `list` on exactly what `zonewise audit`
/// lists, and nothing else.
#[test]
fn audit_reader_component_is_list_only_and_matches_the_audit() {
    let objs = kustomize(&repo().join("deploy/overlays/audit"));
    typed_check(&objs);
    assert_eq!(objs.len(), 1, "only the ClusterRole");
    let role = find(&objs, "ClusterRole", "zonewise-audit");
    let mut granted = Vec::new();
    for r in role["rules"].as_array().unwrap() {
        assert_eq!(strings(&r["verbs"]), ["list"], "list only: {r}");
        for group in strings(&r["apiGroups"]) {
            for res in strings(&r["resources"]) {
                granted.push(format!("{group}/{res}"));
            }
        }
    }
    granted.sort();
    let mut listed: Vec<String> = zonewise::cmd::audit::list::RESOURCES
        .iter()
        .map(|r| format!("{}/{}", r.group, r.plural))
        .collect();
    listed.sort();
    assert_eq!(granted, listed);
}
