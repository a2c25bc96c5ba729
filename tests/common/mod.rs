//! Test harness: runs the real `mor-gateway` and `mor-sim` binaries
//! on ephemeral loopback ports, and talks raw HTTP/1.1 to it so tests control
//! every byte on the wire.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mor-gateway");
/// The MOR simulator, a binary of its own (never in the gateway's).
pub const SIM_BIN: &str = env!("CARGO_BIN_EXE_mor-sim");
pub const KEY: &str = "456789";
/// MOR's hash of user_id=123 (or s_user=123) with [`KEY`]: SHA1("123456789").
pub const H_123: &str = "f7c3bc1d808e04732adf679965ccc34ca7ae3441";

/// A signed user_details_get form body for `user` (user_id=123).
pub fn details(user: &str) -> String {
    format!("u={user}&user_id=123&hash={H_123}")
}

/// A whole verified user_details_get request (MOR answers with client123's
/// details), keeping the connection open or not.
pub fn verified_call(keep_alive: bool) -> String {
    let body = details("admin");
    format!(
        "POST /billing/api/user_details_get HTTP/1.1\r\nHost: mor\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n{}\r\n{body}",
        body.len(),
        if keep_alive { "" } else { "Connection: close\r\n" }
    )
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Already reaped: its pid may belong to another process by now.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ports handed out by [`free_port`] come from below the kernel's
/// ephemeral range (32768-60999 on Linux), so that no outgoing connection
/// of a test, a gateway or a simulator can take one between the check and
/// the child's bind; each test process starts at its own offset and never
/// hands out a port twice.
const PORTS: std::ops::Range<u16> = 20000..32000;
static NEXT_PORT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// A port that was free a moment ago (bound, then released), never given
/// out before in this process, outside the ephemeral range.
pub fn free_port() -> u16 {
    let span = usize::from(PORTS.end - PORTS.start);
    let _ = NEXT_PORT.compare_exchange(
        usize::MAX,
        (std::process::id() as usize * 997) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let i = NEXT_PORT.fetch_add(1, Ordering::Relaxed) % span;
        let port = PORTS.start + u16::try_from(i).expect("within the range");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {PORTS:?}");
}

/// The first of `n` consecutive ports, each handed out by [`free_port`]
/// (so none of them is given to another test of this process, as a port
/// picked as `p + 1` by hand could be).
pub fn free_ports_in_a_row(n: u16) -> u16 {
    loop {
        let first = free_port();
        if (1..n).all(|i| free_port() == first + i) {
            return first;
        }
    }
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until something accepts connections on `a`.
pub fn wait_listening(a: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    panic!("{what} did not start listening on {a}");
}

/// A test's temporary directory (tempfile's, under the system's temp dir),
/// removed with everything in it when dropped; kept when the test panics,
/// so that a failure's logs and configs can be read.
pub struct TempDir(Option<tempfile::TempDir>);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        match &self.0 {
            Some(d) => d.path(),
            None => Path::new(""),
        }
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        self
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        Path::as_os_str(self)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.0.take() {
                eprintln!("kept for reading: {}", d.keep().display());
            }
        }
    }
}

/// A fresh temporary directory for one test, removed when dropped.
pub fn temp_dir() -> TempDir {
    TempDir(Some(
        tempfile::Builder::new()
            .prefix("morgw-test-")
            .tempdir()
            .expect("temp dir"),
    ))
}

/// A file written into a fresh temporary directory, both removed when
/// dropped.
pub struct TempFile {
    _dir: TempDir,
    path: PathBuf,
}

impl std::ops::Deref for TempFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

/// Writes `contents` to `name` in a fresh temporary directory.
pub fn temp_file(name: &str, contents: &str) -> TempFile {
    let dir = temp_dir();
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write temp file");
    TempFile { _dir: dir, path }
}

