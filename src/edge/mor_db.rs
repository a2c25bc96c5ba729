//! Reading MOR's directory from its MySQL/MariaDB database (mysql_async):
//! the five `users` columns and the API settings through the conflines
//! view, read-only, one connection per refresh. Also what `check` asks the
//! server: the account's grants, and whether they allow more than it needs.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};

use crate::config::MorDbSettings;
use crate::core::directory::{Builder, ConfRow, Directory, UserId, CONF_NAMES};

/// What a refresh found: the settings rows and an aggregate of the five
/// `users` columns the server computes (count, largest id, two CRC32
/// folds). Equal fingerprints: nothing the gateway reads has changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    conf: Vec<ConfRow>,
    users: (i64, i64, i64, i64),
}

/// The outcome of a read.
#[derive(Debug)]
pub enum Read {
    /// Nothing changed since `last`: the snapshot in force is current.
    Unchanged,
    /// A new snapshot.
    Fresh(Box<Directory>),
}

/// Why MOR's database could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The client or server failed (connect, TLS, query, grants).
    #[error("{0}")]
    Mysql(#[from] mysql_async::Error),
    /// A row the gateway cannot use.
    #[error("{0}")]
    Row(String),
    /// It took longer than `directory.timeout`.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// A table name as SQL: each part quoted (`db`.`name`); names are checked
/// when the config is read.
fn quoted(name: &str) -> String {
    name.split('.')
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(".")
}

/// An integer column that may be NULL or negative (no owner).
fn id_of(row: &mut Row, i: usize) -> Result<Option<UserId>, DbError> {
    match row.take_opt::<Option<i64>, usize>(i) {
        Some(Ok(v)) => Ok(v.and_then(|n| u64::try_from(n).ok())),
        Some(Err(e)) => Err(DbError::Row(format!("column {i}: {e}"))),
        None => Err(DbError::Row(format!("column {i} missing"))),
    }
}

fn bytes_of(row: &mut Row, i: usize) -> Result<Vec<u8>, DbError> {
    match row.take_opt::<Option<Vec<u8>>, usize>(i) {
        Some(Ok(v)) => Ok(v.unwrap_or_default()),
        Some(Err(e)) => Err(DbError::Row(format!("column {i}: {e}"))),
        None => Err(DbError::Row(format!("column {i} missing"))),
    }
}

/// Reads MOR's directory: the settings view, then (unless the server's
/// fingerprint of the users columns and the settings equal `last`) every
/// user, streamed into the snapshot as the rows arrive. Users whose
/// username is not UTF-8 are left out: no request can name them. Returns
/// the read and the fingerprint seen.
pub async fn read(
    db: &MorDbSettings,
    last: Option<&Fingerprint>,
) -> Result<(Read, Fingerprint), DbError> {
    let mut conn = Conn::new(db.opts.clone()).await?;
    // `id` orders the rows as MOR reads them (the first row of a name and
    // owner wins).
    let names = CONF_NAMES
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT name, value, owner_id FROM {} WHERE name IN ({names}) ORDER BY id",
        quoted(&db.settings_view)
    );
    let mut conf = Vec::new();
    let mut bad: Option<DbError> = None;
    conn.query_iter(sql)
        .await?
        .for_each(|mut row| {
            if bad.is_some() {
                return;
            }
            let parsed = (|| {
                let name = String::from_utf8_lossy(&bytes_of(&mut row, 0)?).into_owned();
                let value = bytes_of(&mut row, 1)?;
                let owner = id_of(&mut row, 2)?;
                Ok::<_, DbError>((name, value, owner))
            })();
            match parsed {
                Ok((name, value, Some(owner_id))) => conf.push(ConfRow {
                    name,
                    value,
                    owner_id,
                }),
                Ok(_) => {}
                Err(e) => bad = Some(e),
            }
        })
        .await?;
    if let Some(e) = bad {
        return Err(e);
    }
    let table = quoted(&db.users_table);
    let row = "CONCAT_WS(0x1f, id, username, usertype, owner_id, uniquehash)";
    let agg: Option<(i64, i64, i64, i64)> = conn
        .query_first(format!(
            "SELECT COUNT(*), COALESCE(MAX(id), 0), COALESCE(SUM(CRC32({row})), 0), \
             COALESCE(BIT_XOR(CRC32(CONCAT({row}, 'x'))), 0) FROM {table}"
        ))
        .await?;
    let fp = Fingerprint {
        conf,
        users: agg.unwrap_or_default(),
    };
    if last == Some(&fp) {
        conn.disconnect().await?;
        return Ok((Read::Unchanged, fp));
    }
    let mut b = Builder::new(&fp.conf, usize::try_from(fp.users.0).unwrap_or(0));
    let sql =
        format!("SELECT id, username, usertype, owner_id, uniquehash FROM {table} ORDER BY id");
    conn.query_iter(sql)
        .await?
        .for_each(|mut row| {
            if bad.is_some() {
                return;
            }
            let parsed = (|| {
                let id = id_of(&mut row, 0)?;
                let name = bytes_of(&mut row, 1)?;
                let usertype = bytes_of(&mut row, 2)?;
                let owner = id_of(&mut row, 3)?;
                let uh = bytes_of(&mut row, 4)?;
                Ok::<_, DbError>((id, name, usertype, owner, uh))
            })();
            match parsed {
                Ok((Some(id), name, usertype, owner, uh)) => {
                    if let Ok(name) = std::str::from_utf8(&name) {
                        b.user(
                            id,
                            name,
                            &String::from_utf8_lossy(&usertype),
                            owner.unwrap_or(UserId::MAX),
                            std::str::from_utf8(&uh).ok(),
                        );
                    }
                }
                Ok(_) => {}
                Err(e) => bad = Some(e),
            }
        })
        .await?;
    if let Some(e) = bad {
        return Err(e);
    }
    conn.disconnect().await?;
    Ok((Read::Fresh(Box::new(b.finish())), fp))
}

