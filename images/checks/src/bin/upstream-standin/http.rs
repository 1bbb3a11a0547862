//! The stand-ins' HTTP side: listen where the config says and answer each request with a
//! closure, on its own thread, until the process is stopped.

use std::sync::Arc;

use anyhow::Context;

/// A request as the handlers see it.
pub struct Request {
    pub method: String,
    /// The path without its query.
    pub path: String,
    /// The query's `name=value` pairs, decoded.
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// An answer: status, content type, body.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
        }
    }

    /// Prometheus' text exposition format.
    pub fn metrics(body: String) -> Reply {
        Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: body.into_bytes(),
        }
    }
}

/// `host:port` for a listen address and port (an empty address is every interface).
pub fn listen_address(address: &str, port: u16) -> String {
    match address {
        "" => format!("0.0.0.0:{port}"),
        address if address.contains(':') => format!("[{address}]:{port}"),
        address => format!("{address}:{port}"),
    }
}

/// Serves forever on `address`; returns only when it cannot listen.
pub fn serve<F>(address: &str, handler: F) -> anyhow::Result<()>
where
    F: Fn(&Request) -> Reply + Send + Sync + 'static,
{
    let server = tiny_http::Server::http(address)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot listen on {address}"))?;
    eprintln!("listening on {address}");
    let handler = Arc::new(handler);
    for mut incoming in server.incoming_requests() {
        let handler = Arc::clone(&handler);
        std::thread::spawn(move || {
            let mut body = Vec::new();
            let _ = std::io::Read::read_to_end(incoming.as_reader(), &mut body);
            let url = incoming.url().to_string();
            let parsed = reqwest::Url::parse(&format!("http://stand-in{url}")).ok();
            let request = Request {
                method: incoming.method().as_str().to_ascii_uppercase(),
                path: parsed
                    .as_ref()
                    .map(|u| u.path().to_string())
                    .unwrap_or_else(|| url.clone()),
                query: parsed
                    .map(|u| u.query_pairs().into_owned().collect())
                    .unwrap_or_default(),
                headers: incoming
                    .headers()
                    .iter()
                    .map(|h| (h.field.as_str().to_string(), h.value.to_string()))
                    .collect(),
                body,
            };
            let reply = handler(&request);
            let mut response =
                tiny_http::Response::from_data(reply.body).with_status_code(reply.status);
            if let Ok(header) =
                tiny_http::Header::from_bytes(&b"Content-Type"[..], reply.content_type.as_bytes())
            {
                response.add_header(header);
            }
            let _ = incoming.respond(response);
        });
    }
    Ok(())
}
