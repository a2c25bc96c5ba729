//! What the Debian package ships agrees with itself: the two units, the
//! logrotate snippet, the shipped config, the man pages, Cargo.toml's asset
//! list and the LICENSE. (.ci/run builds the package, installs it and runs
//! systemd-analyze and logrotate on what was installed.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "a test: a failed unwrap is a failed test"
)]

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The lines of `[section]` (comments and blank lines left out).
fn section(unit: &str, name: &str) -> Vec<String> {
    let mut inside = false;
    let mut out = Vec::new();
    for l in unit.lines().map(str::trim) {
        if l.starts_with('[') {
            inside = l == format!("[{name}]");
        } else if inside && !l.is_empty() && !l.starts_with('#') {
            out.push(l.to_string());
        }
    }
    out
}

#[test]
fn the_slot_unit_is_the_service_but_for_run_upgrade() {
    let main = read("deploy/systemd/mor-gateway.service");
    let slot = read("deploy/systemd/mor-gateway@.service");
    let (ms, ss) = (section(&main, "Service"), section(&slot, "Service"));
    let start = |s: &[String]| s.iter().find(|l| l.starts_with("ExecStart=")).cloned();
    assert_eq!(
        start(&ms)
            .unwrap()
            .replace(" run -c ", " run --upgrade -c "),
        start(&ss).unwrap()
    );
    let rest = |s: &[String]| -> Vec<String> {
        s.iter()
            .filter(|l| !l.starts_with("ExecStart="))
            .cloned()
            .collect()
    };
    assert_eq!(rest(&ms), rest(&ss), "[Service] sections differ");
    for needed in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "SystemCallFilter=@system-service",
        "LogsDirectory=mor-gateway",
        "EnvironmentFile=-/etc/mor-gateway/secrets.env",
    ] {
        assert!(ms.iter().any(|l| l == needed), "missing {needed}");
    }
    // Both share /tmp, where the upgrade socket is, with whichever runs.
    for u in [&main, &slot] {
        let joins = section(u, "Unit")
            .into_iter()
            .find(|l| l.starts_with("JoinsNamespaceOf="))
            .unwrap();
        for other in ["mor-gateway@a.service", "mor-gateway@b.service"] {
            assert!(joins.contains(other), "{joins}");
        }
    }
    assert!(section(&main, "Install").contains(&"WantedBy=multi-user.target".to_string()));
    assert!(
        section(&slot, "Install").is_empty(),
        "slots are not enabled"
    );
}

#[test]
fn logrotate_signals_every_unit_that_can_run_the_gateway() {
    let lr = read("deploy/logrotate/mor-gateway");
    let config = read("deploy/etc/gateway.toml");
    assert!(config.contains("path = \"/var/log/mor-gateway/access.log\""));
    assert!(lr.starts_with('#') && lr.contains("/var/log/mor-gateway/*.log {"));
    for needed in [
        "--signal=USR1",
        "mor-gateway.service mor-gateway@a.service mor-gateway@b.service",
        "nocreate",
        "sharedscripts",
    ] {
        assert!(lr.contains(needed), "missing {needed}");
    }
    assert!(!lr.lines().any(|l| l.trim() == "copytruncate"));
}

#[test]
fn the_shipped_config_checks_with_the_secret_in_the_environment() {
    // `check` opens the access log as `run` would: /var/log/mor-gateway is
    // made by the package (postinst, LogsDirectory=), so the source tree's
    // copy is checked with the log in a temporary directory.
    let shipped = std::fs::read_to_string(Path::new(ROOT).join("deploy/etc/gateway.toml")).unwrap();
    let dir = temp_dir();
    let config = dir.join("gateway.toml");
    let log = dir.join("access.log");
    assert!(shipped.contains("/var/log/mor-gateway/access.log"));
    std::fs::write(
        &config,
        shipped.replace(
            "/var/log/mor-gateway/access.log",
            &log.display().to_string(),
        ),
    )
    .unwrap();
    let run = |env: &[(&str, &str)]| {
        let mut c = Command::new(BIN);
        c.args(["check", "-c"])
            .arg(&config)
            .env_remove("MOR_API_SECRET");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let ok = run(&[("MOR_API_SECRET", "check-only")]);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.contains("listen         0.0.0.0:80"), "{out}");
    assert!(!out.contains("check-only"), "the secret is not printed");
    let missing = run(&[]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("MOR_API_SECRET"));
}

