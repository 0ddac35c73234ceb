//! Any bytes as an AdmissionReview body, through the admission path: decode
//! (sparse), review on both endpoints, encode. Invariants: no panic; the
//! response is valid JSON; a body that decodes sparsely decodes whole too
//! (but for unpaired `\u` surrogate escapes in skipped strings, which the
//! sparse parse does not decode and Go's decoder, like the API server's,
//! accepts); and a patch applies to the whole object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zonewise::core::policy::Policy;
use zonewise::core::lookups::NoCluster;
use zonewise::core::review::{Endpoint, review};
use zonewise::core::wire::{self, Objects};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = wire::decode(data) else { return };
    let policy = Policy::default();
    for endpoint in [Endpoint::Mutate, Endpoint::Validate] {
        let out = review(&req, &policy, &NoCluster, endpoint);
        let bytes = wire::encode(&req.uid, &out);
        serde_json::from_slice::<serde_json::Value>(&bytes).expect("response is JSON");
        let full = match wire::decode_with(data, Objects::Full) {
            Ok(full) => full,
            Err(e) if e.to_string().contains("unicode code point") || e.to_string().contains("surrogate") => continue,
            Err(e) => panic!("a body that decodes sparsely decodes whole: {e}"),
        };
        if let Some(patch) = out.patch() {
            assert_eq!(endpoint, Endpoint::Mutate, "/validate never patches");
            let mut obj = full.object.expect("a patch needs an object");
            json_patch::patch(&mut obj, patch).expect("the patch applies to the whole object");
        }
    }
});
