//! The access log: one JSON line per request, secrets redacted. Lines go
//! through a bounded queue to a writer thread, so a request never waits for
//! the disk (nor for a lock): when the queue is full the line is dropped and
//! counted (`mor_gateway_access_log_dropped_total{reason="queue_full"}`).
//! The file is reopened on SIGUSR1 (logrotate's `postrotate`) and on every
//! reload, which also applies a changed `access_log.mode` or `path`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Serialize, Serializer};

use crate::config::LogMode;
#[cfg(doc)]
use crate::core::judge::MorAnswer;
use crate::core::judge::{Disagreement, Judgement};
use crate::ops::metrics::ACCESS_LOG_DROPPED;

/// Lines the queue to the writer thread holds; a line beyond is dropped.
pub const QUEUE_LINES: usize = 16_384;

/// A wall-clock time, serialised as RFC 3339 in UTC with microseconds
/// (`2026-01-31T12:00:00.123456Z`).
#[derive(Debug, Clone, Copy)]
pub struct Timestamp(SystemTime);

impl Timestamp {
    /// Now.
    pub fn now() -> Timestamp {
        Timestamp(SystemTime::now())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(self.0))
    }
}

/// A duration in whole microseconds (saturating).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// One access-log record.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// When the request finished: RFC 3339, UTC, microseconds.
    pub ts: Timestamp,
    /// Client IP.
    pub client_ip: String,
    /// HTTP method.
    pub http_method: &'a str,
    /// Request path as received (no query).
    pub path: &'a str,
    /// Query string with secret values redacted.
    pub query: Option<String>,
    /// Canonical API method, if catalogued.
    pub api_method: Option<&'a str>,
    /// Alias used, if any.
    pub alias: Option<&'a str>,
    /// `u`.
    pub user: Option<&'a str>,
    /// forwarded, refused, limited or upstream_error.
    pub verdict: &'a str,
    /// Refusal reason label, if refused.
    pub reason: Option<&'a str>,
    /// HTTP status sent.
    pub status: u16,
    /// Time at the gateway, from the request's arrival to the end of the
    /// response, in whole microseconds.
    pub latency_us: u64,
    /// Upstream used, if any.
    pub upstream: Option<String>,
    /// Key that signed (admin, reseller:NAME, unchecked).
    pub signer: Option<String>,
    /// What reporting layers would have refused: `layer:reason`, joined by
    /// `,` (e.g. `hash:bad_hash`); absent when none would have.
    pub would_refuse: Option<String>,
    /// The call's id (`X-Request-Id`: the client's when sane, else made by
    /// the gateway), also sent to MOR and back to the client.
    pub request_id: Option<&'a str>,
    /// The judge's fields: `mor_answer` and `disagreement` ([`Judge`]).
    #[serde(flatten)]
    pub judge: Judge,
}

/// The access line's judge fields, from a forwarded call's judgement.
#[derive(Debug, Default, Serialize)]
pub struct Judge {
    /// MOR's answer to a forwarded API call (`served`, `incorrect_hash`, ...:
    /// [`MorAnswer::label`]); absent when the call was not judged (refused
    /// at the edge, a pass-through path, an answer cut short).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mor_answer: Option<&'static str>,
    /// Where the gateway and MOR disagree about the call (`would_break`,
    /// `drift`, `mor_caught`: [`Disagreement::label`]); absent when they
    /// agree or the call was not judged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disagreement: Option<&'static str>,
}

impl From<Option<Judgement>> for Judge {
    fn from(j: Option<Judgement>) -> Judge {
        Judge {
            mor_answer: j.map(|j| j.mor.label()),
            disagreement: j.and_then(|j| j.disagreement()).map(Disagreement::label),
        }
    }
}

/// True for parameter names whose values must never be logged.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "hash" | "p" | "pswd" | "uniquehash" | "key" | "token" | "password2"
    ) || n.contains("password")
        || n.contains("secret")
        || n.contains("passwd")
}

/// A query string with the values of secret names replaced by `[redacted]`.
/// Pairs are split on `&` and `;` as MOR splits them; a name is judged by its
/// base (`p[]`, `hash[x]` are `p`, `hash`); a name that does not decode is
/// treated as secret. Separators and the other pairs are kept as sent.
/// With `id_secret` the `id` values are redacted too (the device password of
/// user_balance_get_by_psw).
pub fn redact_query_also(q: &str, id_secret: bool) -> String {
    let mut out = String::with_capacity(q.len());
    let mut rest = q;
    loop {
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        let pair = &rest[..end];
        let name = pair.split_once('=').map_or(pair, |(k, _)| k);
        let secret = match crate::core::params::decode(name.as_bytes()) {
            Ok(n) => {
                let base = n.split('[').next().unwrap_or("");
                is_secret_name(base) || (id_secret && base == "id")
            }
            Err(_) => true,
        };
        if secret && pair.contains('=') {
            out.push_str(name);
            out.push_str("=[redacted]");
        } else {
            out.push_str(pair);
        }
        match rest[end..].chars().next() {
            Some(sep) => {
                out.push(sep);
                rest = &rest[end + 1..];
            }
            None => return out,
        }
    }
}

