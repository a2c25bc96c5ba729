//! Bakes the git revision into the binary for `mor_gateway_build_info`.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-env-changed=MOR_GATEWAY_GIT_SHA");
    if std::env::var_os("MOR_GATEWAY_GIT_SHA").is_some() {
        return;
    }
    let sha = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    if let Some(sha) = sha {
        println!("cargo:rustc-env=MOR_GATEWAY_GIT_SHA={sha}");
    }
}
