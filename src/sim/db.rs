//! The simulator's MOR database: like MOR, it reads the caller and the API
//! settings from the `users` and `conflines` tables for every call (its own
//! queries, independent of the gateway's mirror).

use mysql_async::prelude::Queryable;
use mysql_async::{Opts, Pool, Row};

use super::rules::{CallerBy, Directory, Principal};

/// What one call needs of MOR's database.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// The caller found, with how it was looked up.
    pub caller: Option<(CallerBy, Vec<u8>, Principal)>,
    /// Owner 0's `API_Secret_Key`.
    pub admin_key: Vec<u8>,
    /// Owner 0's `Allow_API`.
    pub allow_api: bool,
    /// Owner 0's `Allow_GET_API`.
    pub allow_get: bool,
    /// Owner 0's hash checking (`API_Disable_hash_checking` not "1").
    pub check_hash: bool,
    /// Owner 0's `Devices_Check_Ballance`.
    pub balance_over_http: bool,
    /// The caller's reseller (itself, or its owner): name and key.
    pub resellers: Vec<(String, Vec<u8>)>,
    /// That reseller's Allow API and Disable hash checking.
    pub switches: Vec<(String, bool, bool)>,
}

impl Directory for Auth {
    fn find(&self, by: CallerBy, value: &[u8]) -> Option<Principal> {
        self.caller
            .as_ref()
            .filter(|(b, v, _)| *b == by && v == value)
            .map(|(_, _, p)| p.clone())
    }
}

/// MOR's database, through a small pool.
pub struct SimDb {
    pool: Pool,
}

fn text(row: &mut Row, i: usize) -> Vec<u8> {
    row.take_opt::<Option<Vec<u8>>, usize>(i)
        .and_then(Result::ok)
        .flatten()
        .unwrap_or_default()
}

fn int(row: &mut Row, i: usize) -> i64 {
    row.take_opt::<Option<i64>, usize>(i)
        .and_then(Result::ok)
        .flatten()
        .unwrap_or(-1)
}

/// The value of the first row of `name` for `owner` ("" when none).
fn setting<'a>(rows: &'a [(Vec<u8>, Vec<u8>, i64)], name: &str, owner: i64) -> &'a [u8] {
    rows.iter()
        .find(|(n, _, o)| n == name.as_bytes() && *o == owner)
        .map_or(&[][..], |(_, v, _)| v.as_slice())
}

impl SimDb {
    /// A pool for `url` (mysql://user[:password]@host:port/database).
    pub fn new(url: &str) -> Result<SimDb, String> {
        let opts = Opts::from_url(url).map_err(|e| e.to_string())?;
        Ok(SimDb {
            pool: Pool::new(opts),
        })
    }

    /// Reads the caller named by `value` (the way `by` says) and the
    /// settings of owner 0 and of the caller's reseller.
    pub async fn auth(&self, by: CallerBy, value: Option<Vec<u8>>) -> Result<Auth, String> {
        let mut conn = self.pool.get_conn().await.map_err(|e| e.to_string())?;
        let mut caller: Option<(i64, Vec<u8>, Vec<u8>, i64)> = None;
        if let Some(v) = &value {
            let column = match by {
                CallerBy::UniquehashId => "uniquehash",
                _ => "username",
            };
            let sql = format!(
                "SELECT id, username, usertype, owner_id FROM users WHERE {column} = ? ORDER BY id LIMIT 1"
            );
            let rows: Vec<Row> = conn
                .exec(sql, (v.clone(),))
                .await
                .map_err(|e| e.to_string())?;
            caller = rows.into_iter().next().map(|mut r| {
                (
                    int(&mut r, 0),
                    text(&mut r, 1),
                    text(&mut r, 2),
                    int(&mut r, 3),
                )
            });
        }
        // The reseller whose settings count: the caller itself, or its owner.
        let mut reseller: Option<(i64, Vec<u8>)> = None;
        if let Some((id, name, t, owner)) = &caller {
            if t == b"reseller" {
                reseller = Some((*id, name.clone()));
            } else if t != b"admin" && t != b"accountant" && *owner > 0 {
                let rows: Vec<Row> = conn
                    .exec(
                        "SELECT username, usertype FROM users WHERE id = ?",
                        (*owner,),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(mut r) = rows.into_iter().next() {
                    let (n, t) = (text(&mut r, 0), text(&mut r, 1));
                    if t == b"reseller" {
                        reseller = Some((*owner, n));
                    }
                }
            }
        }
        let rid = reseller.as_ref().map_or(0, |(id, _)| *id);
        let rows: Vec<Row> = conn
            .exec(
                "SELECT name, value, owner_id FROM conflines WHERE owner_id IN (0, ?) ORDER BY id",
                (rid,),
            )
            .await
            .map_err(|e| e.to_string())?;
        let conf: Vec<(Vec<u8>, Vec<u8>, i64)> = rows
            .into_iter()
            .map(|mut r| (text(&mut r, 0), text(&mut r, 1), int(&mut r, 2)))
            .collect();
        let on = |name: &str, owner: i64| setting(&conf, name, owner) == b"1";
        let mut auth = Auth {
            admin_key: setting(&conf, "API_Secret_Key", 0).to_vec(),
            allow_api: on("Allow_API", 0),
            allow_get: on("Allow_GET_API", 0),
            check_hash: !on("API_Disable_hash_checking", 0),
            balance_over_http: on("Devices_Check_Ballance", 0),
            ..Auth::default()
        };
        if let Some((id, name)) = &reseller {
            let name = String::from_utf8_lossy(name).into_owned();
            auth.resellers
                .push((name.clone(), setting(&conf, "API_Secret_Key", *id).to_vec()));
            auth.switches.push((
                name,
                on("Allow_API", *id),
                on("API_Disable_hash_checking", *id),
            ));
        }
        if let (Some(v), Some((_, name, t, _))) = (value, caller) {
            let owner = reseller
                .filter(|(_, n)| *n != name)
                .map(|(_, n)| String::from_utf8_lossy(&n).into_owned());
            auth.caller = Some((
                by,
                v,
                Principal {
                    username: String::from_utf8_lossy(&name).into_owned(),
                    staff: t == b"admin" || t == b"accountant",
                    owner,
                },
            ));
        }
        Ok(auth)
    }
}
