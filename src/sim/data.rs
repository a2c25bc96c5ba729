//! The simulator's in-memory MOR dataset and what each action answers once
//! the call has passed [`super::rules::Rules::decide`].
//!
//! Users: admin (0), john (2), anna (3), res1 (4, a reseller when the
//! settings give it a key), ruser (5, res1's user), acc1 (6, accountant),
//! client123 (123). Passwords are username + "1" ("admin1"), uniquehashes
//! username + "uniq". Every user has one SIP device (see [`Data::seed`]).

use super::rails::Params;
use super::rules::{CallerBy, Directory, Kind, Principal, ACCESS_DENIED};
use super::xml::el;

/// A MOR user.
#[derive(Debug, Clone)]
pub struct User {
    /// Id.
    pub id: u64,
    /// Login name.
    pub username: String,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Balance.
    pub balance: f64,
    /// Blocked flag.
    pub blocked: bool,
    /// The owner's username; `None` for the admin's users (and the admin).
    pub owner: Option<String>,
    /// An accountant (signs with the admin key).
    pub accountant: bool,
    /// GUI/API password.
    pub password: String,
    /// The user's uniquehash (balance over HTTP, registration under it).
    pub uniquehash: String,
}

/// A SIP device.
#[derive(Debug, Clone)]
pub struct Device {
    /// Id.
    pub id: u64,
    /// Owner user id.
    pub user_id: u64,
    /// SIP username.
    pub username: String,
    /// SIP password ("secret").
    pub secret: String,
}

#[derive(Debug, Clone)]
struct Cli {
    id: u64,
    device_id: u64,
    user_id: u64,
    number: String,
    description: String,
}

#[derive(Debug, Clone)]
struct Call {
    id: u64,
    user_id: u64,
    device_id: u64,
    provider_id: u64,
    did: String,
    calldate: u64,
    src: String,
    dst: String,
    duration: u64,
    disposition: &'static str,
    price: f64,
}

/// The dataset.
#[derive(Debug, Clone)]
pub struct Data {
    users: Vec<User>,
    devices: Vec<Device>,
    clis: Vec<Cli>,
    calls: Vec<Call>,
}

/// What an action answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An XML document (the part after the prolog).
    Doc(String),
    /// An error text, shown in the action's envelope.
    Error(String),
    /// A bare text answer (balance over HTTP).
    Text(String),
}

fn error(msg: &str) -> Answer {
    Answer::Error(msg.to_string())
}

/// `<page><status>ok</status><action>NAME</action></page>`.
pub fn ok_doc(action: &str) -> String {
    let mut x = String::from("<page><status>ok</status>");
    el(&mut x, "action", action);
    x.push_str("</page>");
    x
}

const LOGIN_FAILED: &str = "<action><name>login</name><status>failed</status></action>";

/// Midnight (UTC) of the day of `now`.
pub fn start_of_day(now: u64) -> u64 {
    now - now % 86_400
}

fn user(id: u64, username: &str, first: &str, last: &str, balance: f64) -> User {
    User {
        id,
        username: username.into(),
        first_name: first.into(),
        last_name: last.into(),
        balance,
        blocked: false,
        owner: None,
        accountant: false,
        password: format!("{username}1"),
        uniquehash: format!("{username}uniq"),
    }
}

