//! `/metrics` (Prometheus text) and `/health` (200 while the consumer polls, 503 when it has not for
//! 30 s) over plain HTTP. A thread and a blocking listener: the endpoint serves a scrape every few
//! seconds, not traffic.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::metrics::Metrics;

/// Binds `address` now (so a taken port fails the start-up) and serves until `stop` is set.
pub fn serve(
    address: &str,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let listener = TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    tracing::info!(
        address,
        "Metrics on http://{address}/metrics, health on /health."
    );
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 2048];
                        let n = conn.read(&mut buf).unwrap_or(0);
                        let request = String::from_utf8_lossy(&buf[..n]);
                        let path = request.split_whitespace().nth(1).unwrap_or("/");
                        let (status, body, kind) = match path {
                            "/metrics" => ("200 OK", metrics.render(), "text/plain; version=0.0.4"),
                            // Degraded is still 200: restarting does not bring skipped records back.
                            "/health" if metrics.healthy() => match metrics.degraded() {
                                Some(why) => ("200 OK", format!("degraded: {why}\n"), "text/plain"),
                                None => ("200 OK", "ok\n".into(), "text/plain"),
                            },
                            "/health" => (
                                "503 Service Unavailable",
                                "consumer not polling\n".into(),
                                "text/plain",
                            ),
                            _ => ("404 Not Found", "try /metrics or /health\n".into(), "text/plain"),
                        };
                        let _ = write!(
                            conn,
                            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Metrics connection failed.");
                    }
                }
            }
        })
}
