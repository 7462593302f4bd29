//! One webhook call: a POST with the Standard Webhooks headers, no redirects followed, a
//! timeout, and a resolver that refuses internal addresses (checked on the addresses actually
//! connected to, so DNS cannot point a public name at the database's network afterwards).

use std::io::{self, Read};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::address;

/// At most this much of a response body is kept in the attempt log.
pub const MAX_BODY: usize = 20 * 1024;

/// What one attempt brought back.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// the HTTP status; 0 for network errors and timeouts
    pub status: u16,
    pub duration_ms: f64,
    pub body: Option<String>,
    pub error: Option<String>,
    pub retry_after: Option<String>,
}

impl Reply {
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// An HTTP agent for one round of deliveries.
pub fn agent(timeout: Duration, allowed_hosts: String) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(timeout)
        .redirects(0)
        .resolver(move |netloc: &str| -> io::Result<Vec<SocketAddr>> {
            let addrs: Vec<SocketAddr> = netloc.to_socket_addrs()?.collect();
            let host = netloc.rsplit_once(':').map_or(netloc, |(h, _)| h);
            if address::allowed(host, &allowed_hosts) {
                return Ok(addrs);
            }
            let public: Vec<SocketAddr> = addrs.into_iter().filter(|a| !address::is_internal(a.ip())).collect();
            if public.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{host} resolves only to private, loopback or link-local addresses; list it in eventstore.webhook_allowed_hosts to allow it"),
                ));
            }
            Ok(public)
        })
        .build()
}

/// Sends one message.
pub fn post(agent: &ureq::Agent, url: &str, msg_id: &str, timestamp: i64, signature: &str, body: &str) -> Reply {
    let started = Instant::now();
    let result = agent
        .post(url)
        .set("content-type", "application/json")
        .set("webhook-id", msg_id)
        .set("webhook-timestamp", &timestamp.to_string())
        .set("webhook-signature", signature)
        .send_string(body);
    let mut reply = Reply::default();
    match result {
        Ok(response) | Err(ureq::Error::Status(_, response)) => {
            reply.status = response.status();
            reply.retry_after = response.header("retry-after").map(str::to_owned);
            let mut buf = Vec::new();
            let read = response.into_reader().take(MAX_BODY as u64).read_to_end(&mut buf);
            reply.body = Some(String::from_utf8_lossy(&buf).into_owned());
            if let Err(e) = read {
                reply.error = Some(format!("reading the response: {e}"));
            }
        }
        Err(ureq::Error::Transport(transport)) => {
            reply.status = 0;
            reply.error = Some(transport.to_string());
        }
    }
    reply.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    reply
}
