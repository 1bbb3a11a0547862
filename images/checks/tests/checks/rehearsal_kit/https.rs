//! The rehearsal's stand-in for the upstream release sites: a loopback HTTPS server with a
//! throwaway certificate. The provisioning scripts download only over HTTPS (`curl
//! --proto =https`), so the rehearsal serves HTTPS too rather than loosen the scripts; the
//! rehearsal root trusts the certificate the way any extra CA is trusted on Debian/Ubuntu
//! (`/usr/local/share/ca-certificates`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A self-signed certificate for 127.0.0.1, made by the `openssl` CLI.
pub struct Certificate {
    /// PEM, for the rehearsal root's trust store.
    pub pem: Vec<u8>,
    der: Vec<u8>,
    key_pkcs8_der: Vec<u8>,
}

impl Certificate {
    pub fn for_loopback(dir: &Path) -> Certificate {
        let openssl = testkit::require_tool("openssl");
        let run = |args: &[&str]| {
            let output = Command::new(&openssl)
                .current_dir(dir)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
            assert!(
                output.status.success(),
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=obstack provisioning rehearsal",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ]);
        run(&[
            "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
        ]);
        run(&[
            "pkcs8", "-topk8", "-nocrypt", "-in", "key.pem", "-outform", "DER", "-out", "key.der",
        ]);
        let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
        Certificate {
            pem: read("cert.pem"),
            der: read("cert.der"),
            key_pkcs8_der: read("key.der"),
        }
    }
}

/// Serves fixed files by path (`GET` only; anything else is 404) on 127.0.0.1 until dropped.
pub struct Site {
    url: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Site {
    pub fn start(certificate: &Certificate, files: BTreeMap<String, Vec<u8>>) -> Site {
        // ring, not the process default: the workspace enables two rustls providers.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("rustls protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(certificate.der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certificate.key_pkcs8_der.clone())),
            )
            .expect("the rehearsal certificate and key");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let files = Arc::new(files);
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let config = Arc::clone(&config);
                let files = Arc::clone(&files);
                std::thread::spawn(move || serve(stream, config, &files));
            }
        });
        Site {
            url: format!("https://{addr}"),
            stop,
            thread: Some(thread),
        }
    }

    /// `https://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// One request per connection: enough for curl, which the scripts run once per download.
fn serve(stream: TcpStream, config: Arc<rustls::ServerConfig>, files: &BTreeMap<String, Vec<u8>>) {
    let Ok(connection) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(connection, stream);
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut request = head.lines().next().unwrap_or_default().split(' ');
    let (method, path) = (request.next().unwrap_or(""), request.next().unwrap_or(""));
    let (status, body): (&str, &[u8]) = match files.get(path) {
        Some(body) if method == "GET" => ("200 OK", body),
        _ => ("404 Not Found", b"not found\n"),
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = tls.write_all(header.as_bytes());
    let _ = tls.write_all(body);
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        if let Some(addr) = self.url.strip_prefix("https://") {
            let _ = TcpStream::connect(addr);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
