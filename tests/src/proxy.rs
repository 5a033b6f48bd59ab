//! A fault-injecting HTTP/1.1 proxy on loopback, between agents and the coordinator: slow
//! or hostile links for end-to-end tests, decided per request by a rule.
//!
//! It speaks just enough HTTP/1.1 for the agent protocol: requests and responses framed by
//! `Content-Length` (or a chunked response, which it reads whole and resends framed by
//! length), one request at a time per connection, keep-alive. Each client connection gets
//! its own upstream connection. A rule sees every request and says what to do with it:
//! pass it, answer it with a status, rewrite the answer's body, or trickle the answer. A
//! request the rule passed or rewrote is decided again when its answer comes (a long-poll
//! held across a change of rule gets the new rule's answer).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A request as the rule sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path with its query.
    pub path: String,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// True when the rule is asked again, for the answer of a request it passed (a rule
    /// with side effects, such as "only once", decides at request time only).
    pub at_answer: bool,
}

impl Request {
    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Rewrites an answer's status and body.
pub type Rewrite = Arc<dyn Fn(u16, Vec<u8>) -> Vec<u8> + Send + Sync>;

/// What to do with one request.
#[derive(Clone)]
pub enum Action {
    /// Forward it and its answer unchanged.
    Pass,
    /// Answer it with this status (and an empty body) without forwarding it.
    Fail(u16),
    /// Answer it with this status and JSON body without forwarding it (a replay).
    Answer(u16, Vec<u8>),
    /// Forward it; change the answer's body.
    Rewrite(Rewrite),
    /// Forward it; send the answer's body `bytes` at a time, one piece every `every`.
    Trickle {
        /// Bytes per piece.
        bytes: usize,
        /// Pause between pieces (the fault injected, not a synchronisation).
        every: Duration,
    },
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Pass => f.write_str("Pass"),
            Action::Fail(s) => write!(f, "Fail({s})"),
            Action::Answer(s, b) => write!(f, "Answer({s}, {} bytes)", b.len()),
            Action::Rewrite(_) => f.write_str("Rewrite"),
            Action::Trickle { bytes, every } => write!(f, "Trickle({bytes} every {every:?})"),
        }
    }
}

type Rule = Arc<dyn Fn(&Request) -> Action + Send + Sync>;

#[derive(Default)]
struct Shared {
    rule: Mutex<Option<Rule>>,
    seen: Mutex<Vec<Request>>,
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`: give this to the agent as its `--server`.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// A proxy to `upstream` (`http://127.0.0.1:PORT`) passing everything until a rule is set.
    pub async fn start(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let shared = Arc::new(Shared::default());
        let task = {
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (shared, upstream) = (shared.clone(), upstream.clone());
                    tokio::spawn(async move {
                        let _ = serve(client, &upstream, &shared).await;
                    });
                }
            })
        };
        Self { url, shared, task }
    }

    /// Decides every request from now on.
    pub fn set_rule(&self, rule: impl Fn(&Request) -> Action + Send + Sync + 'static) {
        *self.shared.rule.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(rule));
    }

    /// Every request seen so far, in order.
    pub fn seen(&self) -> Vec<Request> {
        self.shared.seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

type Io = std::io::Result<()>;

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_owned())
}

/// Reads a head (request or status line and headers) up to the blank line.
async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(String, Vec<(String, String)>)>> {
    let mut first = String::new();
    if r.read_line(&mut first).await? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(bad("connection closed inside a head"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':').ok_or_else(|| bad("bad header"))?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    Ok(Some((first.trim_end().to_owned(), headers)))
}

fn content_length(headers: &[(String, String)]) -> Option<usize> {
    headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok())
}