impl Data {
    /// The seed dataset; calls are placed relative to `now` (Unix seconds).
    pub fn seed(now: u64) -> Data {
        let today = start_of_day(now);
        let mut ruser = user(5, "ruser", "Rita", "User", 7.25);
        ruser.owner = Some("res1".into());
        let mut acc1 = user(6, "acc1", "Ada", "Counter", 0.0);
        acc1.accountant = true;
        let users = vec![
            user(0, "admin", "System", "Admin", 0.0),
            user(2, "john", "John", "Smith", 12.5),
            user(3, "anna", "Anna", "Berg", 40.0),
            user(4, "res1", "Reseller", "One", 100.0),
            ruser,
            acc1,
            user(123, "client123", "Carl", "Client", 55.0),
            // Plain users of the admin for the rate-limit tests.
            user(20, "alice", "Alice", "Able", 1.0),
            user(21, "bob", "Bob", "Baker", 2.0),
            user(22, "carol", "Carol", "Cole", 3.0),
            user(23, "dave", "Dave", "Dunn", 4.0),
            user(24, "erin", "Erin", "Eide", 5.0),
            user(25, "mallory", "Mal", "Lory", 6.0),
        ];
        // One device per user; anna's is 6 and client123's 7 (the CLIs),
        // john's 8 (his calls).
        let devices = [
            (1, 0),
            (8, 2),
            (6, 3),
            (9, 4),
            (10, 5),
            (11, 6),
            (7, 123),
            (12, 20),
            (13, 21),
            (14, 22),
            (15, 23),
            (16, 24),
            (17, 25),
        ]
        .iter()
        .filter_map(|&(id, uid)| {
            let u = users.iter().find(|u| u.id == uid)?;
            Some(Device {
                id,
                user_id: uid,
                username: format!("{}_sip", u.username),
                secret: format!("{}_secret", u.username),
            })
        })
        .collect();
        let clis = vec![
            Cli {
                id: 1,
                device_id: 6,
                user_id: 3,
                number: "37060000001".into(),
                description: "office".into(),
            },
            Cli {
                id: 2,
                device_id: 6,
                user_id: 3,
                number: "37060000002".into(),
                description: "mobile".into(),
            },
            Cli {
                id: 3,
                device_id: 7,
                user_id: 123,
                number: "4420000123".into(),
                description: "main".into(),
            },
        ];
        let dispositions = ["ANSWERED", "ANSWERED", "NO ANSWER", "BUSY", "FAILED"];
        let calls = (0..10u64)
            .map(|i| {
                // Half of the calls fall today (default period), half a week ago.
                let base = if i % 2 == 0 {
                    today + 3600
                } else {
                    today.saturating_sub(7 * 86_400)
                };
                let disposition = dispositions[(i % 5) as usize];
                let answered = disposition == "ANSWERED";
                Call {
                    id: 100 + i,
                    user_id: if i < 6 { 123 } else { 2 },
                    device_id: if i < 6 { 7 } else { 8 },
                    provider_id: 1 + i % 2,
                    did: if i % 3 == 0 {
                        "37052000001".into()
                    } else {
                        String::new()
                    },
                    calldate: base + i * 60,
                    src: "4420000123".into(),
                    dst: format!("3706{:07}", 1000 + i),
                    duration: if answered { 30 + i * 7 } else { 0 },
                    disposition,
                    price: if answered { 0.05 * (i + 1) as f64 } else { 0.0 },
                }
            })
            .collect();
        Data {
            users,
            devices,
            clis,
            calls,
        }
    }

    /// The users.
    #[cfg(test)]
    pub fn users(&self) -> &[User] {
        &self.users
    }

    /// The devices.
    #[cfg(test)]
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    fn user_by(&self, id: Option<&str>, username: Option<&str>) -> Option<usize> {
        if id.is_none() && username.is_none() {
            return None;
        }
        self.users.iter().position(|u| {
            id.is_none_or(|i| u.id.to_string() == i) && username.is_none_or(|n| u.username == n)
        })
    }

    fn named(&self, username: Option<&str>) -> Option<&User> {
        let n = username?;
        self.users.iter().find(|u| u.username == n)
    }

    /// What `action` answers (it has passed the authentication stage).
    pub fn answer(&mut self, action: &str, kind: Kind, p: &Params, now: u64) -> Answer {
        match kind {
            Kind::Login => self.login(action, p),
            Kind::BalanceOverHttp => self.balance_over_http(action, p),
            Kind::ByUsernameOnly => self.by_username_only(action, p),
            _ => match action {
                "user_details_get" => self.user_details_get(p),
                "user_details_update" => self.user_details_update(p),
                "user_calls_get" => self.user_calls_get(p, now),
                "device_clis_get" => self.device_clis_get(p),
                "system_version_get" => Answer::Doc(
                    "<page><version>MOR simulator (mor-gateway)</version></page>".into(),
                ),
                _ => Answer::Doc(ok_doc(action)),
            },
        }
    }

