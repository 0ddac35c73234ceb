//! Every fixture under tests/fixtures/ through the library path the server
//! uses (decode → review → encode), checked against its expected answer.

mod common;

use common::{CASES, check_case, check_converged, decode_answer, fixture, fixtures_dir};
use zonewise::core::lookups::NoCluster;
use zonewise::core::policy::Policy;
use zonewise::core::review::{Endpoint, review};
use zonewise::core::wire;

fn answer_with(body: &[u8], policy: &Policy) -> common::Answer {
    let req = wire::decode(body).expect("fixture decodes");
    let outcome = review(&req, policy, &NoCluster, Endpoint::Mutate);
    decode_answer(&wire::encode(&req.uid, &outcome))
}

fn answer(body: &[u8]) -> common::Answer {
    answer_with(body, &Policy::default())
}

#[test]
fn every_fixture_gives_its_expected_answer() {
    for case in CASES.iter() {
        let policy = case.policy();
        let body = fixture(&case.name);
        let a = answer_with(&body, &policy);
        if let Some(again) = check_case(case, &body, &a) {
            check_converged(case, &answer_with(&again, &policy));
        }
    }
}

/// The fixtures are real AdmissionReviews: kube-rs's own types accept them.
#[test]
fn fixtures_parse_as_kube_admission_reviews() {
    use kube::core::DynamicObject;
    use kube::core::admission::{AdmissionRequest, AdmissionReview};
    for case in CASES.iter() {
        let review: AdmissionReview<DynamicObject> = serde_json::from_slice(&fixture(&case.name))
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let req: AdmissionRequest<DynamicObject> = review
            .try_into()
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert!(!req.uid.is_empty());
    }
}

/// No fixture file sits unused, and no case lacks its file.
#[test]
fn fixture_files_and_cases_match() {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".review.json").map(str::to_string)
        })
        .collect();
    names.sort();
    let mut cases: Vec<String> = CASES.iter().map(|c| c.name.to_string()).collect();
    cases.sort();
    assert_eq!(names, cases);
    for case in CASES.iter() {
        let has_expected = fixtures_dir()
            .join(format!("{}.expected.json", case.name))
            .exists();
        assert_eq!(
            has_expected,
            matches!(case.expect, common::Expect::Patched(_)),
            "{}: expected file iff patched",
            case.name
        );
    }
}

/// A dry run gets exactly the answer of the same request without it.
#[test]
fn dry_run_answers_are_identical() {
    for (wet, dry) in [
        ("svc-clusterip", "svc-dry-run"),
        ("deploy-plain", "deploy-dry-run"),
    ] {
        let a = answer(&fixture(wet));
        let b = answer(&fixture(dry));
        assert_eq!(
            serde_json::to_value(&a.patch).unwrap(),
            serde_json::to_value(&b.patch).unwrap()
        );
        assert_eq!(a.warnings, b.warnings);
    }
}