/// Starts the simulator with the admin key `key` (and extra CLI args).
pub fn start_sim(key: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    let port = free_port();
    let a = addr(port);
    let child = Command::new(SIM_BIN)
        .args(["--listen", &a.to_string(), "--key-env", "SIM_KEY"])
        .args(extra)
        .env("SIM_KEY", key)
        .env("SIM_RESELLER_KEY", "resellerkey")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn simulator");
    let p = Proc {
        child,
        name: "sim".into(),
    };
    wait_listening(a, "simulator");
    (p, a)
}

/// A running gateway.
pub struct Gw {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub dir: TempDir,
    pub config: PathBuf,
}

/// Secrets that must never appear in a gateway's logs: the keys the tests
/// use, and any run of 40 hex digits (a hash, valid or not).
pub fn secrets_in(text: &str) -> Vec<String> {
    let mut found: Vec<String> = [
        KEY,
        "resellerkey",
        "s3cr3t-pw",
        DB_PASSWORD,
        "rotated-reseller-key",
    ]
    .iter()
    .filter(|k| text.contains(*k))
    .map(|k| k.to_string())
    .collect();
    let b = text.as_bytes();
    let mut run = 0;
    for (i, c) in b.iter().enumerate() {
        run = if c.is_ascii_hexdigit() { run + 1 } else { 0 };
        if run == 40 {
            found.push(String::from_utf8_lossy(&b[i + 1 - 40..=i]).into_owned());
        }
    }
    found
}

/// Every log a gateway wrote (stderr, access logs) is checked for secrets
/// when the gateway is stopped: a test that leaks one fails.
impl Drop for Gw {
    fn drop(&mut self) {
        if let Ok(None) = self.proc.child.try_wait() {
            self.proc.signal("TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.proc.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let leaked = secrets_in(&text);
            assert!(
                leaked.is_empty(),
                "{} holds secrets {leaked:?}:\n{}",
                path.display(),
                &text[..text.len().min(2000)]
            );
        }
    }
}

impl Gw {
    pub fn send(&self, raw: &str) -> Resp {
        send(self.addr, raw.as_bytes())
    }
    pub fn post(&self, path: &str, body: &str) -> Resp {
        self.send(&post_form(path, body))
    }
    pub fn metrics_text(&self) -> String {
        send(
            self.metrics,
            b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
        )
        .text()
    }
    /// Rewrites the config file (same ports) and sends SIGHUP.
    pub fn reload(&self, body: &str) {
        std::fs::write(&self.config, self.config_text(body)).expect("write config");
        self.proc.signal("HUP");
    }
    fn config_text(&self, body: &str) -> String {
        config_text(
            self.addr,
            self.metrics,
            &body.replace("{GW_DIR}", &self.dir.display().to_string()),
        )
    }
}

fn config_text(gw: SocketAddr, metrics: SocketAddr, body: &str) -> String {
    // `body` holds [upstream], [api], ... ; the listen keys go first.
    // One worker and no grace unless the body says otherwise (stopping a
    // test's gateway is then quick).
    let threads = if body.contains("threads =") {
        ""
    } else {
        "threads = 1\n"
    };
    let grace = if body.contains("shutdown_grace") {
        ""
    } else {
        "shutdown_grace = \"0s\"\n"
    };
    // A body with its own [metrics] table (admin_allow, ...) gets the
    // listen key there.
    if body.contains("\n[metrics]\n") {
        let body = body.replacen(
            "\n[metrics]\n",
            &format!("\n[metrics]\nlisten = \"{metrics}\"\n"),
            1,
        );
        return format!("listen = [\"{gw}\"]\n{threads}{grace}{body}\n");
    }
    format!("listen = [\"{gw}\"]\n{threads}{grace}{body}\n[metrics]\nlisten = \"{metrics}\"\n")
}

/// A gateway config body in front of `upstreams`: `top` holds top-level
/// keys (reply_mode, ...), `tables` extra tables ([api], [limits], ...).
pub fn body_for(upstreams: &[SocketAddr], top: &str, tables: &str) -> String {
    body_logged(upstreams, top, tables, "mode = \"off\"")
}

/// [`body_for`] with the access log in the gateway's own directory (its
/// lines are checked for secrets when the gateway stops).
pub fn body_with_log(upstreams: &[SocketAddr], top: &str, tables: &str) -> String {
    body_logged(
        upstreams,
        top,
        tables,
        "mode = \"file\"\npath = \"{GW_DIR}/access.log\"",
    )
}

fn body_logged(upstreams: &[SocketAddr], top: &str, tables: &str, log: &str) -> String {
    let ups: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "{top}\n[upstream]\nservers = [{}]\nconnect_timeout = \"500ms\"\nread_timeout = \"3s\"\npass_headers = [\"X-Sim-Delay-Ms\", \"X-Sim-Status\"]\n\n[secrets]\nadmin_key_env = \"GW_KEY\"\n\n[access_log]\n{log}\n\n{tables}\n",
        ups.join(", ")
    )
}

