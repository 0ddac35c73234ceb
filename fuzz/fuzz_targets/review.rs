//! Any bytes as an AdmissionReview body, through the admission path: decode
//! (sparse), review on both endpoints, encode. Invariants: no panic; the
//! response is valid JSON; a patch only comes with a body that also parses
//! whole, and it applies to that whole object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zonewise::config::Policy;
use zonewise::lookups::NoCluster;
use zonewise::review::{Endpoint, review};
use zonewise::wire::{self, Objects};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = wire::decode(data) else { return };
    let policy = Policy::default();
    for endpoint in [Endpoint::Mutate, Endpoint::Validate] {
        let out = review(&req, &policy, &NoCluster, endpoint);
        let bytes = wire::encode(&req.uid, &out);
        serde_json::from_slice::<serde_json::Value>(&bytes).expect("response is JSON");
        if let Some(patch) = &out.patch {
            assert_eq!(endpoint, Endpoint::Mutate, "/validate never patches");
            let full = wire::decode_with(data, Objects::Full).expect("a body that decodes sparsely decodes whole");
            let mut obj = full.object.expect("a patch needs an object");
            json_patch::patch(&mut obj, patch).expect("the patch applies to the whole object");
        }
    }
});
