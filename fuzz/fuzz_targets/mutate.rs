//! Any bytes as `zonewise mutate` input. Invariants: no panic; when it
//! succeeds, the YAML it prints parses as YAML again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zonewise::cmd::mutate::{Output, run};
use zonewise::core::policy::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut out = Vec::new();
    let mut err = Vec::new();
    if run(
        text,
        Output::Yaml,
        &Policy::default(),
        "default",
        &mut out,
        &mut err,
    )
    .is_ok()
    {
        let printed = String::from_utf8(out).expect("output is UTF-8");
        serde_saphyr::from_multiple::<serde_json::Value>(&printed).expect("output is YAML");
    }
});
