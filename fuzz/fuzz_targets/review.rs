//! Any bytes as an AdmissionReview body, through the admission path: decode
//! (sparse), review on both endpoints, encode. Invariants: no panic; the
//! response is valid JSON; a body that decodes sparsely decodes whole too,
//! but for the two things the sparse parse only scans where no rule reads
//! ([`only_scanned`]); a patch applies to the whole object; and where the
//! whole object parses as its Kubernetes type, the answer is the same
//! whether the object was read sparsely or whole (the property test's
//! invariant, on inputs no generator writes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use zonewise::core::lookups::NoCluster;
use zonewise::core::policy::Policy;
use zonewise::core::review::{Endpoint, review};
use zonewise::core::wire::{self, Objects};
use zonewise_fuzz::only_scanned;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = wire::decode(data) else { return };
    let policy = Policy::default();
    for endpoint in [Endpoint::Mutate, Endpoint::Validate] {
        let out = review(&req, &policy, &NoCluster, endpoint);
        let bytes = wire::encode(&req.uid, &out);
        serde_json::from_slice::<serde_json::Value>(&bytes).expect("response is JSON");
        let full = match wire::decode_with(data, Objects::Full) {
            Ok(full) => full,
            Err(e) if only_scanned(&e) => continue,
            Err(e) => panic!("a body that decodes sparsely decodes whole: {e}"),
        };
        // The sparse parse keeps only what the rules declare they read; a
        // read they do not declare shows up as a different answer. Only
        // where the whole object is well-typed: otherwise the whole check
        // refuses what the sparse one never sees, by design; and only where
        // the sparse parse kept the object (the value budget is the
        // admission path's alone).
        if !req.oversized {
            let whole = review(&full, &policy, &NoCluster, endpoint);
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
            let mut obj = full.object.expect("a patch needs an object");
            json_patch::patch(&mut obj, patch).expect("the patch applies to the whole object");
        }
    }
});