/// Where the lines of one configuration go.
enum Sink {
    Off,
    Stdout(BufWriter<std::io::Stdout>),
    File(BufWriter<File>),
}

impl Sink {
    /// Opens the sink for `mode` (appending to `path` in file mode).
    fn open(mode: LogMode, path: Option<&Path>) -> std::io::Result<Sink> {
        Ok(match (mode, path) {
            (LogMode::Off, _) | (LogMode::File, None) => Sink::Off,
            (LogMode::Stdout, _) => Sink::Stdout(BufWriter::new(std::io::stdout())),
            (LogMode::File, Some(p)) => Sink::File(BufWriter::with_capacity(
                64 * 1024,
                OpenOptions::new().create(true).append(true).open(p)?,
            )),
        })
    }

    fn writer(&mut self) -> Option<&mut dyn Write> {
        match self {
            Sink::Off => None,
            Sink::Stdout(w) => Some(w),
            Sink::File(w) => Some(w),
        }
    }
}

/// What the request path sends to the writer thread.
enum Msg {
    /// One JSON line, newline included.
    Line(Vec<u8>),
    /// Look at the pending sink now.
    Wake,
}

/// State shared by the request path, the signal handlers and the writer.
struct Control {
    /// A sink to switch to before the next line (reopen or reconfigure).
    pending: Mutex<Option<Sink>>,
    /// Set when `pending` holds a sink.
    switch: AtomicBool,
    /// Lines queued (accepted by the queue).
    queued: AtomicU64,
    /// Lines the writer has written and flushed, or counted as dropped.
    done: AtomicU64,
}

/// The access log: a handle to the queue and to what it is configured for.
pub struct AccessLog {
    tx: SyncSender<Msg>,
    control: Arc<Control>,
    enabled: AtomicBool,
    /// The mode and path in force (read only by reopen and reconfigure).
    target: Mutex<(LogMode, Option<PathBuf>)>,
}

/// Whether `run` will be able to write the log for `mode` and `path`,
/// without creating or changing anything (for `check`, often run as root
/// before the service ever ran): an existing file must open for appending;
/// a missing one needs an existing directory with a write permission bit
/// (`run` creates the file there).
pub fn check_target(mode: LogMode, path: Option<&Path>) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::PermissionsExt;
    let (LogMode::File, Some(p)) = (mode, path) else {
        return Ok(());
    };
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{} is a directory", p.display()),
        )),
        Ok(_) => OpenOptions::new()
            .append(true)
            .open(p)
            .map(drop)
            .map_err(|e| Error::new(e.kind(), format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            let m = std::fs::metadata(dir).map_err(|e| {
                Error::new(
                    e.kind(),
                    format!("{}: its directory {}: {e}", p.display(), dir.display()),
                )
            })?;
            if !m.is_dir() {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("{}: {} is not a directory", p.display(), dir.display()),
                ));
            }
            if m.permissions().mode() & 0o222 == 0 {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "{}: its directory {} is not writable",
                        p.display(),
                        dir.display()
                    ),
                ));
            }
            Ok(())
        }
        Err(e) => Err(Error::new(e.kind(), format!("{}: {e}", p.display()))),
    }
}

impl AccessLog {
    /// Opens the log for `mode` (appending to `path` for file mode) and
    /// starts its writer thread.
    pub fn open(mode: LogMode, path: Option<&Path>) -> std::io::Result<AccessLog> {
        AccessLog::with_queue(mode, path, QUEUE_LINES)
    }