/// The account's grants, as the server prints them (`SHOW GRANTS`).
pub async fn grants(db: &MorDbSettings) -> Result<Vec<String>, DbError> {
    let mut conn = Conn::new(db.opts.clone()).await?;
    let lines: Vec<String> = conn.query("SHOW GRANTS").await?;
    conn.disconnect().await?;
    Ok(lines)
}

/// The users columns the gateway reads.
pub const USER_COLUMNS: [&str; 5] = ["id", "username", "usertype", "owner_id", "uniquehash"];

/// Splits `a, b (c, d), e` at the commas outside parentheses.
fn top_level(list: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in list.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(list[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(list[start..].trim());
    out
}

/// `database.name` of a configured table (the URL's database by default).
fn full_name(database: &str, name: &str) -> String {
    if name.contains('.') {
        name.to_ascii_lowercase()
    } else {
        format!("{database}.{name}").to_ascii_lowercase()
    }
}

/// The grant lines that let the account read more than the five `users`
/// columns and the settings view (each shown up to its `TO`, without the
/// password hash a `SHOW GRANTS` line may hold).
pub fn excess(lines: &[String], database: &str, users_table: &str, view: &str) -> Vec<String> {
    let users = full_name(database, users_table);
    let view = full_name(database, view);
    let mut out = Vec::new();
    for line in lines {
        let shown = line.split(" TO ").next().unwrap_or(line).to_string();
        let plain = shown.replace('`', "");
        let Some(rest) = plain.strip_prefix("GRANT ") else {
            out.push(shown);
            continue;
        };
        let Some((privs, object)) = rest.rsplit_once(" ON ") else {
            // A role granted to the account: what it grants is not shown here.
            out.push(shown);
            continue;
        };
        let object = object.trim().to_ascii_lowercase();
        let ok = top_level(privs).iter().all(|p| {
            let upper = p.to_ascii_uppercase();
            if upper == "USAGE" {
                return true;
            }
            if object == view {
                return upper == "SELECT" || upper.starts_with("SELECT (");
            }
            if object == users {
                return upper.strip_prefix("SELECT (").is_some_and(|cols| {
                    cols.trim_end_matches(')')
                        .split(',')
                        .all(|c| USER_COLUMNS.contains(&c.trim().to_ascii_lowercase().as_str()))
                });
            }
            false
        });
        if !ok {
            out.push(shown);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn least_privilege_grants_pass() {
        let g = lines(&[
            "GRANT USAGE ON *.* TO `gw`@`%` IDENTIFIED BY PASSWORD '*ABC'",
            "GRANT SELECT (`id`, `username`, `usertype`, `owner_id`, `uniquehash`) ON `mor`.`users` TO `gw`@`%`",
            "GRANT SELECT ON `mor`.`gateway_conflines` TO `gw`@`%`",
        ]);
        assert!(excess(&g, "mor", "users", "gateway_conflines").is_empty());
    }

    #[test]
    fn more_than_needed_is_named_without_the_password_hash() {
        let g = lines(&[
            "GRANT USAGE ON *.* TO `gw`@`%` IDENTIFIED BY PASSWORD '*ABC'",
            "GRANT SELECT ON `mor`.* TO `gw`@`%`",
            "GRANT SELECT (`id`, `password`) ON `mor`.`users` TO `gw`@`%`",
            "GRANT SELECT, INSERT ON `mor`.`gateway_conflines` TO `gw`@`%`",
            "GRANT SELECT ON `mor`.`conflines` TO `gw`@`%`",
            "GRANT ALL PRIVILEGES ON *.* TO `gw`@`%` IDENTIFIED BY PASSWORD '*ABC'",
        ]);
        let e = excess(&g, "mor", "users", "gateway_conflines");
        assert_eq!(e.len(), 5, "{e:?}");
        assert!(e.iter().all(|l| !l.contains("*ABC")), "{e:?}");
        assert!(e[0].contains("`mor`.*"));
    }
}
