//! `/healthz` and `/readyz` on a small HTTP port: liveness while the process serves, readiness
//! once the inventory is synced. Requests are read with a timeout and a bounded buffer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `/healthz`: 200 while the process serves. `/readyz`: 200 once the inventory is synced.
pub async fn serve_health(listener: tokio::net::TcpListener, ready: Arc<AtomicBool>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let ready = ready.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
            let Ok(Ok(n)) = read else { return };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or_default();
            let (status, body) = match path {
                "/healthz" | "/livez" => ("200 OK", "ok\n"),
                "/readyz" if ready.load(Ordering::Relaxed) => ("200 OK", "ready\n"),
                "/readyz" => ("503 Service Unavailable", "inventory not synced yet\n"),
                _ => ("404 Not Found", "not found\n"),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
