//! Any bytes as an AdmissionReview body, through the admission path: decode
//! (sparse), review on both endpoints, encode. Invariants: no panic; the
//! response is valid JSON; a body that decodes sparsely decodes whole too,
//! but for two things valid JSON may hold in the parts the sparse parse
//! skips and so never decodes: unpaired `\u` surrogate escapes (which Go's
//! decoder, like the API server's, accepts) and numbers beyond an f64's
//! range (RFC 8259 leaves range to implementations; a whole `Value` cannot
//! hold them); and a patch applies to the whole object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zonewise::core::lookups::NoCluster;
use zonewise::core::policy::Policy;
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
            Err(e)
                // The sparse parse has checked every escape's four hex
                // digits, so "hex escape" here is a surrogate's pairing.
                if ["unicode code point", "surrogate", "end of hex escape", "number out of range"]
                    .iter()
                    .any(|skipped| e.to_string().contains(skipped)) =>
            {
                continue;
            }
            Err(e) => panic!("a body that decodes sparsely decodes whole: {e}"),
        };
        if let Some(patch) = out.patch() {
            assert_eq!(endpoint, Endpoint::Mutate, "/validate never patches");
            let mut obj = full.object.expect("a patch needs an object");
            json_patch::patch(&mut obj, patch).expect("the patch applies to the whole object");
        }
    }
});
