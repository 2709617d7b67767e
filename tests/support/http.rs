//! A minimal HTTP/1.1 server for the test doubles (token issuer, fault proxy, API server, OTLP
//! receiver): one request per connection, its body read whole (bounded, `Content-Length` or
//! chunked), so a handler can misbehave at the socket level (resets, truncation, drips).

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
    /// Resets the connection (RST, `SO_LINGER` 0) without a byte.
    Reset,
    /// Sends headers announcing `declared` bytes and `body`, then resets the connection.
    ResetAfter {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        declared: usize,
    },
    /// Sends headers announcing `declared` bytes and `body`, then neither more nor a close: the
    /// connection is held until the client gives up.
    Stall {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        declared: usize,
    },
    /// Sends nothing at all until the client gives up.
    Hang,
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
    task: std::sync::Mutex<tokio::task::JoinHandle<()>>,
    /// Serves a listener with the handler: to listen again after [`Server::stop`].
    serve: Arc<dyn Fn(TcpListener) -> tokio::task::JoinHandle<()> + Send + Sync>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.lock().unwrap_or_else(|p| p.into_inner()).abort();
    }
}

impl Server {
    pub async fn start<F, Fut>(bind: &str, handler: F) -> Server
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let listener = TcpListener::bind(bind).await.expect("bind test server");
        Self::start_on(listener, handler)
    }

    /// Serves on a listener the caller bound (a port that refused connections until now).
    pub fn start_on<F, Fut>(listener: TcpListener, handler: F) -> Server
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let addr = listener.local_addr().expect("local addr");
        let handler = Arc::new(handler);
        let serve = Arc::new(move |listener: TcpListener| {
            let handler = handler.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        let _ = serve_one(stream, &*handler).await;
                    });
                }
            })
        });
        let task = std::sync::Mutex::new(serve(listener));
        Server { addr, task, serve }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops listening, as a process that exited: connections are refused from now on (those
    /// being served carry on until their handler ends them).
    pub async fn stop(&self) {
        let task = std::mem::replace(
            &mut *self.task.lock().unwrap_or_else(|p| p.into_inner()),
            tokio::spawn(std::future::pending()),
        );
        task.abort();
        // The listener is closed once the aborted task is dropped.
        let _ = task.await;
    }

    /// Listens again on the same address after [`Server::stop`].
    pub async fn resume(&self) {
        let listener = TcpListener::bind(self.addr).await.expect("listen again on the same address");
        let task = (self.serve)(listener);
        std::mem::replace(&mut *self.task.lock().unwrap_or_else(|p| p.into_inner()), task).abort();
    }
}

/// Bounds on what a client may send: the doubles read whole requests into memory.
const MAX_HEAD: usize = 64 << 10;
const MAX_BODY: usize = 64 << 20;

/// A connection's bytes read so far, past what has been parsed.
struct Incoming {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Incoming {
    /// Reads more; `false` at end of stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 16 << 10];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// The bytes up to and including `end`, if it comes within `limit` bytes.
    async fn until(&mut self, end: &[u8], limit: usize) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(at) = self.buf.windows(end.len()).position(|w| w == end) {
                return Ok(Some(self.buf.drain(..at + end.len()).collect()));
            }
            if self.buf.len() > limit || !self.fill().await? {
                return Ok(None);
            }
        }
    }

    async fn exactly(&mut self, n: usize) -> std::io::Result<Option<Vec<u8>>> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Ok(None);
            }
        }
        Ok(Some(self.buf.drain(..n).collect()))
    }

    /// A `Transfer-Encoding: chunked` body, trailers dropped; `None` if malformed or too large.
    async fn chunked(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut body = Vec::new();
        loop {
            let Some(line) = self.until(b"\r\n", 1024).await? else { return Ok(None) };
            let line = String::from_utf8_lossy(&line);
            let size = line.trim_end().split(';').next().unwrap_or_default().trim();
            let Ok(size) = usize::from_str_radix(size, 16) else { return Ok(None) };
            if size == 0 {
                while self.until(b"\r\n", MAX_HEAD).await?.is_some_and(|l| l.len() > 2) {}
                return Ok(Some(body));
            }
            if body.len() + size > MAX_BODY {
                return Ok(None);
            }
            let Some(chunk) = self.exactly(size + 2).await? else { return Ok(None) };
            body.extend_from_slice(&chunk[..size]);
        }
    }
}

/// What came in on a connection: a request, or why none can be served.
enum Received {
    Request(Request),
    /// Closed, or not HTTP.
    Nothing,
    /// A body over [`MAX_BODY`] or unreadable: answered with this status, not handed on.
    Refused(u16),
}

/// The first byte of a TLS handshake record: a TLS client talking to this plain-HTTP server.
const TLS_HANDSHAKE: u8 = 0x16;

async fn read_request(stream: TcpStream) -> std::io::Result<(TcpStream, Received)> {
    let mut incoming = Incoming { stream, buf: Vec::new() };
    // As a real HTTP server does (Go's answers the unparsable request line with a 400), so a TLS
    // client learns at once that this port speaks plain HTTP.
    if !incoming.fill().await? {
        return Ok((incoming.stream, Received::Nothing));
    }
    if incoming.buf.first() == Some(&TLS_HANDSHAKE) {
        return Ok((incoming.stream, Received::Refused(400)));
    }
    let Some(head) = incoming.until(b"\r\n\r\n", MAX_HEAD).await? else {
        return Ok((incoming.stream, Received::Nothing));
    };
    let head = String::from_utf8_lossy(&head).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_string();
    let target = request_line.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let header = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    let chunked = header("transfer-encoding").is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        incoming.chunked().await?
    } else {
        match header("content-length").map(str::parse::<usize>) {
            None => Some(Vec::new()),
            Some(Ok(n)) if n <= MAX_BODY => incoming.exactly(n).await?,
            Some(_) => None,
        }
    };
    let received = match body {
        Some(body) => Received::Request(Request { method, target, headers, body }),
        None => Received::Refused(413),
    };
    Ok((incoming.stream, received))
}

async fn serve_one<F, Fut>(stream: TcpStream, handler: &F) -> std::io::Result<()>
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Reply>,
{
    let (mut stream, received) = read_request(stream).await?;
    let request = match received {
        Received::Request(request) => request,
        Received::Nothing => return Ok(()),
        Received::Refused(status) => {
            stream
                .write_all(format!("HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .await?;
            return stream.shutdown().await;
        }
    };
    let is_head = request.method == "HEAD";
    let reply = handler(request).await;
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
        Reply::Reset => {
            stream.set_zero_linger()?;
            return Ok(());
        }
        Reply::ResetAfter { status, headers, body, declared } => {
            stream.write_all(write_head(status, &headers, Some(declared)).as_bytes()).await?;
            stream.write_all(&body).await?;
            stream.flush().await?;
            stream.set_zero_linger()?;
            return Ok(());
        }
        Reply::Stall { status, headers, body, declared } => {
            stream.write_all(write_head(status, &headers, Some(declared)).as_bytes()).await?;
            stream.write_all(&body).await?;
            stream.flush().await?;
            return until_closed(stream).await;
        }
        Reply::Hang => return until_closed(stream).await,
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

/// Reads (and drops) whatever the client still sends until it closes the connection.
async fn until_closed(mut stream: TcpStream) -> std::io::Result<()> {
    let mut sink = [0u8; 4096];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}
