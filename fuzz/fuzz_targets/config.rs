//! Any bytes as a config file. Invariants: no panic; a config that loads
//! renders to YAML that loads back to the same config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zonewise::core::config::Config;
use zonewise::core::policy::{Environment, Policy};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_yaml(text) else {
        return;
    };
    let policy = Policy::new(config.clone(), &Environment::default());
    let _ = policy.describe();
    let again = Config::from_yaml(&config.to_yaml()).expect("rendered config loads");
    assert_eq!(again, config);
});
