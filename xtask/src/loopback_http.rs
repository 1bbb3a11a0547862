//! A loopback HTTP server that answers each request with a closure, one thread per request
//! (so a handler that takes its time never holds up the others): what the instance's AWS
//! stand-ins ([`crate::vm::imds`], [`crate::vm::ssm`]) are built on, and `testkit`'s test servers.
//! The guest reaches them through qemu's `guestfwd` forwards, never over a real network.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;

/// What a handler sees of a request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, e.g. `/latest/meta-data/tags/instance`.
    pub path: String,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// What a handler answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply::status(status).body(body)
    }

    /// 200 with `body`.
    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        Reply::new(200, body)
    }

    pub fn not_found() -> Reply {
        Reply::status(404)
    }

    /// An empty reply with `status`.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Reply {
        self.body = body.into();
        self
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A server on a free 127.0.0.1 port; it stops when dropped.
pub struct Server {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start<F>(what: &str, handler: F) -> anyhow::Result<Server>
    where
        F: Fn(&Request) -> Reply + Send + Sync + 'static,
    {
        let server = tiny_http::Server::http("127.0.0.1:0")
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot bind a loopback port for the {what}"))?;
        let addr = server
            .server_addr()
            .to_ip()
            .context("a TCP server has an IP address")?;
        let server = Arc::new(server);
        let handler = Arc::new(handler);
        let serving = Arc::clone(&server);
        let thread = std::thread::spawn(move || {
            for incoming in serving.incoming_requests() {
                let handler = Arc::clone(&handler);
                std::thread::spawn(move || answer(incoming, handler.as_ref()));
            }
        });
        Ok(Server {
            addr,
            server,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn answer(mut incoming: tiny_http::Request, handler: &dyn Fn(&Request) -> Reply) {
    let mut body = Vec::new();
    let _ = std::io::Read::read_to_end(incoming.as_reader(), &mut body);
    let request = Request {
        method: incoming.method().as_str().to_ascii_uppercase(),
        path: incoming.url().to_string(),
        headers: incoming
            .headers()
            .iter()
            .map(|h| (h.field.as_str().to_string(), h.value.to_string()))
            .collect(),
        body,
    };
    let reply = handler(&request);
    let mut response = tiny_http::Response::from_data(reply.body).with_status_code(reply.status);
    for (name, value) in &reply.headers {
        if let Ok(header) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(header);
        }
    }
    // A client that gave up on a request is its own business.
    let _ = incoming.respond(response);
}

impl Drop for Server {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