    fn with_queue(mode: LogMode, path: Option<&Path>, lines: usize) -> std::io::Result<AccessLog> {
        let sink = Sink::open(mode, path)?;
        let (tx, rx) = sync_channel(lines);
        let control = Arc::new(Control {
            pending: Mutex::new(None),
            switch: AtomicBool::new(false),
            queued: AtomicU64::new(0),
            done: AtomicU64::new(0),
        });
        let c = control.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, sink, &c))?;
        Ok(AccessLog {
            tx,
            control,
            enabled: AtomicBool::new(enabled(mode, path)),
            target: Mutex::new((mode, path.map(Path::to_path_buf))),
        })
    }

    /// True when records are written somewhere.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Queues one record; never blocks. A full queue drops the line and
    /// counts it.
    pub fn write(&self, rec: &Record<'_>) {
        if !self.enabled() {
            return;
        }
        let Ok(mut line) = serde_json::to_vec(rec) else {
            return;
        };
        line.push(b'\n');
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {
                self.control.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                ACCESS_LOG_DROPPED.with_label_values(&["queue_full"]).inc();
            }
        }
    }

    /// Reopens the file in force (SIGUSR1, after logrotate renamed it).
    /// On error the old file stays in use.
    pub fn reopen(&self) -> std::io::Result<()> {
        let (mode, path) = match self.target.lock() {
            Ok(t) => t.clone(),
            Err(_) => return Ok(()),
        };
        self.configure(mode, path.as_deref())
    }

    /// Switches to `mode`/`path` (a reload; also reopens an unchanged
    /// file). The new file is opened here, so an error is the caller's and
    /// the old sink stays; lines queued before the switch may land in
    /// either file, none is lost.
    pub fn configure(&self, mode: LogMode, path: Option<&Path>) -> std::io::Result<()> {
        let sink = Sink::open(mode, path)?;
        if let Ok(mut t) = self.target.lock() {
            *t = (mode, path.map(Path::to_path_buf));
        }
        if let Ok(mut p) = self.control.pending.lock() {
            *p = Some(sink);
        }
        self.control.switch.store(true, Ordering::Release);
        // Lines logged from now on go to the new sink; a full queue means
        // the writer is busy and sees the switch before its next line.
        let _ = self.tx.try_send(Msg::Wake);
        self.enabled.store(enabled(mode, path), Ordering::Relaxed);
        Ok(())
    }

    /// Waits until every line queued so far is written and flushed, or
    /// `limit` passed (at shutdown). True when everything was written.
    pub fn flush(&self, limit: Duration) -> bool {
        let want = self.control.queued.load(Ordering::Acquire);
        let deadline = Instant::now() + limit;
        while self.control.done.load(Ordering::Acquire) < want {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

fn enabled(mode: LogMode, path: Option<&Path>) -> bool {
    match mode {
        LogMode::Off => false,
        LogMode::Stdout => true,
        LogMode::File => path.is_some(),
    }
}

/// The writer thread: takes lines off the queue, writes them in batches,
/// flushes when the queue is empty, and switches sinks between lines.
fn writer(rx: Receiver<Msg>, mut sink: Sink, control: &Control) {
    let mut unflushed = 0u64;
    let mut failing = false;
    loop {
        let msg = if unflushed == 0 {
            rx.recv().ok()
        } else {
            match rx.try_recv() {
                Ok(m) => Some(m),
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    finish(&mut sink, &mut unflushed, &mut failing, control);
                    continue;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => None,
            }
        };
        if control.switch.swap(false, Ordering::AcqRel) {
            if let Some(new) = control.pending.lock().ok().and_then(|mut p| p.take()) {
                finish(&mut sink, &mut unflushed, &mut failing, control);
                sink = new;
            }
        }
        match msg {
            Some(Msg::Line(line)) => {
                match sink.writer().map(|w| w.write_all(&line)) {
                    Some(Ok(())) | None => {}
                    Some(Err(e)) => {
                        write_failed(&mut failing, &e);
                        ACCESS_LOG_DROPPED.with_label_values(&["write_error"]).inc();
                    }
                }
                unflushed += 1;
            }
            Some(Msg::Wake) => {}
            None => {
                finish(&mut sink, &mut unflushed, &mut failing, control);
                return;
            }
        }
    }
}

/// Flushes the sink and marks the lines since the last flush as done. A
/// failed flush keeps its bytes in the buffer for the next one.
fn finish(sink: &mut Sink, unflushed: &mut u64, failing: &mut bool, control: &Control) {
    match sink.writer().map(|w| w.flush()) {
        Some(Err(e)) => write_failed(failing, &e),
        _ if *failing => {
            tracing::info!("access log writes succeed again");
            *failing = false;
        }
        _ => {}
    }
    control.done.fetch_add(*unflushed, Ordering::Release);
    *unflushed = 0;
}

fn write_failed(failing: &mut bool, e: &std::io::Error) {
    if !*failing {
        tracing::error!("access log write failed, lines are dropped until it succeeds: {e}");
        *failing = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str) -> Record<'_> {
        Record {
            ts: Timestamp::now(),
            client_ip: "127.0.0.1".into(),
            http_method: "POST",
            path,
            query: None,
            api_method: None,
            alias: None,
            user: None,
            verdict: "forwarded",
            reason: None,
            status: 200,
            latency_us: micros(Duration::from_micros(1234)),
            upstream: None,
            signer: None,
            would_refuse: None,
            request_id: None,
            judge: Judge::default(),
        }
    }

    #[test]
    fn the_judges_fields_are_there_only_when_judged() {
        use crate::core::judge::{Judged, MorAnswer};
        let v = serde_json::to_value(rec("/x")).unwrap();
        assert!(v.get("mor_answer").is_none() && v.get("disagreement").is_none());
        let drift = Judgement {
            gateway: Judged::Verified,
            mor: MorAnswer::IncorrectHash,
        };
        let judged = |j| Record {
            judge: Judge::from(Some(j)),
            ..rec("/x")
        };
        let v = serde_json::to_value(judged(drift)).unwrap();
        assert_eq!(v["mor_answer"], "incorrect_hash");
        assert_eq!(v["disagreement"], "drift");
        let agree = Judgement {
            gateway: Judged::Verified,
            mor: MorAnswer::Served,
        };
        let v = serde_json::to_value(judged(agree)).unwrap();
        assert_eq!(v["mor_answer"], "served");
        assert!(v.get("disagreement").is_none());
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("morgw-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn lines(p: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn rfc3339_timestamps_and_integer_microseconds() {
        let v: serde_json::Value = serde_json::to_value(rec("/x")).unwrap();
        let ts = v["ts"].as_str().unwrap();
        assert_eq!(ts.len(), "2026-01-31T12:00:00.123456Z".len(), "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
        assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
        assert_eq!(v["latency_us"], 1234);
        assert!(v.get("latency_ms").is_none());
    }

    #[test]
    fn reopen_after_rename_loses_nothing_and_reconfigure_switches() {
        let d = temp("reopen");
        let (live, old) = (d.join("access.log"), d.join("access.log.1"));
        let log = AccessLog::open(LogMode::File, Some(&live)).unwrap();
        for _ in 0..100 {
            log.write(&rec("/a"));
        }
        assert!(log.flush(Duration::from_secs(5)));
        std::fs::rename(&live, &old).unwrap();
        for _ in 0..50 {
            log.write(&rec("/b")); // still the renamed file, until the reopen
        }
        log.reopen().unwrap();
        for _ in 0..70 {
            log.write(&rec("/c"));
        }
        assert!(log.flush(Duration::from_secs(5)));
        let (o, n) = (lines(&old), lines(&live));
        assert_eq!(o.len() + n.len(), 220);
        assert!(o.len() >= 100 && n.iter().all(|l| l["path"] != "/a"));

        // Reload to off, then to another file.
        log.configure(LogMode::Off, None).unwrap();
        assert!(!log.enabled());
        log.write(&rec("/off"));
        let other = d.join("other.log");
        log.configure(LogMode::File, Some(&other)).unwrap();
        log.write(&rec("/d"));
        assert!(log.flush(Duration::from_secs(5)));
        assert_eq!(lines(&other).len(), 1);
        assert_eq!(lines(&live).len(), n.len());
        // A file that cannot be opened is an error, and the old one stays.
        assert!(log
            .configure(LogMode::File, Some(&d.join("no/such/dir/x.log")))
            .is_err());
        log.write(&rec("/e"));
        assert!(log.flush(Duration::from_secs(5)));
        assert_eq!(lines(&other).len(), 2);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let d = temp("full");
        let log = AccessLog::with_queue(LogMode::File, Some(&d.join("a.log")), 1).unwrap();
        let dropped = || ACCESS_LOG_DROPPED.with_label_values(&["queue_full"]).get();
        let before = dropped();
        // Stall the writer: it takes the pending lock before its next line.
        let guard = log.control.pending.lock().unwrap();
        log.control.switch.store(true, Ordering::Release);
        let t = Instant::now();
        for _ in 0..10 {
            log.write(&rec("/x"));
        }
        assert!(t.elapsed() < Duration::from_secs(1), "write never waits");
        assert!(dropped() - before >= 8, "{} dropped", dropped() - before);
        drop(guard);
        assert!(log.flush(Duration::from_secs(5)));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn redacts_secrets_keeps_rest() {
        let q = "u=admin&p=pw&hash=abc&user_id=5&pswd=x&new_password=y&api_secret=z&h%61sh=q";
        let r = redact_query_also(q, false);
        assert_eq!(
            r,
            "u=admin&p=[redacted]&hash=[redacted]&user_id=5&pswd=[redacted]&new_password=[redacted]&api_secret=[redacted]&h%61sh=[redacted]"
        );
    }

    #[test]
    fn redacts_list_forms_semicolons_and_undecodable_names() {
        assert_eq!(
            redact_query_also("p[]=pw&hash[x]=h;u=a;p=q&%ZZ=v&%FF=w&user_id=1", false),
            "p[]=[redacted]&hash[x]=[redacted];u=a;p=[redacted]&%ZZ=[redacted]&%FF=[redacted]&user_id=1"
        );
        assert_eq!(redact_query_also("", false), "");
        assert_eq!(redact_query_also("&&hash", false), "&&hash");
        assert_eq!(redact_query_also("id=s3cr3t&u=a", false), "id=s3cr3t&u=a");
        assert_eq!(
            redact_query_also("id=s3cr3t&u=a", true),
            "id=[redacted]&u=a"
        );
    }
}