/// Starts a gateway with a config built by [`body_for`]-style text.
/// `body` must not contain `listen`; a `[metrics]` table of its own gets the
/// metrics listener's `listen` key.
pub fn start_gateway(body: &str) -> Gw {
    start_gateway_env(body, &[])
}

pub fn start_gateway_env(body: &str, env: &[(&str, &str)]) -> Gw {
    start_gateway_via(body, env, &[])
}

/// Like [`start_gateway_env`], the gateway started through `wrapper` (a
/// command that execs the rest of its arguments, e.g. `prlimit --nofile=64
/// --`), so that the gateway keeps its pid.
pub fn start_gateway_via(body: &str, env: &[(&str, &str)], wrapper: &[&str]) -> Gw {
    let dir = temp_dir();
    let (gp, mp) = (free_port(), free_port());
    let (a, m) = (addr(gp), addr(mp));
    let config = dir.join("gateway.toml");
    let body = body.replace("{GW_DIR}", &dir.display().to_string());
    std::fs::write(&config, config_text(a, m, &body)).expect("write config");
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    cmd.args(["run", "-c"])
        .arg(&config)
        .env("GW_KEY", KEY)
        .env("GW_RESELLER_KEY", "resellerkey")
        .env("GW_DB_PASSWORD", DB_PASSWORD)
        // The default log filter, whatever the test runner's environment.
        .env_remove("MOR_GATEWAY_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("stderr.log")).expect("log file"),
        ));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn gateway");
    let proc = Proc {
        child,
        name: "gateway".into(),
    };
    wait_listening(a, "gateway");
    wait_listening(m, "metrics listener");
    Gw {
        proc,
        addr: a,
        metrics: m,
        dir,
        config,
    }
}

/// Gateway in front of one fresh simulator; returns both.
pub fn gw_and_sim(top: &str, tables: &str) -> (Gw, Proc, SocketAddr) {
    let (sim, sa) = start_sim(KEY, &["--reseller", "res1=SIM_RESELLER_KEY"]);
    let gw = start_gateway(&body_for(&[sa], top, tables));
    (gw, sim, sa)
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn post_form(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: mor\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

pub fn post_json(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: mor\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

pub fn get(path_and_query: &str) -> String {
    format!("GET {path_and_query} HTTP/1.1\r\nHost: mor\r\nConnection: close\r\n\r\n")
}

/// Sends raw bytes, reads until the server closes, parses one response.
pub fn send(a: SocketAddr, raw: &[u8]) -> Resp {
    let mut s = TcpStream::connect(a).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).ok();
    s.write_all(raw).expect("write request");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse(&buf)
        .unwrap_or_else(|| panic!("unparseable response: {:?}", String::from_utf8_lossy(&buf)))
}

/// Parses one response from `buf` (Content-Length, chunked, or to EOF).
pub fn parse(buf: &[u8]) -> Option<Resp> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &buf[end + 4..];
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let body = if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        let mut r = rest;
        loop {
            let nl = r.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&r[..nl]).ok()?.trim(), 16).ok()?;
            r = &r[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&r[..size]);
            r = &r[size + 2..];
        }
        out
    } else if let Some(n) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        rest[..n.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    Some(Resp {
        status,
        headers,
        body,
    })
}

