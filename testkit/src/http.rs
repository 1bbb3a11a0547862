//! A loopback HTTP server for tests that stand in for someone else's service (a release
//! download site, the instance metadata service): each request is answered by a closure.

use std::sync::Arc;
use std::thread::JoinHandle;

/// What the handler sees of a request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path with its query string, e.g. `/latest/meta-data/tags/instance`.
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

/// What the handler answers.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn ok(body: impl Into<Vec<u8>>) -> Response {
        Response::status(200).body(body)
    }

    pub fn not_found() -> Response {
        Response::status(404)
    }

    /// An empty response with `status`.
    pub fn status(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// A server on a free 127.0.0.1 port; it stops when dropped.
pub struct TestServer {
    url: String,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Serves every request with `handler`, each on its own thread, so a handler that takes
    /// its time (a stand-in for a slow service) never holds up the others.
    pub fn start<F>(handler: F) -> TestServer
    where
        F: Fn(&Request) -> Response + Send + Sync + 'static,
    {
        let handler = Arc::new(handler);
        let server = Arc::new(
            tiny_http::Server::http("127.0.0.1:0").expect("bind a loopback port for a test server"),
        );
        let url = format!(
            "http://{}",
            server
                .server_addr()
                .to_ip()
                .expect("a TCP test server has an IP address")
        );
        let serving = server.clone();
        let thread = std::thread::spawn(move || {
            for incoming in serving.incoming_requests() {
                let handler = Arc::clone(&handler);
                std::thread::spawn(move || answer(incoming, handler.as_ref()));
            }
        });
        TestServer {
            url,
            server,
            thread: Some(thread),
        }
    }

    /// Serves each `(path, body)` with 200 and anything else with 404.
    pub fn files(files: Vec<(String, Vec<u8>)>) -> TestServer {
        TestServer::start(move |request| {
            files
                .iter()
                .find(|(path, _)| *path == request.path)
                .map(|(_, body)| Response::ok(body.clone()))
                .unwrap_or_else(Response::not_found)
        })
    }

    /// The base URL, `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }
}

fn answer(mut incoming: tiny_http::Request, handler: &dyn Fn(&Request) -> Response) {
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
    let answer = handler(&request);
    let mut response = tiny_http::Response::from_data(answer.body).with_status_code(answer.status);
    for (name, value) in &answer.headers {
        if let Ok(header) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(header);
        }
    }
    // A client that gave up is the test's business, not the server's.
    let _ = incoming.respond(response);
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_served_and_anything_else_is_404() {
        let server = TestServer::files(vec![("/a.txt".into(), b"alpha".to_vec())]);
        let client = reqwest::blocking::Client::new();
        let found = client
            .get(format!("{}/a.txt", server.url()))
            .send()
            .unwrap();
        assert_eq!(found.status().as_u16(), 200);
        assert_eq!(found.bytes().unwrap().as_ref(), b"alpha");
        let missing = client
            .get(format!("{}/b.txt", server.url()))
            .send()
            .unwrap();
        assert_eq!(missing.status().as_u16(), 404);
    }

    #[test]
    fn the_handler_sees_method_path_headers_and_body() {
        let server = TestServer::start(|request| {
            let token = request.header("X-Token").unwrap_or("none").to_string();
            Response::status(201)
                .header("X-Echo", &format!("{} {}", request.method, request.path))
                .body(format!(
                    "{token}:{}",
                    String::from_utf8_lossy(&request.body)
                ))
        });
        let response = reqwest::blocking::Client::new()
            .put(format!("{}/p?q=1", server.url()))
            .header("x-token", "abc")
            .body("payload")
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        assert_eq!(response.headers()["x-echo"], "PUT /p?q=1");
        assert_eq!(response.text().unwrap(), "abc:payload");
    }
}