fn head_bytes(first: &str, headers: &[(String, String)]) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut out = format!("{first}\r\n");
    for (n, v) in headers {
        let _ = write!(out, "{n}: {v}\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Reads a response body: by length, chunked (de-chunked), or none.
async fn read_body<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    status: u16,
    headers: &[(String, String)],
) -> std::io::Result<Vec<u8>> {
    if status == 204 || status == 304 {
        return Ok(Vec::new());
    }
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            r.read_line(&mut size).await?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| bad("chunk size"))?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).await?;
            if n == 0 {
                return Ok(body);
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    let mut body = vec![0; content_length(headers).unwrap_or(0)];
    r.read_exact(&mut body).await?;
    Ok(body)
}

async fn serve(client: TcpStream, upstream_addr: &str, shared: &Shared) -> Io {
    let (client_read, mut client_write) = client.into_split();
    let mut client_read = BufReader::new(client_read);
    let mut upstream: Option<(BufReader<tokio::net::tcp::OwnedReadHalf>, tokio::net::tcp::OwnedWriteHalf)> = None;
    while let Some((first, headers)) = read_head(&mut client_read).await? {
        let mut body = vec![0; content_length(&headers).unwrap_or(0)];
        client_read.read_exact(&mut body).await?;
        let mut parts = first.split_whitespace();
        let request = Request {
            method: parts.next().unwrap_or_default().to_owned(),
            path: parts.next().unwrap_or_default().to_owned(),
            headers: headers.clone(),
            at_answer: false,
        };
        shared.seen.lock().unwrap_or_else(PoisonError::into_inner).push(request.clone());
        let rule = shared.rule.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let action = rule.map_or(Action::Pass, |r| r(&request));
        if let Action::Fail(status) = action {
            let answer = format!("HTTP/1.1 {status} Injected\r\ncontent-length: 0\r\n\r\n");
            client_write.write_all(answer.as_bytes()).await?;
            continue;
        }
        if let Action::Answer(status, body) = &action {
            let head = format!(
                "HTTP/1.1 {status} Injected\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            client_write.write_all(head.as_bytes()).await?;
            client_write.write_all(body).await?;
            continue;
        }
        if upstream.is_none() {
            let s = TcpStream::connect(upstream_addr).await?;
            let (r, w) = s.into_split();
            upstream = Some((BufReader::new(r), w));
        }
        let (up_read, up_write) = upstream.as_mut().expect("connected");
        up_write.write_all(&head_bytes(&first, &headers)).await?;
        up_write.write_all(&body).await?;
        let (status_line, mut resp_headers) = read_head(up_read).await?.ok_or_else(|| bad("upstream closed"))?;
        let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(502);
        let mut resp_body = read_body(up_read, status, &resp_headers).await?;
        // A long-poll may be answered after the rule changed: a request that was to pass or
        // be rewritten is decided again, for its answer, by the rule of now.
        let action = match action {
            Action::Pass | Action::Rewrite(_) => {
                let rule = shared.rule.lock().unwrap_or_else(PoisonError::into_inner).clone();
                let again = Request { at_answer: true, ..request.clone() };
                match rule.map_or(Action::Pass, |r| r(&again)) {
                    a @ (Action::Rewrite(_) | Action::Trickle { .. }) => a,
                    _ => Action::Pass,
                }
            }
            other => other,
        };
        if let Action::Rewrite(f) = &action {
            resp_body = f(status, resp_body);
        }
        resp_headers.retain(|(n, _)| n != "content-length" && n != "transfer-encoding");
        if status != 204 && status != 304 {
            resp_headers.push(("content-length".into(), resp_body.len().to_string()));
        }
        client_write.write_all(&head_bytes(&status_line, &resp_headers)).await?;
        match action {
            Action::Trickle { bytes, every } => {
                for piece in resp_body.chunks(bytes.max(1)) {
                    client_write.write_all(piece).await?;
                    client_write.flush().await?;
                    tokio::time::sleep(every).await;
                }
            }
            _ => client_write.write_all(&resp_body).await?,
        }
    }
    Ok(())
}
