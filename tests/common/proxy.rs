//! A fault-injecting HTTP proxy in front of a real server, for outages,
//! latency, resets and error replies. Each connection carries one request
//! (the proxy forces `Connection: close`), so a mode switch applies to the
//! next request. Modes are switched at runtime with [`Proxy::set`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub enum Mode {
    /// Forward to the upstream.
    Pass,
    /// Stop listening: clients get "connection refused".
    Refuse,
    /// Read the request, then reset the connection.
    Reset,
    /// Wait this long, then forward (responses beyond a client's deadline).
    Delay(Duration),
    /// Answer with this status, extra headers and body; nothing is forwarded.
    Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Answer 400 naming the line when the body contains `marker`; forward otherwise.
    RejectLineWith { marker: String },
    /// Answer `status` when the body contains `marker` (a server refusing
    /// that one line: InfluxDB answers 413 for a line over its size limit;
    /// VictoriaMetrics answers 204 and drops it, so it cannot show this);
    /// forward otherwise.
    RejectLineWithStatus { marker: String, status: u16 },
    /// Hold requests whose body is larger than `bytes` for `delay` before
    /// forwarding (a server too slow for large requests); forward others at once.
    DelayLargerThan { bytes: usize, delay: Duration },
}

struct State {
    mode: Mode,
    requests: u64,
    forwarded: u64,
    listener_open: bool,
}

#[derive(Clone)]
pub struct Proxy {
    pub port: u16,
    upstream: String,
    state: Arc<Mutex<State>>,
    wake: Arc<tokio::sync::Notify>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream` (host:port).
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = Proxy {
            port,
            upstream: upstream.to_string(),
            state: Arc::new(Mutex::new(State {
                mode: Mode::Pass,
                requests: 0,
                forwarded: 0,
                listener_open: true,
            })),
            wake: Arc::new(tokio::sync::Notify::new()),
        };
        tokio::spawn(p.clone().accept_loop(Some(listener)));
        p
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
        self.wake.notify_waiters();
    }

    /// Requests seen and requests forwarded to the upstream.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.state.lock().unwrap();
        (s.requests, s.forwarded)
    }

    async fn accept_loop(self, mut listener: Option<TcpListener>) {
        loop {
            let refuse = matches!(self.state.lock().unwrap().mode, Mode::Refuse);
            if refuse {
                if listener.take().is_some() {
                    self.state.lock().unwrap().listener_open = false;
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                continue;
            }
            if listener.is_none() {
                match TcpListener::bind(("127.0.0.1", self.port)).await {
                    Ok(l) => {
                        listener = Some(l);
                        self.state.lock().unwrap().listener_open = true;
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            }
            let l = listener.as_ref().unwrap();
            tokio::select! {
                accepted = l.accept() => {
                    if let Ok((conn, _)) = accepted {
                        tokio::spawn(self.clone().handle(conn));
                    }
                }
                _ = self.wake.notified() => {}
            }
        }
    }

    async fn handle(self, mut conn: TcpStream) {
        let Some((head, body)) = read_request(&mut conn).await else {
            return;
        };
        let mode = {
            let mut s = self.state.lock().unwrap();
            s.requests += 1;
            s.mode.clone()
        };
        match mode {
            Mode::Refuse => {}
            Mode::Reset => {
                // SO_LINGER 0 makes the close a reset (RST): exactly the fault wanted.
                #[allow(deprecated)]
                let _ = conn.set_linger(Some(Duration::ZERO));
                drop(conn);
            }
            Mode::Reply {
                status,
                headers,
                body,
            } => reply(&mut conn, status, &headers, &body).await,
            Mode::RejectLineWith { marker } => {
                let text = String::from_utf8_lossy(&body);
                if let Some(n) = text.lines().position(|l| l.contains(&marker)) {
                    let msg = format!("{{\"code\":\"invalid\",\"message\":\"unable to parse line {}: rejected by test proxy\"}}", n + 1);
                    reply(&mut conn, 400, &[], &msg).await;
                } else {
                    self.forward(conn, &head, &body).await;
                }
            }
            Mode::RejectLineWithStatus { marker, status } => {
                let text = String::from_utf8_lossy(&body);
                if let Some(n) = text.lines().position(|l| l.contains(&marker)) {
                    let msg = format!("{{\"code\":\"refused\",\"message\":\"line {}: refused by test proxy with {status}\"}}", n + 1);
                    reply(&mut conn, status, &[], &msg).await;
                } else {
                    self.forward(conn, &head, &body).await;
                }
            }
            Mode::DelayLargerThan { bytes, delay } => {
                if body.len() > bytes {
                    tokio::time::sleep(delay).await;
                }
                self.forward(conn, &head, &body).await;
            }
            Mode::Delay(d) => {
                tokio::time::sleep(d).await;
                self.forward(conn, &head, &body).await;
            }
            Mode::Pass => self.forward(conn, &head, &body).await,
        }
    }

    async fn forward(&self, mut conn: TcpStream, head: &str, body: &[u8]) {
        let Ok(mut up) = TcpStream::connect(&self.upstream).await else {
            reply(&mut conn, 502, &[], "upstream down").await;
            return;
        };
        self.state.lock().unwrap().forwarded += 1;
        let mut new_head = String::new();
        for line in head.split("\r\n").filter(|l| !l.is_empty()) {
            if line.to_ascii_lowercase().starts_with("connection:") {
                continue;
            }
            new_head.push_str(line);
            new_head.push_str("\r\n");
        }
        new_head.push_str("Connection: close\r\n\r\n");
        if up.write_all(new_head.as_bytes()).await.is_err() || up.write_all(body).await.is_err() {
            return;
        }
        let mut resp = Vec::new();
        let _ = up.read_to_end(&mut resp).await;
        let _ = conn.write_all(&resp).await;
        let _ = conn.shutdown().await;
    }
}

async fn reply(conn: &mut TcpStream, status: u16, headers: &[(String, String)], body: &str) {
    let mut r = format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.push_str(body);
    let _ = conn.write_all(r.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// Reads one HTTP/1.1 request with a Content-Length body.
async fn read_request(conn: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}