    fn login(&self, action: &str, p: &Params) -> Answer {
        let u = self
            .named(p.text("u").as_deref())
            .filter(|u| p.text("p").is_some_and(|pw| pw == u.password));
        let Some(u) = u else {
            return Answer::Doc(LOGIN_FAILED.into());
        };
        let mut x = String::new();
        if action == "morphone_details_get" {
            x.push_str("<page><details>");
            el(&mut x, "user_id", &u.id.to_string());
            el(&mut x, "username", &u.username);
            el(&mut x, "first_name", &u.first_name);
            el(&mut x, "last_name", &u.last_name);
            el(&mut x, "balance", &format!("{:.4}", u.balance));
            x.push_str("</details></page>");
        } else {
            x.push_str("<action><name>login</name><status>ok</status>");
            el(&mut x, "user_id", &u.id.to_string());
            x.push_str("</action>");
        }
        Answer::Doc(x)
    }

    fn balance_over_http(&self, action: &str, p: &Params) -> Answer {
        let id = p.text("id");
        let id = id.as_deref();
        let device_user = |f: &dyn Fn(&Device) -> bool| {
            self.devices
                .iter()
                .find(|d| id.is_some() && f(d))
                .and_then(|d| self.users.iter().find(|u| u.id == d.user_id))
        };
        let found = match action {
            "user_balance_get_by_psw" => device_user(&|d| Some(d.secret.as_str()) == id),
            "user_balance_get_by_username" => device_user(&|d| Some(d.username.as_str()) == id),
            _ => self
                .users
                .iter()
                .find(|u| id.is_some() && Some(u.uniquehash.as_str()) == id),
        };
        match found {
            Some(u) => Answer::Text(format!("{:.4}", u.balance)),
            None => error("User was not found"),
        }
    }

    fn by_username_only(&self, action: &str, p: &Params) -> Answer {
        let Some(u) = self.named(p.text("u").as_deref()) else {
            return error(ACCESS_DENIED);
        };
        if action != "user_devices" {
            return Answer::Doc(ok_doc(action));
        }
        let mut x = String::from("<page><devices>");
        for d in self.devices.iter().filter(|d| d.user_id == u.id) {
            x.push_str("<device>");
            el(&mut x, "id", &d.id.to_string());
            el(&mut x, "username", &d.username);
            el(&mut x, "secret", &d.secret);
            x.push_str("</device>");
        }
        x.push_str("</devices></page>");
        Answer::Doc(x)
    }

    fn user_details_get(&self, p: &Params) -> Answer {
        let Some(i) = self.user_by(p.text("user_id").as_deref(), p.text("username").as_deref())
        else {
            return error("User was not found");
        };
        let u = &self.users[i];
        let mut x = String::from("<page><details>");
        el(&mut x, "id", &u.id.to_string());
        el(&mut x, "username", &u.username);
        el(&mut x, "first_name", &u.first_name);
        el(&mut x, "last_name", &u.last_name);
        el(&mut x, "balance", &format!("{:.4}", u.balance));
        el(&mut x, "blocked", if u.blocked { "1" } else { "0" });
        x.push_str("</details></page>");
        Answer::Doc(x)
    }

    fn user_details_update(&mut self, p: &Params) -> Answer {
        let Some(i) = self.user_by(p.text("user_id").as_deref(), None) else {
            return error("User was not found");
        };
        let u = &mut self.users[i];
        if let Some(b) = p.text("u15") {
            u.blocked = b == "1";
        }
        if let Some(f) = p.text("u23") {
            u.first_name = f;
        }
        if let Some(l) = p.text("u17") {
            u.last_name = l;
        }
        if let Some(n) = p.text("u9") {
            u.username = n;
        }
        Answer::Doc("<status><success>User details updated</success></status>".into())
    }

