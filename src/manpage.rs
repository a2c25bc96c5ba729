//! The manual pages, generated from the CLI definition (clap_mangen):
//! `mor-gateway(8)` with the environment, signals and files a sysadmin
//! needs, and one page per command (`mor-gateway-run(8)`, ...).

use std::io::Write;
use std::path::Path;

use clap::Command;
use clap_mangen::Man;

/// The manual section: a system daemon's.
const SECTION: &str = "8";

/// Sections of the main page beyond what clap knows: (heading, roff body).
/// Bodies are roff source: `.TP` starts a tagged paragraph.
const EXTRA: &[(&str, &str)] = &[
    (
        "ENVIRONMENT",
        r#".TP
\fBMOR_GATEWAY_LOG\fR
What the gateway logs on stderr, in tracing\-subscriber's EnvFilter syntax:
a level (\fBerror\fR, \fBwarn\fR, \fBinfo\fR, \fBdebug\fR, \fBtrace\fR) or
comma\-separated \fItarget\fR=\fIlevel\fR pairs. Default:
\fBwarn,mor_gateway=info\fR. Example: \fBMOR_GATEWAY_LOG=info,pingora_core=warn\fR.
stderr carries colour codes only when it is a terminal (never in files or
journald), and not when \fBNO_COLOR\fR is set.
.TP
\fBNO_COLOR\fR
When set and not empty, no colour even on a terminal.
.TP
\fBMOR_API_SECRET\fR
The MOR API secret key, when the configuration names it
(\fBsecrets.admin_key_env\fR; \fBadmin_key_file\fR reads a file instead).
Reseller keys come from the variables or files their \fB[[resellers]]\fR
entries name. Secrets are never printed or logged."#,
    ),
    (
        "SIGNALS",
        r#".TP
\fBSIGHUP\fR
Reload the configuration file. A file that does not check is refused and
the running configuration stays (\fBmor_gateway_config_reloads_total\fR
counts both). The access log is reopened and a changed
\fBaccess_log.mode\fR or \fBpath\fR is applied. \fBlisten\fR, \fBtls.listen\fR,
\fBmetrics.listen\fR, \fBthreads\fR, \fBwork_stealing\fR, \fBshutdown_grace\fR,
\fBupgrade_sock\fR, \fBread_buffer_bytes\fR and
\fBupstream.keepalive_pool_size\fR change only on restart (a reload that
changes one warns, naming it).
.TP
\fBSIGUSR1\fR
Reopen the access log file (after logrotate renamed it). No line is lost:
lines written before the signal are in the old file, the rest in the new.
.TP
\fBSIGUSR2\fR
Drain: every call is still served, \fB/readyz\fR answers 503 (a balancer
moves traffic away), each connection closes after its next answer, and
\fBmor_gateway_draining\fR is 1. SIGUSR2 again ends the drain.
.TP
\fBSIGTERM\fR
Stop: the listeners and the idle keep\-alive connections close at once,
calls in flight finish, queued access\-log lines are written, and the
process exits as soon as no connection is left (\fBshutdown_grace\fR at
most).
.TP
\fBSIGINT\fR
Stop at once.
.TP
\fBSIGQUIT\fR
Zero\-downtime upgrade: hand the listening sockets to a new
\fBmor\-gateway run \-\-upgrade\fR process, finish the calls in flight,
exit."#,
    ),
    (
        "FILES",
        r#".TP
\fI/etc/mor\-gateway/gateway.toml\fR
The configuration (every key and its default:
\fI/usr/share/doc/mor\-gateway/gateway.toml.reference\fR).
\fBmor\-gateway check \-c\fR \fIFILE\fR validates it.
.TP
\fI/etc/mor\-gateway/secrets.env\fR
Optional, root\-only: \fBMOR_API_SECRET=\fR\fI...\fR, read by systemd
(\fBEnvironmentFile=\fR) before the service starts;
\fBmor\-gateway check \-c\fR \fIFILE\fR \fB\-\-env\-file\fR
\fI/etc/mor\-gateway/secrets.env\fR reads it the same way. Purging the
package removes it.
.TP
\fI/var/log/mor\-gateway/access.log\fR
The access log: one JSON object per line (\fBts\fR RFC 3339 UTC with
microseconds, \fBclient_ip\fR, \fBhttp_method\fR, \fBpath\fR, \fBquery\fR
with secrets redacted, \fBapi_method\fR, \fBalias\fR, \fBuser\fR,
\fBverdict\fR, \fBreason\fR, \fBstatus\fR, \fBlatency_us\fR,
\fBupstream\fR, \fBsigner\fR, \fBrequest_id\fR). Rotated by
\fI/etc/logrotate.d/mor\-gateway\fR with SIGUSR1.
.TP
\fI/usr/lib/systemd/system/mor\-gateway.service\fR, \fImor\-gateway@.service\fR
The service, and the upgrade slots \fBmor\-gateway@a\fR, \fBmor\-gateway@b\fR
that take the listeners over with \fBrun \-\-upgrade\fR."#,
    ),
    (
        "EXIT STATUS",
        r#"0 on success and after a clean stop; 1 when the configuration is
invalid, a listener or file cannot be opened, or a command fails."#,
    ),
    (
        "SEE ALSO",
        r#"\fBsystemctl\fR(1), \fBsystemd.exec\fR(5), \fBlogrotate\fR(8),
\fI/usr/share/doc/mor\-gateway/README.md\fR"#,
    ),
];

fn man(cmd: Command) -> Man {
    let source = format!("mor-gateway {}", env!("CARGO_PKG_VERSION"));
    Man::new(cmd.disable_help_subcommand(true))
        .section(SECTION)
        .source(source)
        .manual("System Administration")
}

/// The main page: clap's page with [`EXTRA`] before its VERSION section.
pub fn main_page(cmd: Command, w: &mut dyn Write) -> std::io::Result<()> {
    let mut page = Vec::new();
    man(cmd).render(&mut page)?;
    let page = String::from_utf8_lossy(&page);
    let (head, tail) = page
        .split_once("\n.SH VERSION\n")
        .map_or((page.as_ref(), None), |(h, t)| (h, Some(t)));
    writeln!(w, "{head}")?;
    for (heading, body) in EXTRA {
        writeln!(w, ".SH \"{heading}\"")?;
        writeln!(w, "{body}")?;
    }
    if let Some(t) = tail {
        write!(w, ".SH VERSION\n{t}")?;
    }
    Ok(())
}

/// Writes `mor-gateway.8` and one page per visible command into `dir`
/// (with `gzip`: `NAME.8.gz`, as packages install them, with no file name
/// or time in the gzip header, so that a rebuild gives the same bytes);
/// files already there are replaced. Returns the files written.
pub fn write_all(
    mut cmd: Command,
    dir: &Path,
    gzip: bool,
) -> std::io::Result<Vec<std::path::PathBuf>> {
    cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    std::fs::create_dir_all(dir)?;
    let mut pages = Vec::new();
    let mut main = Vec::new();
    main_page(cmd.clone(), &mut main)?;
    pages.push((man(cmd.clone()).get_filename(), main));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let m = man(sub.clone());
        let mut page = Vec::new();
        m.render(&mut page)?;
        pages.push((m.get_filename(), page));
    }
    let mut out = Vec::new();
    for (name, page) in pages {
        let (path, bytes) = if gzip {
            let mut z = flate2::GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), flate2::Compression::best());
            z.write_all(&page)?;
            (dir.join(format!("{name}.gz")), z.finish()?)
        } else {
            (dir.join(name), page)
        };
        std::fs::write(&path, bytes)?;
        out.push(path);
    }
    Ok(out)
}
