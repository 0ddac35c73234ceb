//! Any bytes as an AdmissionReview body, through the admission path: decode
//! (sparse), review on both endpoints under two policies, encode.
//! Invariants: no panic; the response is valid JSON; a body that decodes
//! sparsely decodes whole too, but for the two things the sparse parse only
//! scans where no rule reads ([`only_scanned`]); a patch applies to the
//! whole object; and where the whole object parses as its Kubernetes type,
//! the answer is the same whether the object was read sparsely or whole
//! (the property test's invariant, on inputs no generator writes).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use zonewise::core::config::Config;
use zonewise::core::lookups::NoCluster;
use zonewise::core::policy::{Environment, Policy};
use zonewise::core::review::{Endpoint, review};
use zonewise::core::wire::{self, Objects};
use zonewise_fuzz::only_scanned;

/// The built-in policy, and one that reaches the rules' other branches:
/// known zones (zone-spread's capacity warnings and its read of kubectl's
/// last-applied record), a call graph with a declared selector, a version
/// that converts Local Services, and DoNotSchedule spreading.
static POLICIES: LazyLock<[Policy; 2]> = LazyLock::new(|| {
    let config = Config::from_yaml(
        "kubernetesVersion: \"1.34\"\nzones: [a, b, c]\n\
         service: {localPolicy: convert}\n\
         deployment: {zoneSpread: {whenUnsatisfiable: DoNotSchedule, minDomains: 3}}\n\
         callGraph: [{from: shop/web, to: [shop/orders, billing/payments]}]\n\
         serviceSelectors: {billing/payments: {app: pay}}\n",
    )
    .expect("the fuzz policy loads");
    [
        Policy::default(),
        Policy::new(config, &Environment::default()),
    ]
});

fuzz_target!(|data: &[u8]| {
    let Ok(req) = wire::decode(data) else { return };
    let full = match wire::decode_with(data, Objects::Full) {
        Ok(full) => Some(full),
        Err(e) if only_scanned(&e) => None,
        Err(e) => panic!("a body that decodes sparsely decodes whole: {e}"),
    };
    for (policy, endpoint) in POLICIES
        .iter()
        .flat_map(|p| [(p, Endpoint::Mutate), (p, Endpoint::Validate)])
    {
        let out = review(&req, policy, &NoCluster, endpoint);
        let bytes = wire::encode(&req.uid, &out);
        serde_json::from_slice::<serde_json::Value>(&bytes).expect("response is JSON");
        let Some(full) = &full else { continue };
        // The sparse parse keeps only what the rules declare they read; a
        // read they do not declare shows up as a different answer. Only
        // where the whole object is well-typed: otherwise the whole check
        // refuses what the sparse one never sees, by design; and only where
        // the sparse parse kept the object (the value budget is the
        // admission path's alone).
        if !req.oversized {
            let whole = review(full, policy, &NoCluster, endpoint);
            if whole.skipped != Some("object does not parse") {
                assert_eq!(
                    String::from_utf8_lossy(&wire::encode(&req.uid, &whole)),
                    String::from_utf8_lossy(&bytes),
                    "the same answer on the whole object"
                );
            }
        }
        if let Some(patch) = out.patch() {
            assert_eq!(endpoint, Endpoint::Mutate, "/validate never patches");
            let mut obj = full.object.clone().expect("a patch needs an object");
            json_patch::patch(&mut obj, patch).expect("the patch applies to the whole object");
        }
    }
});
