//! Any bytes as JSON (and as YAML), through the two readers that stand in
//! for serde_json's own `Value` on input: `core::json::Exact` (manifests,
//! list items) and `sparse::parse_str` (one path of kubectl's last-applied
//! record, for zone-spread). Invariants: `Exact` accepts, refuses and reads
//! exactly what serde_json's `Value` does, errors worded the same, but for
//! the one key serde_json's `raw_value` feature misreads; the sparse read
//! of `spec.replicas` keeps the whole read's value there, refuses nothing
//! the whole read accepts, and accepts what the whole read refuses only in
//! the two things it only scans ([`only_scanned`]).
#![no_main]

use std::fmt::{Debug, Display};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use zonewise::core::json::Exact;
use zonewise::core::sparse::{self, Budget, Interest};
use zonewise_fuzz::only_scanned;

/// What serde_json's `Value` misreads under `raw_value` (core::json).
const TOKEN: &str = "$serde_json::private::RawValue";

static REPLICAS: LazyLock<Interest> =
    LazyLock::new(|| Interest::of_paths([&["spec", "replicas"][..]]));

fuzz_target!(|data: &[u8]| {
    if data.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()) {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        // Bytes that are not UTF-8: both readers refuse them alike.
        same(
            "JSON bytes",
            serde_json::from_slice::<Exact>(data).map(|e| e.0),
            &serde_json::from_slice::<Value>(data),
        );
        return;
    };
    let whole = serde_json::from_str::<Value>(text);
    same(
        "JSON",
        serde_json::from_str::<Exact>(text).map(|e| e.0),
        &whole,
    );
    same(
        "YAML",
        serde_saphyr::from_str::<Exact>(text).map(|e| e.0),
        &serde_saphyr::from_str::<Value>(text),
    );

    match (
        sparse::parse_str(text, &REPLICAS, &Budget::unlimited()),
        &whole,
    ) {
        (Ok(kept), Ok(whole)) => assert_eq!(
            replicas(&kept),
            replicas(whole),
            "the sparse read keeps spec.replicas"
        ),
        (Ok(_), Err(e)) => assert!(
            only_scanned(e),
            "the sparse read accepts only what the whole read accepts, but for what it scans: {e}"
        ),
        (Err(e), Ok(_)) => panic!("the sparse read refuses valid JSON: {e}"),
        (Err(_), Err(_)) => {}
    }
});

/// `Exact` and serde_json's `Value` read the same value, or refuse with the
/// same error.
fn same<E: Display + Debug>(input: &str, exact: Result<Value, E>, plain: &Result<Value, E>) {
    match (exact, plain) {
        (Ok(e), Ok(p)) => assert_eq!(written(&e), written(p), "{input} read the same"),
        (Err(e), Err(p)) => assert_eq!(e.to_string(), p.to_string(), "{input} refused the same"),
        (e, p) => panic!("{input}: Exact {e:?} against Value {p:?}"),
    }
}

/// A value as JSON text, so that key order counts too (maps compare
/// without it).
fn written(v: &Value) -> String {
    serde_json::to_string(v).expect("a Value always serializes")
}

/// `spec.replicas` as a reader kept it; `None` where `spec` is no object.
fn replicas(v: &Value) -> Option<&Value> {
    v.get("spec")?.get("replicas")
}
