//! The supply chain, checked by cargo-deny against `deny.toml`: every crate
//! from crates.io, licenses on the allow list, TLS on rustls and ring with
//! no OpenSSL, native-tls or aws-lc. `cargo deny check licenses bans
//! sources` needs no advisory database; advisories are a separate command
//! (`cargo deny check advisories`, see SECURITY.md).
//!
//! cargo-deny is used from PATH when it is the pinned version, else
//! installed once into `target/tools` (about two minutes on two cores), so
//! `cargo test` works on a fresh machine with nothing installed by hand.
//! `cargo metadata` (which cargo-deny runs) resolves every platform's
//! dependencies, Windows-only ones included, so it may download crates a
//! Linux build never needed: that is why nothing here runs `--offline`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const CARGO_DENY: &str = "0.20.2";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/` of this build: the test binary lives in `target/<profile>/deps`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

fn version_of(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Some(text.trim().trim_start_matches("cargo-deny ").to_string())
}

/// The pinned cargo-deny: from PATH, from `target/tools`, or installed there.
fn cargo_deny() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let on_path = PathBuf::from("cargo-deny");
        if version_of(&on_path).as_deref() == Some(CARGO_DENY) {
            return on_path;
        }
        let root = target_dir().join("tools");
        let local = root.join("bin").join("cargo-deny");
        if version_of(&local).as_deref() == Some(CARGO_DENY) {
            return local;
        }
        eprintln!("installing cargo-deny {CARGO_DENY} into {}", root.display());
        let out = Command::new(env!("CARGO"))
            .args(["install", "--locked", "--quiet", "--root"])
            .arg(&root)
            .arg(format!("cargo-deny@{CARGO_DENY}"))
            .output()
            .expect("run cargo install");
        assert!(
            out.status.success(),
            "cannot install cargo-deny {CARGO_DENY} (needs crates.io):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        local
    })
}

/// `cargo deny` on `manifest` with the project's `deny.toml`.
fn deny(manifest: &Path, checks: &[&str]) -> Output {
    Command::new(cargo_deny())
        .args([
            "--color",
            "never",
            "--log-level",
            "error",
            "--manifest-path",
        ])
        .arg(manifest)
        .arg("--config")
        .arg(repo().join("deny.toml"))
        .arg("check")
        .args(checks)
        .output()
        .expect("run cargo-deny")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_locked_dependency_tree_passes_deny_toml() {
    let out = Command::new(cargo_deny())
        .current_dir(repo())
        .args(["--color", "never", "--locked", "check"])
        .args(["licenses", "bans", "sources"])
        .output()
        .expect("run cargo-deny");
    assert!(out.status.success(), "{}", stderr(&out));
}

// ------------------------------------------------------------------------
// deny.toml itself: a policy that admits everything would pass the test
// above too. Each probe is a throwaway crate that breaks one rule, built
// only from path and local git dependencies, so no network is involved.

struct Probe {
    dir: tempfile::TempDir,
}

impl Probe {
    /// A crate `probe` with this license and these `[dependencies]` lines.
    fn new(license: &str, deps: &str) -> Probe {
        let dir = tempfile::tempdir().unwrap();
        write_crate(dir.path(), "probe", license, deps);
        Probe { dir }
    }

    /// Adds a dependency crate `name` under `deps/name`.
    fn dep(self, name: &str) -> Probe {
        write_crate(&self.dir.path().join("deps").join(name), name, "MIT", "");
        self
    }

    fn manifest(&self) -> PathBuf {
        self.dir.path().join("Cargo.toml")
    }
}

fn write_crate(dir: &Path, name: &str, license: &str, deps: &str) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/lib.rs"), "").unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\
             license = \"{license}\"\npublish = false\n\n[dependencies]\n{deps}\n"
        ),
    )
    .unwrap();
}

#[test]
fn a_license_outside_the_allow_list_is_refused_even_inside_an_expression() {
    let ok = Probe::new("(MIT OR Apache-2.0) AND BSD-3-Clause", "");
    let out = deny(&ok.manifest(), &["licenses"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The parenthesised alternative is fine; the AND-ed GPL is not.
    let gpl = Probe::new("(MIT OR Apache-2.0) AND GPL-3.0-only", "");
    let out = deny(&gpl.manifest(), &["licenses"]);
    assert!(!out.status.success(), "GPL-3.0-only admitted");
    assert!(stderr(&out).contains("GPL-3.0-only"), "{}", stderr(&out));
}

#[test]
fn openssl_and_aws_lc_are_banned() {
    for banned in ["openssl-sys", "native-tls", "aws-lc-rs"] {
        let p =
            Probe::new("MIT", &format!("{banned} = {{ path = \"deps/{banned}\" }}")).dep(banned);
        let out = deny(&p.manifest(), &["bans"]);
        assert!(!out.status.success(), "{banned} admitted");
        assert!(stderr(&out).contains(banned), "{}", stderr(&out));
    }
}

#[test]
fn a_git_dependency_is_refused() {
    // A git repository on local disk: cargo fetches it without a network.
    let upstream = tempfile::tempdir().unwrap();
    write_crate(upstream.path(), "upstream", "MIT", "");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(upstream.path())
            .output()
            .expect("git is needed for this test");
        assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
    };
    git(&["init", "--quiet"]);
    git(&["add", "."]);
    git(&["commit", "--quiet", "-m", "upstream"]);
    let url = format!("file://{}", upstream.path().display());
    let p = Probe::new("MIT", &format!("upstream = {{ git = \"{url}\" }}"));
    let out = deny(&p.manifest(), &["sources"]);
    assert!(!out.status.success(), "a git source admitted");
    assert!(
        stderr(&out).contains("upstream") && stderr(&out).contains("git"),
        "{}",
        stderr(&out)
    );
}