    fn user_calls_get(&self, p: &Params, now: u64) -> Answer {
        let v = |n: &str| p.text(n);
        let Some(s_user) = v("s_user") else {
            return error("User was not found");
        };
        let all = s_user == "all" || s_user.is_empty();
        if !all && self.user_by(Some(&s_user), None).is_none() {
            return error("User was not found");
        }
        // MOR's defaults: the current day, 00:00:00 to 23:59:59.
        let num = |n: &str, dflt: u64| v(n).and_then(|s| s.parse::<u64>().ok()).unwrap_or(dflt);
        let start = num("period_start", start_of_day(now));
        let end = num("period_end", start_of_day(now) + 86_399);
        let call_type = v("s_call_type")
            .unwrap_or_else(|| "all".into())
            .to_ascii_lowercase();
        let (device, provider, did) = (v("s_device"), v("s_provider"), v("s_did"));
        let destination = v("s_destination");
        let only_did = v("only_did").as_deref() == Some("1");
        let mut calls: Vec<&Call> = self
            .calls
            .iter()
            .filter(|c| all || c.user_id.to_string() == s_user)
            .filter(|c| c.calldate >= start && c.calldate <= end)
            .filter(|c| match call_type.as_str() {
                "answered" => c.disposition == "ANSWERED",
                "no_answer" => c.disposition == "NO ANSWER",
                "busy" => c.disposition == "BUSY",
                "failed" => c.disposition == "FAILED",
                "missed" => c.disposition != "ANSWERED",
                _ => true,
            })
            .filter(|c| {
                device
                    .as_ref()
                    .is_none_or(|x| x == "all" || c.device_id.to_string() == *x)
            })
            .filter(|c| {
                provider
                    .as_ref()
                    .is_none_or(|x| x == "all" || c.provider_id.to_string() == *x)
            })
            .filter(|c| did.as_ref().is_none_or(|x| x == "all" || c.did == *x))
            .filter(|c| {
                destination
                    .as_ref()
                    .is_none_or(|x| c.dst.starts_with(x.as_str()))
            })
            .filter(|c| !only_did || !c.did.is_empty())
            .collect();
        match v("order_by").as_deref().unwrap_or("time") {
            "duration" => calls.sort_by_key(|c| c.duration),
            "price" => calls.sort_by(|a, b| a.price.total_cmp(&b.price)),
            _ => calls.sort_by_key(|c| c.calldate),
        }
        if v("order_desc").as_deref() == Some("1") {
            calls.reverse();
        }
        let mut x = String::from("<page><calls_stat>");
        el(&mut x, "period_start", &start.to_string());
        el(&mut x, "period_end", &end.to_string());
        el(&mut x, "total_calls", &calls.len().to_string());
        x.push_str("<calls>");
        for c in calls {
            x.push_str("<call>");
            el(&mut x, "id", &c.id.to_string());
            el(&mut x, "calldate", &c.calldate.to_string());
            el(&mut x, "src", &c.src);
            el(&mut x, "dst", &c.dst);
            el(&mut x, "duration", &c.duration.to_string());
            el(&mut x, "disposition", c.disposition);
            el(&mut x, "device_id", &c.device_id.to_string());
            el(&mut x, "price", &format!("{:.4}", c.price));
            x.push_str("</call>");
        }
        x.push_str("</calls></calls_stat></page>");
        Answer::Doc(x)
    }

    fn device_clis_get(&self, p: &Params) -> Answer {
        let devices_id = p.text("devices_id");
        let users_id = p.text("users_id");
        if let Some(u) = &users_id {
            if self.user_by(Some(u), None).is_none() {
                return error("User was not found");
            }
        }
        let clis: Vec<&Cli> = self
            .clis
            .iter()
            .filter(|c| {
                devices_id
                    .as_ref()
                    .is_none_or(|x| c.device_id.to_string() == *x)
            })
            .filter(|c| {
                users_id
                    .as_ref()
                    .is_none_or(|x| c.user_id.to_string() == *x)
            })
            .collect();
        if clis.is_empty() {
            return error(if devices_id.is_some() {
                "Device was not found"
            } else {
                "CLIs were not found"
            });
        }
        let mut x = String::from("<page><clis>");
        for c in clis {
            x.push_str("<cli>");
            el(&mut x, "id", &c.id.to_string());
            el(&mut x, "device_id", &c.device_id.to_string());
            el(&mut x, "user_id", &c.user_id.to_string());
            el(&mut x, "cli", &c.number);
            el(&mut x, "description", &c.description);
            x.push_str("</cli>");
        }
        x.push_str("</clis></page>");
        Answer::Doc(x)
    }
}

