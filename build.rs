//! Bakes the git revision into the binary (`mor_gateway_build_info`,
//! `--version`), and guards the `static` feature's promise.
use std::path::PathBuf;
use std::process::Command;

/// What the binary is built from: a change there marks the revision
/// "modified", and makes this script run again.
const INPUTS: &[&str] = &[
    "src",
    "config",
    "build.rs",
    "Cargo.toml",
    "Cargo.lock",
    ".cargo",
];

fn main() {
    static_openssl_guard();
    println!("cargo:rerun-if-env-changed=MOR_GATEWAY_GIT_SHA");
    let version = env!("CARGO_PKG_VERSION");
    // A build outside git (a source tarball) may be told its revision.
    if let Some(sha) = std::env::var_os("MOR_GATEWAY_GIT_SHA") {
        let sha = sha.to_string_lossy().into_owned();
        println!("cargo:rustc-env=MOR_GATEWAY_VERSION={version} (git {sha})");
        return;
    }
    for p in INPUTS {
        println!("cargo:rerun-if-changed={p}");
    }
    // In a worktree .git is a file: ask git where HEAD and the refs are.
    for (arg, files) in [
        ("--git-dir", &["HEAD"][..]),
        ("--git-common-dir", &["refs/heads", "packed-refs"][..]),
    ] {
        if let Some(dir) = git(&["rev-parse", arg]) {
            for f in files {
                println!(
                    "cargo:rerun-if-changed={}",
                    PathBuf::from(&dir).join(f).display()
                );
            }
        }
    }
    let Some(sha) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        println!("cargo:rustc-env=MOR_GATEWAY_VERSION={version} (git revision unknown)");
        return;
    };
    println!("cargo:rustc-env=MOR_GATEWAY_GIT_SHA={sha}");
    let mut status = vec!["status", "--porcelain", "--untracked-files=no", "--"];
    status.extend_from_slice(INPUTS);
    let modified = git(&status).is_some_and(|s| !s.is_empty());
    let note = if modified { ", modified" } else { "" };
    println!("cargo:rustc-env=MOR_GATEWAY_VERSION={version} (git {sha}{note})");
}

/// A git command's trimmed output, when git is there and succeeds.
fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() || args.first() == Some(&"status"))
}

/// The `static` feature promises OpenSSL compiled into the binary. openssl-sys
/// links the system's instead when OPENSSL_NO_VENDOR is set (the Debian build
/// sets it in .cargo/config.toml): refuse such a build rather than produce a
/// "static" binary that needs libssl.
fn static_openssl_guard() {
    println!("cargo:rerun-if-env-changed=OPENSSL_NO_VENDOR");
    if std::env::var_os("CARGO_FEATURE_STATIC").is_none() {
        return;
    }
    if std::env::var("DEP_OPENSSL_VENDORED").as_deref() != Ok("1") {
        println!(
            "cargo::error=feature `static`: OpenSSL is not the vendored one; \
             build with OPENSSL_NO_VENDOR=0 (deploy/package.sh static does)"
        );
    }
}
