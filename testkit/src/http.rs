//! A loopback HTTP server for tests that stand in for someone else's service (a release
//! download site, the instance metadata service): each request is answered by a closure.
//! It is `xtask::loopback_http`'s server (the boot tests' AWS stand-ins), with a test's panics.

pub use xtask::loopback_http::{Reply as Response, Request};

/// A server on a free 127.0.0.1 port; it stops when dropped.
pub struct TestServer {
    url: String,
    _server: xtask::loopback_http::Server,
}

impl TestServer {
    /// Serves every request with `handler`, each on its own thread, so a handler that takes
    /// its time (a stand-in for a slow service) never holds up the others.
    pub fn start<F>(handler: F) -> TestServer
    where
        F: Fn(&Request) -> Response + Send + Sync + 'static,
    {
        let server = xtask::loopback_http::Server::start("test server", handler)
            .unwrap_or_else(|e| panic!("{e:#}"));
        TestServer {
            url: server.url(),
            _server: server,
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
                .header("X-Echo", format!("{} {}", request.method, request.path))
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