/// What the simulator received.
pub fn sim_seen(sim: SocketAddr) -> Vec<serde_json::Value> {
    let r = send(sim, get("/_sim/requests").as_bytes());
    serde_json::from_slice(&r.body).expect("sim request log is JSON")
}

pub fn sim_reset(sim: SocketAddr) {
    send(
        sim,
        b"POST /_sim/reset HTTP/1.1\r\nHost: s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
}

/// MOR's error document.
pub fn mor_error(msg: &str) -> String {
    format!(r#"<?xml version="1.0" encoding="UTF-8"?><status><error>{msg}</error></status>"#)
}

/// SHA1 hex of a string (test-side, independent of the gateway's signer).
pub fn sha1_hex(s: &str) -> String {
    use sha1::{Digest, Sha1};
    hex::encode(Sha1::digest(s.as_bytes()))
}

/// Like [`send`], but from a chosen loopback source address (e.g. 127.0.0.2).
pub fn send_from(src: &str, a: SocketAddr, raw: &[u8]) -> Resp {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let buf = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(format!("{src}:0").parse().expect("source address"))
            .expect("bind source");
        let mut s = sock.connect(a).await.expect("connect");
        s.write_all(raw).await.expect("write");
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await;
        buf
    });
    parse(&buf)
        .unwrap_or_else(|| panic!("unparseable response: {:?}", String::from_utf8_lossy(&buf)))
}

/// A redis-server of our own on `port` (no persistence), and its pid.
pub fn start_redis(port: u16, extra: &[&str]) -> Proc {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (Debian package redis-server; .ci/run installs it)");
    let p = Proc {
        child,
        name: "redis".into(),
    };
    wait_listening(addr(port), "redis-server");
    p
}

/// Runs redis-cli against our server.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A blocking TCP connection from a chosen loopback source address (e.g.
/// 127.0.0.2), reads timing out after 10 s.
pub fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let from: SocketAddr = format!("{src}:0").parse().expect("source address");
    sock.bind(&from.into()).expect("bind source");
    sock.connect(&to.into()).expect("connect");
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    s
}

/// The password of the gateway's database account in the MariaDB tests (a
/// secret: it must reach no log).
pub const DB_PASSWORD: &str = "db-pw-s3cr3t";

/// A data directory with MariaDB's system tables (mariadb-install-db takes
/// seconds): made once per mariadbd version in cargo's temporary directory
/// for tests (target/tmp), and reused by later runs; each server copies it.
fn mariadb_template() -> &'static PathBuf {
    static T: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let version = Command::new("mariadbd")
            .arg("--version")
            .output()
            .expect("mariadbd (Debian package mariadb-server; .ci/run installs it)");
        let tag: String = String::from_utf8_lossy(&version.stdout)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .take(100)
            .collect();
        let tag = tag.trim_matches('-');
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let d = root.join(format!("mariadb-template-{tag}"));
        if d.join("mysql").is_dir() {
            return d;
        }
        // Made aside and renamed into place, so that a test binary running
        // beside this one never copies a half-made template.
        let fresh = tempfile::Builder::new()
            .prefix("mariadb-template-")
            .tempdir_in(root)
            .expect("temp dir for the MariaDB template");
        let data = fresh.path().join("data");
        let out = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--innodb-log-file-size=4M",
                "--innodb-buffer-pool-size=16M",
                "--skip-log-bin",
            ])
            .arg(format!("--datadir={}", data.display()))
            .output()
            .expect("mariadb-install-db (Debian package mariadb-server; .ci/run installs it)");
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Another process that renamed its own first wins; this one's goes
        // with `fresh`.
        if std::fs::rename(&data, &d).is_err() {
            assert!(
                d.join("mysql").is_dir(),
                "MariaDB template at {}",
                d.display()
            );
        }
        d
    })
}

