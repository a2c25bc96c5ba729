//! The metrics listener: `/metrics`, `/healthz` and `/readyz`, and the
//! lockout admin interface ([`lockout_admin`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{header, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::config::WithoutSnapshot;
use crate::edge::lockout_admin;
use crate::edge::state::Shared;

/// True when something accepts a TCP connection on every gateway listener.
async fn listeners_serving(listen: &[SocketAddr]) -> bool {
    for a in listen {
        let mut target = *a;
        if target.ip().is_unspecified() {
            target.set_ip(match a {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let connected = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(target),
        )
        .await;
        if !matches!(connected, Ok(Ok(_))) {
            return false;
        }
    }
    true
}

/// Serves `/metrics`, `/healthz` and `/readyz`.
pub struct MetricsApp {
    pub(super) shared: Arc<Shared>,
}

fn text_response(status: u16, ctype: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, ctype)
        .header(header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        if let Some(r) = lockout_admin::answer(
            &self.shared,
            req.method.as_str(),
            req.uri.path(),
            req.uri.query(),
            peer,
        )
        .await
        {
            return text_response(r.status, "application/json", r.body.into_bytes());
        }
        match session.req_header().uri.path() {
            "/metrics" => {
                let m = &self.shared.metrics;
                let st = self.shared.state.load_full();
                let shared = match &st.shared_limits {
                    Some(sh) => sh.active_lockouts().await,
                    None => None,
                };
                let n = shared.unwrap_or_else(|| st.limits.active_lockouts());
                m.lockouts_active.set(i64::try_from(n).unwrap_or(i64::MAX));
                if st.settings.mor_db.is_some() {
                    m.directory_age.set(self.shared.mirror.age());
                }
                text_response(200, "text/plain; version=0.0.4; charset=utf-8", m.render())
            }
            "/healthz" => text_response(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let st = self.shared.state.load_full();
                let no_snapshot = st
                    .settings
                    .mor_db
                    .as_ref()
                    .filter(|_| !self.shared.mirror.ever_loaded())
                    .map(|d| d.without_snapshot);
                if self.shared.draining() {
                    text_response(
                        503,
                        "text/plain",
                        b"draining (SIGUSR2): calls are still served\n".to_vec(),
                    )
                } else if !listeners_serving(&st.settings.listen).await {
                    text_response(503, "text/plain", b"a listener is not serving\n".to_vec())
                } else if no_snapshot == Some(WithoutSnapshot::Refuse) {
                    text_response(
                        503,
                        "text/plain",
                        b"MOR's directory was never read: API calls are refused until it is\n"
                            .to_vec(),
                    )
                } else if no_snapshot.is_some() && st.upstreams.any_up() {
                    text_response(
                        200,
                        "text/plain",
                        b"ready (MOR's directory was never read: deciding with the static config)\n"
                            .to_vec(),
                    )
                } else if st.upstreams.any_up() {
                    text_response(200, "text/plain", b"ready\n".to_vec())
                } else {
                    text_response(503, "text/plain", b"no upstream is up\n".to_vec())
                }
            }
            _ => text_response(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
