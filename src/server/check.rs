//! What `mor-gateway check` does beyond parsing: builds the runtime state
//! as `run` would, and reads MOR's database when the config mirrors it.

use std::sync::Arc;

use super::ServerError;
use crate::config::{LogMode, Settings};
use crate::core::directory::{Directory, Source};
use crate::edge::mor_db;
use crate::edge::state::Shared;
use crate::ops::accesslog::{self, AccessLog};
use crate::ops::metrics::Metrics;

/// Builds everything `run` builds from `settings` except the listeners and
/// the access log file (limiters, the upstream set; the log's file or
/// directory is checked, not created), so that a configuration `check`
/// accepts also starts (`mor-gateway check`).
pub fn check(settings: &Settings) -> Result<(), ServerError> {
    let metrics = Arc::new(Metrics::new());
    // Whether `run` can write it, creating nothing (check often runs as
    // root, before the service ever did).
    accesslog::check_target(settings.access_log, settings.access_log_path.as_deref())
        .map_err(ServerError::AccessLog)?;
    let log = AccessLog::open(LogMode::Off, None).map_err(ServerError::AccessLog)?;
    Shared::new(Arc::new(settings.clone()), metrics, log).map_err(ServerError::Upstreams)?;
    Ok(())
}

/// The layers that report, and a warning per owner the `[rollout]`
/// tables name that `dir` does not know (`dir`: the static directory, or
/// the snapshot `check` read).
pub fn check_rollout(settings: &Settings, dir: &crate::core::directory::Directory) -> Vec<String> {
    let e = &settings.policy.rollout;
    let mut out = Vec::new();
    let lines = e.describe();
    if lines.is_empty() {
        out.push("rollout        every layer enforces".to_string());
    } else {
        out.push(format!(
            "rollout        report-only layers set:\n               {}",
            lines.join("\n               ")
        ));
    }
    for name in e.owner_names() {
        if !dir.owner_names().any(|n| n == name) {
            out.push(format!(
                "rollout        WARNING: rollout.owners.{name}: no owner of that name (the admin or a reseller); its table applies to nobody"
            ));
        }
    }
    out
}

/// What `check` finds in MOR's database (with `[directory]`): a snapshot's
/// counts and switches, and whether the account can read more than it
/// needs. Lines to print; the database being unreachable is reported, not
/// an error (the gateway can start without it if the config says so).
pub fn check_directory(settings: &Settings) -> Vec<String> {
    use std::fmt::Write;
    let Some(db) = &settings.mor_db else {
        return access_warnings(settings, &settings.policy.directory);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return vec![format!("directory      not checked: {e}")],
    };
    let mut out = Vec::new();
    rt.block_on(async {
        let read = tokio::time::timeout(db.timeout, mor_db::read(db, None)).await;
        match read {
            Ok(Ok((mor_db::Read::Fresh(d), _))) => {
                out.extend(check_rollout(settings, &d));
                let on = |b: bool| if b { "on" } else { "off" };
                out.push(format!(
                    "directory      read: {} users, {} owners; admin: Allow API {}, hash checking {}, key {}; Allow GET API {}; Devices_Check_Ballance {}",
                    d.user_count,
                    d.owner_count,
                    on(d.admin().allow_api),
                    on(!d.admin().hash_off),
                    if d.admin().key.is_some() { "set" } else { "EMPTY" },
                    on(d.allow_get),
                    on(d.balance_over_http)
                ));
                let unusual = d.unusual_owners();
                let mut line = format!(
                    "owners         {} with Allow API off, hash checking off or no key",
                    unusual.len()
                );
                for (id, o) in unusual.iter().take(20) {
                    let _ = write!(
                        line,
                        "\n               {} (id {id}): Allow API {}, hash checking {}, key {}",
                        o.name,
                        on(o.allow_api),
                        on(!(o.allow_api && o.hash_off)),
                        if o.key.is_some() { "set" } else { "empty" }
                    );
                }
                if unusual.len() > 20 {
                    let _ = write!(line, "\n               ... and {} more", unusual.len() - 20);
                }
                out.push(line);
                out.extend(access_warnings(settings, &d));
            }
            Ok(Ok((mor_db::Read::Unchanged, _))) => {}
            Ok(Err(e)) => out.push(format!("directory      WARNING: cannot read MOR's database: {e}")),
            Err(_) => out.push(format!(
                "directory      WARNING: MOR's database did not answer within {:?}",
                db.timeout
            )),
        }
        match tokio::time::timeout(db.timeout, mor_db::grants(db)).await {
            Ok(Ok(lines)) => {
                let extra = mor_db::excess(&lines, &db.database, &db.users_table, &db.settings_view);
                if extra.is_empty() {
                    out.push("grants         least privilege: the five users columns and the settings view only".into());
                } else {
                    let mut line = "grants         WARNING: the account can read more than it needs (README: \"Mirroring MOR's settings\"):".to_string();
                    for g in extra {
                        let _ = write!(line, "\n               {g}");
                    }
                    out.push(line);
                }
            }
            Ok(Err(e)) => out.push(format!("grants         not checked: {e}")),
            Err(_) => out.push("grants         not checked: no answer".into()),
        }
    });
    out
}

/// A warning for each `[access.owners.<name>]` that names no owner of
/// `dir` (its lists would never apply).
fn access_warnings(settings: &Settings, dir: &Directory) -> Vec<String> {
    settings
        .policy
        .access
        .unknown_owners(dir)
        .into_iter()
        .map(|n| {
            format!(
                "access         WARNING: [access.owners.{n}] names no owner in {} (the admin is \"admin\"): its lists never apply",
                match dir.source {
                    Source::Config => "the config's [[resellers]]",
                    Source::Database => "MOR's database",
                }
            )
        })
        .collect()
}