/// A MariaDB server of our own: port chosen free, data in a temp dir,
/// stopped by its pid.
pub struct Mariadb {
    pub proc: Option<Proc>,
    pub port: u16,
    pub dir: TempDir,
}

impl Mariadb {
    /// Copies the template data directory and starts the server.
    pub fn start() -> Mariadb {
        let dir = temp_dir();
        let out = Command::new("cp")
            .arg("-a")
            .arg(mariadb_template())
            .arg(dir.join("data"))
            .output()
            .expect("cp");
        assert!(out.status.success(), "copy the MariaDB template");
        let mut m = Mariadb {
            proc: None,
            port: free_port(),
            dir,
        };
        m.run();
        m
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    /// Starts (or restarts) mariadbd on the same port and data.
    pub fn run(&mut self) {
        let child = Command::new("mariadbd")
            .args([
                "--no-defaults",
                "--user=root",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-log-file-size=4M",
                "--innodb-buffer-pool-size=16M",
                "--innodb-flush-log-at-trx-commit=0",
            ])
            .arg(format!("--port={}", self.port))
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!("--socket={}", self.sock().display()))
            .arg(format!(
                "--pid-file={}",
                self.dir.join("mysqld.pid").display()
            ))
            .arg(format!(
                "--log-error={}",
                self.dir.join("mariadb.err").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd (Debian package mariadb-server; .ci/run installs it)");
        self.proc = Some(Proc {
            child,
            name: "mariadb".into(),
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.try_sql("SELECT 1").is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mariadbd did not start on port {}", self.port);
    }

    /// Stops the server by its pid (SIGTERM, waits for it to exit).
    pub fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            drop(p);
        }
    }

    fn try_sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .args(["--no-defaults", "-uroot", "--batch", "--skip-column-names"])
            .arg(format!("--socket={}", self.sock().display()))
            .args(["-e", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs SQL as root (over the socket); panics on an error.
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql)
            .unwrap_or_else(|e| panic!("SQL failed: {e}\n{sql}"))
    }

    /// MOR's tables (shared/mor-api/mor-db.md) with the simulator's users
    /// and settings (admin key [`KEY`], res1's `resellerkey`), MOR's own
    /// account for the simulator, and the gateway's least-privilege account:
    /// column grants on users and a view over the five conflines rows.
    pub fn mor(&self) {
        self.sql(&format!(
            r#"
CREATE DATABASE mor;
CREATE TABLE mor.users (id INT PRIMARY KEY, username VARCHAR(255) NOT NULL, password VARCHAR(255),
  usertype VARCHAR(20) NOT NULL, owner_id INT NOT NULL DEFAULT 0, uniquehash VARCHAR(64), first_name VARCHAR(255));
CREATE TABLE mor.conflines (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(255) NOT NULL,
  value TEXT, owner_id INT NOT NULL DEFAULT 0);
INSERT INTO mor.users (id, username, password, usertype, owner_id, uniquehash) VALUES
  (0, 'admin', 'x', 'admin', 0, 'adminuniq'), (2, 'john', 'x', 'user', 0, 'johnuniq'),
  (3, 'anna', 'x', 'user', 0, 'annauniq'), (4, 'res1', 'x', 'reseller', 0, 'res1uniq'),
  (5, 'ruser', 'x', 'user', 4, 'ruseruniq'), (6, 'acc1', 'x', 'accountant', 0, 'acc1uniq'),
  (123, 'client123', 'x', 'user', 0, 'client123uniq');
INSERT INTO mor.conflines (name, value, owner_id) VALUES
  ('API_Secret_Key', '{KEY}', 0), ('Allow_API', '1', 0), ('Allow_GET_API', '0', 0),
  ('API_Disable_hash_checking', '0', 0), ('Devices_Check_Ballance', '1', 0),
  ('Email_Smtp_Password', 'smtp-pw-never-read', 0), ('Paypal_Password', 'pp-pw-never-read', 0),
  ('API_Secret_Key', 'resellerkey', 4), ('Allow_API', '1', 4), ('API_Disable_hash_checking', '0', 4);
CREATE VIEW mor.gateway_conflines AS SELECT id, name, value, owner_id FROM mor.conflines
  WHERE name IN ('API_Secret_Key', 'Allow_API', 'API_Disable_hash_checking', 'Allow_GET_API', 'Devices_Check_Ballance');
CREATE USER 'mor-gateway'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}';
GRANT SELECT (id, username, usertype, owner_id, uniquehash) ON mor.users TO 'mor-gateway'@'127.0.0.1';
GRANT SELECT ON mor.gateway_conflines TO 'mor-gateway'@'127.0.0.1';
CREATE USER 'mor'@'127.0.0.1' IDENTIFIED BY 'mor-app-pw';
GRANT ALL ON mor.* TO 'mor'@'127.0.0.1';
"#
        ));
    }

    /// The simulator's (MOR's own) database URL.
    pub fn mor_url(&self) -> String {
        format!("mysql://mor:mor-app-pw@127.0.0.1:{}/mor", self.port)
    }

    /// The `[directory]` table of a gateway config reading this server.
    pub fn directory_toml(&self, extra: &str) -> String {
        format!(
            "[directory]\nurl = \"mysql://mor-gateway@127.0.0.1:{}/mor\"\npassword_env = \"GW_DB_PASSWORD\"\nrefresh_interval = \"1s\"\ntimeout = \"2s\"\n{extra}\n",
            self.port
        )
    }
}

/// The server is stopped; its directory goes with `dir`.
impl Drop for Mariadb {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The simulator reading MOR's database at `url` (callers and settings).
pub fn start_sim_db(url: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    let port = free_port();
    let a = addr(port);
    let child = Command::new(SIM_BIN)
        .args(["--listen", &a.to_string(), "--key-env", "SIM_KEY"])
        .args(["--db-url-env", "SIM_DB_URL"])
        .args(extra)
        .env("SIM_KEY", "unused-with-a-database")
        .env("SIM_DB_URL", url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn simulator");
    let p = Proc {
        child,
        name: "sim".into(),
    };
    wait_listening(a, "simulator");
    (p, a)
}

/// Runs the `openssl` command in `dir` (certificates for the TLS tests).
pub fn openssl(dir: &Path, args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the openssl command (Debian: openssl)");
    assert!(st.success(), "openssl {args:?}");
}

/// A CA and a server certificate for localhost/127.0.0.1 signed by it:
/// (ca.pem, NAME.pem, NAME.key).
pub fn certs(dir: &Path, ca: &str, name: &str, cn: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = format!("{ca}.key");
    let ca_pem = format!("{ca}.pem");
    if !dir.join(&ca_pem).exists() {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &ca_key,
                "-out",
                &ca_pem,
                "-days",
                "2",
                "-subj",
                &format!("/CN={ca}"),
            ],
        );
    }
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    (dir.join(ca_pem), dir.join(pem), dir.join(key))
}

/// A TLS client trusting `ca` over `tcp`.
pub fn tls_over(
    tcp: TcpStream,
    ca: &Path,
    max: Option<openssl::ssl::SslVersion>,
) -> openssl::ssl::SslStream<TcpStream> {
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
    b.set_ca_file(ca).unwrap();
    b.set_verify(openssl::ssl::SslVerifyMode::PEER);
    b.set_max_proto_version(max).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    b.build().connect("localhost", tcp).expect("TLS handshake")
}
