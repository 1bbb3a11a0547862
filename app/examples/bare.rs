//! The benchmark's baseline: the same `/api/data` handler served by plain warp, with no
//! metrics, no logging and no request ids. `cargo xtask bench app` compares the two.
//!
//! Usage: `bare --listen 127.0.0.1:5001`

use std::net::SocketAddr;

use clap::Parser;
use warp::Filter;

#[derive(Parser)]
struct Args {
    /// Address and port to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:5001")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let route = warp::path!("api" / "data")
        .and(warp::get())
        .map(demo_app::handlers::sample_record);
    eprintln!("bare warp listening on http://{}", listener.local_addr()?);
    warp::serve(route).incoming(listener).run().await;
    Ok(())
}
