//! A minimal HTTP/1.1 keep-alive load generator, used only when `wrk` is not installed.
//! One thread, `connections` connections, each sending the next request as soon as the
//! previous response has been read (the same closed loop wrk runs).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Sample;

pub fn run(
    addr: SocketAddr,
    path: &str,
    connections: u32,
    duration: Duration,
) -> anyhow::Result<Sample> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the load generator's runtime")?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let deadline = Instant::now() + duration;
    let latencies = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..connections {
            let request = request.clone();
            tasks.spawn(async move { connection(addr, request.into_bytes(), deadline).await });
        }
        let mut all = Vec::new();
        while let Some(result) = tasks.join_next().await {
            all.extend(result.context("a load connection panicked")??);
        }
        anyhow::Ok(all)
    })?;
    summarise(latencies, duration)
}

/// Latencies in microseconds, one per completed request.
async fn connection(
    addr: SocketAddr,
    request: Vec<u8>,
    deadline: Instant,
) -> anyhow::Result<Vec<u32>> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let mut latencies = Vec::with_capacity(64 * 1024);
    let mut buffer = vec![0u8; 16 * 1024];
    while Instant::now() < deadline {
        let started = Instant::now();
        stream.write_all(&request).await?;
        read_response(&mut stream, &mut buffer).await?;
        latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
    }
    Ok(latencies)
}

/// Reads one response with a `Content-Length` body (all the benchmarked route sends).
async fn read_response(stream: &mut TcpStream, buffer: &mut [u8]) -> anyhow::Result<()> {
    let mut filled = 0;
    loop {
        let read = stream.read(&mut buffer[filled..]).await?;
        anyhow::ensure!(read > 0, "the server closed the connection");
        filled += read;
        let head = &buffer[..filled];
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let body_len =
                content_length(&head[..end]).context("response without Content-Length")?;
            let total = end + 4 + body_len;
            anyhow::ensure!(
                total <= buffer.len(),
                "response larger than {} bytes",
                buffer.len()
            );
            while filled < total {
                let read = stream.read(&mut buffer[filled..total]).await?;
                anyhow::ensure!(read > 0, "the server closed the connection");
                filled += read;
            }
            return Ok(());
        }
        anyhow::ensure!(filled < buffer.len(), "response headers too large");
    }
}

fn content_length(head: &[u8]) -> Option<usize> {
    std::str::from_utf8(head).ok()?.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

fn summarise(mut latencies: Vec<u32>, duration: Duration) -> anyhow::Result<Sample> {
    anyhow::ensure!(!latencies.is_empty(), "no request completed");
    latencies.sort_unstable();
    let percentile = |p: f64| {
        let index = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index] as f64 / 1000.0
    };
    Ok(Sample {
        requests_per_sec: latencies.len() as f64 / duration.as_secs_f64(),
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_sorted_latencies() {
        let latencies: Vec<u32> = (1..=100).rev().map(|ms| ms * 1000).collect();
        let sample = summarise(latencies, Duration::from_secs(10)).unwrap();
        assert_eq!(sample.requests_per_sec, 10.0);
        assert_eq!(sample.p50_ms, 50.0);
        assert_eq!(sample.p99_ms, 99.0);
    }

    #[test]
    fn content_length_is_case_insensitive() {
        assert_eq!(
            content_length(b"HTTP/1.1 200 OK\r\ncontent-length: 12"),
            Some(12)
        );
        assert_eq!(content_length(b"HTTP/1.1 200 OK\r\nx: y"), None);
    }
}