#[test]
fn man_pages_come_from_the_cli_and_document_the_daemon() {
    let dir = temp_dir();
    let out = Command::new(BIN)
        .args(["manpage", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    assert_eq!(
        pages,
        [
            "mor-gateway-check.8",
            "mor-gateway-demo.8",
            "mor-gateway-doctor.8",
            "mor-gateway-explain.8",
            "mor-gateway-lockouts.8",
            "mor-gateway-run.8",
            "mor-gateway-sign.8",
            "mor-gateway.8"
        ]
    );
    let main = std::fs::read_to_string(dir.join("mor-gateway.8")).unwrap();
    assert_eq!(main.matches(".TH ").count(), 1, "one roff page");
    assert!(main.contains("\n.SH VERSION\n"));
    for needed in [
        ".TH mor-gateway 8",
        ".SH \"ENVIRONMENT\"",
        "MOR_GATEWAY_LOG",
        "warn,mor_gateway=info",
        ".SH \"SIGNALS\"",
        "SIGUSR1",
        "SIGUSR2",
        "latency_us",
        "mor\\-gateway\\-run(8)",
    ] {
        assert!(main.contains(needed), "missing {needed}:\n{main}");
    }
    assert!(!main.contains("manpage"), "the generator is hidden");
    // Every page points at installed paths, never at the source tree.
    for page in &pages {
        let text = std::fs::read_to_string(dir.join(page)).unwrap();
        for source_path in ["config/", "deploy/", "target/", "src/", "dashboards/"] {
            for (i, _) in text.match_indices(source_path) {
                let before = &text[..i];
                assert!(
                    before.ends_with("/usr/share/doc/mor-gateway/")
                        || before.ends_with("/etc/mor-gateway/")
                        || before.ends_with('/'),
                    "{page} points at the source tree: ...{}",
                    &text[i.saturating_sub(40)..(i + 30).min(text.len())]
                );
            }
        }
    }
    assert!(main.contains("/usr/share/doc/mor\\-gateway/gateway.toml.reference"));
    let run_page = std::fs::read_to_string(dir.join("mor-gateway-run.8")).unwrap();
    assert!(run_page.contains("/usr/share/doc/mor\\-gateway/gateway.toml.reference"));
    let stdout = Command::new(BIN).arg("manpage").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&stdout.stdout), main);
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("manpage"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_packaged_file_exists_and_the_license_is_apache_2() {
    let cargo: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let pkg = &cargo["package"];
    assert_eq!(pkg["license"].as_str(), Some("Apache-2.0"));
    let deb = &pkg["metadata"]["deb"];
    assert_eq!(deb["license-file"][0].as_str(), Some("LICENSE"));
    let assets = deb["assets"].as_array().unwrap();
    for a in assets {
        let src = a[0].as_str().unwrap();
        if src.starts_with("target/release/") {
            continue; // built by .ci/run
        }
        let (dir, pattern) = src.rsplit_once('/').unwrap_or((".", src));
        let found = std::fs::read_dir(Path::new(ROOT).join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .flatten()
            .any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                match pattern.split_once('*') {
                    Some((pre, post)) => name.starts_with(pre) && name.ends_with(post),
                    None => name == pattern,
                }
            });
        assert!(found, "asset {src} matches no file");
    }
    let dests: Vec<&str> = assets.iter().map(|a| a[1].as_str().unwrap()).collect();
    for d in [
        "usr/bin/",
        "etc/mor-gateway/gateway.toml",
        "etc/logrotate.d/mor-gateway",
        "usr/share/man/man8/",
    ] {
        assert!(dests.contains(&d), "no asset goes to {d}");
    }
    assert_eq!(
        deb["systemd-units"]["unit-scripts"].as_str(),
        Some("deploy/systemd/")
    );
    for script in ["postinst", "postrm", "prerm"] {
        assert!(read(&format!("deploy/debian/{script}")).contains("#DEBHELPER#"));
    }
    let license = read("LICENSE");
    for needed in [
        "Apache License",
        "Version 2.0, January 2004",
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "9. Accepting Warranty or Additional Liability.",
        "END OF TERMS AND CONDITIONS",
        "APPENDIX: How to apply the Apache License to your work.",
    ] {
        assert!(license.contains(needed), "LICENSE lacks {needed}");
    }
    assert_eq!(license.lines().count(), 202, "the full standard text");
}

/// `manpage --dir D --gzip` writes what the packages install, can run again
/// over its own output (README's `gzip -9n` could not), and gives the same
/// bytes each time (no name or time in the gzip header).
#[test]
fn gzipped_man_pages_can_be_rebuilt_in_place() {
    use std::io::Read;
    let dir = temp_dir();
    let build = || {
        let out = Command::new(BIN)
            .args(["manpage", "--gzip", "--dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    };
    let first = build();
    let second = build();
    assert_eq!(first, second, "a rebuild gives the same bytes");
    assert_eq!(first.len(), 8);
    let main = &first
        .iter()
        .find(|(n, _)| n == "mor-gateway.8.gz")
        .unwrap()
        .1;
    // gzip -n: no name flag, no time.
    assert_eq!(&main[..4], &[0x1f, 0x8b, 8, 0]);
    assert_eq!(&main[4..8], &[0, 0, 0, 0]);
    let mut text = String::new();
    flate2::read::GzDecoder::new(&main[..])
        .read_to_string(&mut text)
        .unwrap();
    let plain = Command::new(BIN).arg("manpage").output().unwrap();
    assert_eq!(text, String::from_utf8_lossy(&plain.stdout));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The RPM (cargo generate-rpm) holds what the .deb holds: every deb asset
/// is an RPM asset with the same source, destination and mode (the license
/// file aside), the /etc files are %config(noreplace), and each Debian
/// maintainer script's work has its RPM scriptlet. (.ci/run compares the
/// two built packages file by file.)
#[test]
fn the_rpm_holds_the_debs_files_config_files_and_scriptlets() {
    let cargo: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let meta = &cargo["package"]["metadata"];
    let deb = meta["deb"]["assets"].as_array().unwrap();
    let rpm = meta["generate-rpm"]["assets"].as_array().unwrap();
    let rpm_assets: Vec<(String, String, String, Option<&toml::Value>)> = rpm
        .iter()
        .map(|a| {
            (
                a["source"].as_str().unwrap().to_string(),
                a["dest"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches('/')
                    .to_string(),
                a["mode"].as_str().unwrap().to_string(),
                a.get("config"),
            )
        })
        .collect();
    for a in deb {
        let (src, dest, mode) = (
            a[0].as_str().unwrap(),
            a[1].as_str().unwrap(),
            a[2].as_str().unwrap(),
        );
        let found = rpm_assets.iter().find(|(s, _, _, _)| s == src);
        let (_, rdest, rmode, config) =
            found.unwrap_or_else(|| panic!("the RPM lacks the .deb's {src}"));
        // "dir/" puts the file in dir under its own name, in both tools.
        let file = |d: &str| {
            if d.ends_with('/') {
                format!("{d}{}", src.rsplit('/').next().unwrap())
            } else {
                d.to_string()
            }
        };
        assert_eq!(file(rdest), file(dest), "{src}");
        assert_eq!(rmode, mode, "{src}");
        if dest.starts_with("etc/") {
            assert_eq!(
                config.and_then(|c| c.as_str()),
                Some("noreplace"),
                "{dest} is a conffile of the .deb"
            );
        } else {
            assert!(config.is_none(), "{dest}");
        }
    }
    // The units (cargo deb's systemd-units) and the license (its
    // license-file) are the RPM's own assets.
    let extra: Vec<&str> = rpm_assets
        .iter()
        .filter(|(s, _, _, _)| !deb.iter().any(|a| a[0].as_str() == Some(s)))
        .map(|(_, d, _, _)| d.as_str())
        .collect();
    assert_eq!(
        extra,
        [
            "usr/lib/systemd/system/mor-gateway.service",
            "usr/lib/systemd/system/mor-gateway@.service",
            "usr/share/licenses/mor-gateway/LICENSE",
        ]
    );
    let g = &meta["generate-rpm"];
    let script = |k: &str| read(g[k].as_str().unwrap());
    let (post, preun, postun) = (
        script("post_install_script"),
        script("pre_uninstall_script"),
        script("post_uninstall_script"),
    );
    let (postinst, prerm, postrm) = (
        read("deploy/debian/postinst"),
        read("deploy/debian/prerm"),
        read("deploy/debian/postrm"),
    );
    let log_dir = "install -d -m 0750 /var/log/mor-gateway";
    assert!(postinst.contains(log_dir) && post.contains(log_dir));
    assert!(prerm.contains("mor-gateway@a.service mor-gateway@b.service"));
    assert!(preun.contains("stop mor-gateway.service mor-gateway@a.service mor-gateway@b.service"));
    // Erasing (rpm: $1 = 0) and purging (dpkg) remove the secret; an
    // upgrade never does.
    let secret = "rm -f /etc/mor-gateway/secrets.env /etc/mor-gateway/admin.key";
    let (before, after) = postrm
        .split_once("if [ \"$1\" = \"purge\" ]; then")
        .unwrap();
    assert!(!before.contains(secret));
    assert!(after.split("fi").next().unwrap().contains(secret));
    let (before, after) = postun.split_once("if [ \"$1\" -eq 0 ]; then").unwrap();
    assert!(!before.contains(secret));
    assert!(after.split("fi").next().unwrap().contains(secret));
    assert!(
        preun.contains("if [ \"$1\" -eq 0 ]"),
        "an upgrade stops nothing"
    );
}

/// README's Deploy: one command builds the packages (no `gzip` that fails on
/// a second run), an RPM path, the secret checked through --env-file, and a
/// Prometheus configuration that is added to, never copied over.
#[test]
fn readme_deploy_builds_with_the_script_and_never_overwrites_prometheus() {
    let readme = read("README.md");
    let deploy = readme
        .split_once("\n## Deploy\n")
        .unwrap()
        .1
        .split("\n## ")
        .next()
        .unwrap();
    assert!(
        !readme.contains("gzip -9n"),
        "the man pages: manpage --gzip"
    );
    assert!(deploy.contains("deploy/package.sh deb"));
    assert!(deploy.contains("deploy/package.sh rpm"));
    assert!(deploy.contains("sudo dnf install ./mor-gateway-0.1.0-1.x86_64.rpm"));
    assert!(deploy.contains("Listen 127.0.0.1:8081"));
    assert!(deploy.contains("--env-file /etc/mor-gateway/secrets.env"));
    for line in deploy.lines() {
        let l = line.trim();
        if l.starts_with("sudo cp") || l.starts_with("cp ") || l.starts_with("sudo install") {
            assert!(
                !l.ends_with("/etc/prometheus/") && !l.contains("/etc/prometheus/prometheus.yml"),
                "copies over Prometheus' own configuration: {l}"
            );
        }
    }
    let version = env!("CARGO_PKG_VERSION");
    assert!(deploy.contains(&format!("mor-gateway_{version}-1_amd64.deb")));
    assert!(deploy.contains(&format!("mor-gateway-{version}-1.x86_64.rpm")));
}

/// Whether `needle` occurs in `hay`.
fn holds(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The simulator is a development tool: no package lists it (the .deb's
/// and the RPM's files are the assets below; .ci/run lists the built
/// packages and the release binary's strings again), and the gateway's
/// binary holds none of it (its test hooks and headers are the simulator's
/// own strings).
#[test]
fn no_package_and_no_gateway_binary_holds_the_simulator() {
    let cargo: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let meta = &cargo["package"]["metadata"];
    let deb: Vec<String> = meta["deb"]["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{} -> {}", a[0].as_str().unwrap(), a[1].as_str().unwrap()))
        .collect();
    let rpm: Vec<String> = meta["generate-rpm"]["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} -> {}",
                a["source"].as_str().unwrap(),
                a["dest"].as_str().unwrap()
            )
        })
        .collect();
    assert!(deb.len() > 5 && rpm.len() > 5);
    for file in deb.iter().chain(&rpm) {
        assert!(!file.contains("sim"), "packaged: {file}");
    }
    let bins: Vec<&str> = deb
        .iter()
        .chain(&rpm)
        .filter(|f| f.contains("usr/bin"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        bins,
        [
            "target/release/mor-gateway -> usr/bin/",
            "target/release/mor-gateway -> /usr/bin/mor-gateway"
        ]
    );
    // The binaries the packages are built from: mor-gateway only.
    let script = read("deploy/package.sh");
    let builds: Vec<&str> = script
        .lines()
        .filter(|l| l.contains("cargo build"))
        .collect();
    assert_eq!(builds.len(), 2, "{builds:?}");
    for b in builds {
        assert!(b.contains("--bin mor-gateway"), "{b}");
    }
    // The gateway binary (this build of it) holds none of the simulator;
    // the simulator's does.
    let gateway = std::fs::read(BIN).unwrap();
    let sim = std::fs::read(SIM_BIN).unwrap();
    for s in ["/_sim/requests", "X-Sim-", "x-sim-", "mor-simulator"] {
        assert!(!holds(&gateway, s.as_bytes()), "{BIN} holds {s}");
    }
    assert!(
        holds(&sim, b"/_sim/requests"),
        "the probe finds the simulator"
    );
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    assert!(!help.contains("\n  sim "), "{help}");
}
