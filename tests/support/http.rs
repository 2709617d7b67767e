//! A minimal HTTP/1.1 server for the test doubles (token issuer, fault proxy): one request per
//! connection, so a handler can misbehave at the socket level (resets, truncation, drips).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn query(&self, key: &str) -> Option<String> {
        let query = self.target.split_once('?')?.1;
        url_query_pairs(query).into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

fn url_query_pairs(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .map(|u| u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
        .unwrap_or_default()
}

/// A response, or a way of failing to give one.
pub enum Reply {
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Closes the connection without a byte.
    Reset,
    /// Announces `declared` bytes, sends `body`, closes.
    Truncated {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        declared: usize,
    },
    /// A body of unknown length, sent as it comes and ended by closing the connection
    /// (a Kubernetes watch).
    Stream {
        status: u16,
        headers: Vec<(String, String)>,
        chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
    },
    /// Waits `delay`, sends headers, then the body one byte per `delay`.
    Drip {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        delay: std::time::Duration,
    },
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply::Full { status, headers: vec![], body: vec![] }
    }

    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Reply::Full {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }
}

pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn start<F, Fut>(bind: &str, handler: F) -> Server
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let listener = TcpListener::bind(bind).await.expect("bind test server");
        let addr = listener.local_addr().expect("local addr");
        let handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let handler = handler.clone();
                tokio::spawn(async move {
                    let _ = serve_one(stream, &*handler).await;
                });
            }
        });
        Server { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn serve_one<F, Fut>(mut stream: TcpStream, handler: &F) -> std::io::Result<()>
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Reply>,
{
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 64 << 10 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").map_or(buf.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut body = buf[head_end..].to_vec();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_string();
    let target = request_line.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let declared: usize = headers
        .iter()
        .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while body.len() < declared.min(64 << 20) {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let is_head = method == "HEAD";
    let reply = handler(Request { method, target, headers, body }).await;
    let write_head = |status: u16, headers: &[(String, String)], len: Option<usize>| {
        let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
        if let Some(len) = len {
            head.push_str(&format!("Content-Length: {len}\r\n"));
        }
        for (k, v) in headers {
            if !k.eq_ignore_ascii_case("content-length") && !k.eq_ignore_ascii_case("connection") {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str("\r\n");
        head
    };
    match reply {
        Reply::Reset => {}
        Reply::Full { status, headers, body } => {
            let declared = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .filter(|_| is_head)
                .unwrap_or(body.len());
            stream.write_all(write_head(status, &headers, Some(declared)).as_bytes()).await?;
            if !is_head {
                stream.write_all(&body).await?;
            }
        }
        Reply::Truncated { status, headers, body, declared } => {
            stream.write_all(write_head(status, &headers, Some(declared)).as_bytes()).await?;
            stream.write_all(&body).await?;
        }
        Reply::Drip { status, headers, body, delay } => {
            tokio::time::sleep(delay).await;
            stream.write_all(write_head(status, &headers, Some(body.len())).as_bytes()).await?;
            for byte in body {
                tokio::time::sleep(delay).await;
                stream.write_all(&[byte]).await?;
                stream.flush().await?;
            }
        }
        Reply::Stream { status, headers, mut chunks } => {
            stream.write_all(write_head(status, &headers, None).as_bytes()).await?;
            stream.flush().await?;
            while let Some(chunk) = chunks.recv().await {
                stream.write_all(&chunk).await?;
                stream.flush().await?;
            }
        }
    }
    stream.shutdown().await
}
