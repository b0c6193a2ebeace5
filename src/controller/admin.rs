//! admin: `/metrics`, `/healthz` and `/readyz` over plain HTTP/1.1 on `--metrics-addr`.
//!
//! Three fixed GET routes, one response per connection: a few lines on tokio instead of the
//! hyper server stack (the client stack kube uses is built without it; enabling it would
//! rebuild kube, reqwest and object_store for this).

use super::State;
use super::error::{Error, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Binds `addr` (failing at once if it cannot), then serves until the process ends.
pub async fn serve(addr: SocketAddr, state: Arc<State>) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Serve { addr, source })?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "admin endpoint: accept failed");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(Duration::from_secs(10), handle(stream, &state))
                .await
                .unwrap_or(Ok(()))
            {
                tracing::debug!(error = %e, "admin endpoint: connection failed");
            }
        });
    }
}

/// Status code, content type and body for a request line's method and path.
pub fn route(method: &str, path: &str, state: &State) -> (u16, &'static str, String) {
    let text = "text/plain; charset=utf-8";
    match (method, path.split('?').next().unwrap_or_default()) {
        ("GET", "/metrics") => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            state.render_metrics(),
        ),
        ("GET", "/healthz") => (200, text, "ok\n".into()),
        ("GET", "/readyz") if state.is_ready() => (200, text, "ok\n".into()),
        ("GET", "/readyz") => (
            503,
            text,
            "not ready: leader election or the controller's watches are still starting\n".into(),
        ),
        ("GET", _) => (
            404,
            text,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
        _ => (405, text, "only GET\n".into()),
    }
}

async fn handle(mut stream: TcpStream, state: &State) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // the request head only; nothing here takes a body
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or("/"),
    );
    let (code, content_type, body) = route(method, path, state);
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_waits_for_the_controller_and_healthz_does_not() {
        let state = State::default();
        assert_eq!(route("GET", "/healthz", &state).0, 200);
        assert_eq!(route("GET", "/readyz", &state).0, 503);
        state.set_ready();
        assert_eq!(route("GET", "/readyz", &state).0, 200);
        assert_eq!(route("GET", "/nope", &state).0, 404);
        assert_eq!(route("POST", "/metrics", &state).0, 405);
    }

    #[tokio::test]
    async fn metrics_are_served_over_http() {
        let state = Arc::new(State::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        tokio::spawn(serve(addr, state.clone()));
        let mut stream = loop {
            // the server binds in its own task: retry until it listens
            if let Ok(s) = TcpStream::connect(addr).await {
                break s;
            }
            tokio::task::yield_now().await;
        };
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("kompress_leader"), "{out}");
    }
}