impl Directory for Data {
    fn find(&self, by: CallerBy, value: &[u8]) -> Option<Principal> {
        let u = self.users.iter().find(|u| match by {
            CallerBy::U | CallerBy::Username => u.username.as_bytes() == value,
            CallerBy::UniquehashId => u.uniquehash.as_bytes() == value,
        })?;
        Some(Principal {
            username: u.username.clone(),
            staff: u.id == 0 || u.accountant,
            owner: u.owner.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(q: &str) -> Params {
        Params::from_form(q.as_bytes()).unwrap()
    }

    #[test]
    fn seed_users_and_devices() {
        let d = Data::seed(1_700_000_000);
        let names: Vec<&str> = d.users().iter().map(|u| u.username.as_str()).collect();
        assert_eq!(
            names,
            [
                "admin",
                "john",
                "anna",
                "res1",
                "ruser",
                "acc1",
                "client123",
                "alice",
                "bob",
                "carol",
                "dave",
                "erin",
                "mallory"
            ]
        );
        let admin = &d.users()[0];
        assert_eq!(
            (admin.password.as_str(), admin.uniquehash.as_str()),
            ("admin1", "adminuniq")
        );
        assert_eq!(d.devices().len(), d.users().len());
        let p = d.find(CallerBy::UniquehashId, b"ruseruniq").unwrap();
        assert_eq!(p.owner.as_deref(), Some("res1"));
        assert!(d.find(CallerBy::U, b"acc1").unwrap().staff);
        assert!(!d.find(CallerBy::U, b"john").unwrap().staff);
        assert!(d.find(CallerBy::U, b"ghost").is_none());
    }

    #[test]
    fn login_answers() {
        let mut d = Data::seed(0);
        let ok = d.answer("user_login", Kind::Login, &form("u=john&p=john1"), 0);
        assert_eq!(
            ok,
            Answer::Doc(
                "<action><name>login</name><status>ok</status><user_id>2</user_id></action>".into()
            )
        );
        for q in ["u=john&p=john", "u=john", "p=john1", "u=ghost&p=ghost1"] {
            let a = d.answer("user_login", Kind::Login, &form(q), 0);
            assert_eq!(a, Answer::Doc(LOGIN_FAILED.into()), "{q}");
        }
        let a = d.answer(
            "morphone_details_get",
            Kind::Login,
            &form("u=anna&p=anna1"),
            0,
        );
        assert!(matches!(a, Answer::Doc(x) if x.contains("<user_id>3</user_id>")));
    }

    #[test]
    fn balance_over_http_lookups() {
        let mut d = Data::seed(0);
        let k = Kind::BalanceOverHttp;
        let a = d.answer("user_simple_balance_get", k, &form("id=client123uniq"), 0);
        assert_eq!(a, Answer::Text("55.0000".into()));
        let a = d.answer("user_balance_get_by_psw", k, &form("id=anna_secret"), 0);
        assert_eq!(a, Answer::Text("40.0000".into()));
        let a = d.answer("user_balance_get_by_username", k, &form("id=john_sip"), 0);
        assert_eq!(a, Answer::Text("12.5000".into()));
        for (action, q) in [
            ("user_simple_balance_get", "id=nope"),
            ("user_simple_balance_get", ""),
            ("user_balance_get_by_psw", "id=john_sip"),
        ] {
            let a = d.answer(action, k, &form(q), 0);
            assert_eq!(a, error("User was not found"), "{action} {q}");
        }
    }

    #[test]
    fn by_username_only_answers() {
        let mut d = Data::seed(0);
        let k = Kind::ByUsernameOnly;
        let a = d.answer("user_devices", k, &form("u=anna"), 0);
        let Answer::Doc(x) = a else { panic!() };
        assert!(
            x.contains("<username>anna_sip</username><secret>anna_secret</secret>"),
            "{x}"
        );
        assert_eq!(
            d.answer("main_page", k, &form("u=anna"), 0),
            Answer::Doc(ok_doc("main_page"))
        );
        assert_eq!(
            d.answer("user_devices", k, &form("u=ghost"), 0),
            error(ACCESS_DENIED)
        );
        assert_eq!(
            d.answer("user_rates", k, &form(""), 0),
            error(ACCESS_DENIED)
        );
    }

    #[test]
    fn ok_doc_shape() {
        assert_eq!(
            ok_doc("get_otp"),
            "<page><status>ok</status><action>get_otp</action></page>"
        );
    }
}
