//! A test market-data collector: a real tonic server speaking
//! `raven.MarketData/Subscribe`. It serves a scripted message stream per
//! subscription, can refuse subscriptions for its first seconds ("stream not
//! started yet"), drop a stream mid-way, and records every message it sent
//! (a message counts as sent once tonic took it from the stream).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::Stream;
use tonic::{Request, Response, Status};
use walrelay::ingest::grpc::proto::market_data_message::Data;
use walrelay::ingest::grpc::proto::market_data_server::{MarketData, MarketDataServer};
use walrelay::ingest::grpc::proto::*;

/// Builds message `i` of a subscription.
pub type Script = Arc<dyn Fn(&MarketDataRequest, u64) -> MarketDataMessage + Send + Sync>;

#[derive(Clone)]
pub struct Behaviour {
    /// Subscriptions are refused (UNAVAILABLE) until this long after start.
    pub refuse_for: Duration,
    /// Messages per subscription stream before it ends.
    pub per_stream: u64,
    /// The first stream of each subscription breaks after this many messages.
    pub drop_first_after: Option<u64>,
    /// Total messages per subscription, across reconnects.
    pub total: u64,
}

#[derive(Default)]
pub struct Log {
    /// (venue, data_type, symbol) of accepted subscriptions, in order.
    pub accepted: Vec<(String, i32, String)>,
    pub refused: u64,
    /// Messages sent, by subscription symbol and sequence.
    pub sent: Vec<MarketDataMessage>,
    /// Next sequence per (venue, data type, symbol).
    pub next: std::collections::BTreeMap<(String, i32, String), u64>,
}

#[derive(Clone)]
struct Svc {
    started: Instant,
    behaviour: Behaviour,
    script: Script,
    log: Arc<Mutex<Log>>,
}

#[tonic::async_trait]
impl MarketData for Svc {
    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<MarketDataMessage, Status>> + Send>>;

    async fn subscribe(
        &self,
        req: Request<MarketDataRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let req = req.into_inner();
        if self.started.elapsed() < self.behaviour.refuse_for {
            self.log.lock().unwrap().refused += 1;
            return Err(Status::unavailable("stream not started yet"));
        }
        let key = (req.venue.clone(), req.data_type, req.symbol.clone());
        let (start, first_stream) = {
            let mut log = self.log.lock().unwrap();
            let first = !log.accepted.contains(&key);
            log.accepted.push(key.clone());
            (*log.next.get(&key).unwrap_or(&0), first)
        };
        let b = self.behaviour.clone();
        let end = b.total.min(start + b.per_stream);
        let drop_at = if first_stream {
            b.drop_first_after.map(|d| start + d)
        } else {
            None
        };
        let (script, log) = (self.script.clone(), self.log.clone());
        let stream = async_stream_like(start, end, drop_at, req, script, log, key);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The message stream, as an unfold (no extra crate needed).
fn async_stream_like(
    start: u64,
    end: u64,
    drop_at: Option<u64>,
    req: MarketDataRequest,
    script: Script,
    log: Arc<Mutex<Log>>,
    key: (String, i32, String),
) -> impl Stream<Item = Result<MarketDataMessage, Status>> + Send {
    futures_util::stream::unfold(start, move |i| {
        let (req, script, log, key) = (req.clone(), script.clone(), log.clone(), key.clone());
        async move {
            if Some(i) == drop_at {
                return Some((
                    Err(Status::unavailable("collector dropped the stream")),
                    u64::MAX,
                ));
            }
            if i >= end {
                return None;
            }
            let m = script(&req, i);
            let mut l = log.lock().unwrap();
            l.sent.push(m.clone());
            l.next.insert(key, i + 1);
            Some((Ok(m), i + 1))
        }
    })
}

pub struct Collector {
    pub port: u16,
    pub log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub async fn start(behaviour: Behaviour, script: Script) -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Log::default()));
        let svc = Svc {
            started: Instant::now(),
            behaviour,
            script,
            log: log.clone(),
        };
        let incoming = tokio_stream_from(listener);
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(MarketDataServer::new(svc))
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        Collector { port, log, task }
    }

    /// The same collector serving TLS only (ALPN h2) with `tls`; the first
    /// byte of every connection is recorded in `first_bytes` (0x16 opens a
    /// TLS handshake: anything else was a plaintext attempt).
    pub async fn start_tls(
        behaviour: Behaviour,
        script: Script,
        tls: Arc<rustls::ServerConfig>,
    ) -> (Collector, Arc<Mutex<Vec<u8>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Log::default()));
        let svc = Svc {
            started: Instant::now(),
            behaviour,
            script,
            log: log.clone(),
        };
        let first_bytes = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<TlsIo>>(16);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let seen = first_bytes.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, tx, seen) = (acceptor.clone(), tx.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    if let Ok(1) = tcp.peek(&mut b).await {
                        seen.lock().unwrap().push(b[0]);
                    }
                    // A refused handshake is the client's failure to see.
                    if let Ok(s) = acceptor.accept(tcp).await {
                        let _ = tx.send(Ok(TlsIo(s))).await;
                    }
                });
            }
        });
        let incoming =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|s| (s, rx)) },
            );
        let task = tokio::spawn(async move {
            let _accept = AbortOnDrop(accept);
            tonic::transport::Server::builder()
                .add_service(MarketDataServer::new(svc))
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        (Collector { port, log, task }, first_bytes)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn sent(&self) -> Vec<MarketDataMessage> {
        self.log.lock().unwrap().sent.clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}

/// A message of every kind for subscription `req`, message `i`: trades for
/// TRADE, candles for CANDLE (producer chosen by the symbol), etc.
pub fn script_by_type() -> Script {
    Arc::new(|req: &MarketDataRequest, i: u64| {
        let ts = 1_700_000_000_000 + i as i64; // ms
        let sym = if req.symbol == "*" {
            format!("ALL{}USDT", i % 3)
        } else {
            req.symbol.clone()
        };
        let (producer, data) = match DataType::try_from(req.data_type).unwrap_or(DataType::Unknown)
        {
            DataType::Trade => (
                "trades",
                Data::Trade(Trade {
                    symbol: sym,
                    timestamp: ts,
                    price: 100.0 + i as f64,
                    quantity: 1.0 + i as f64,
                    side: if i % 2 == 0 { "buy" } else { "sell" }.into(),
                    trade_id: format!("{}-{i}", req.symbol),
                }),
            ),
            DataType::Orderbook => (
                "book",
                Data::Orderbook(OrderBookSnapshot {
                    symbol: sym,
                    timestamp: ts,
                    bids: vec![PriceLevel {
                        price: 99.0 + i as f64,
                        quantity: 2.0,
                    }],
                    asks: vec![PriceLevel {
                        price: 101.0 + i as f64,
                        quantity: 3.0,
                    }],
                    sequence: i as i64,
                }),
            ),
            DataType::Funding => (
                "funding",
                Data::Funding(FundingRate {
                    symbol: sym,
                    timestamp: ts,
                    rate: 0.0001 * i as f64,
                    next_funding_time: 1_700_028_800_000,
                    mark_price: 100.0 + i as f64,
                    index_price: 99.5,
                }),
            ),
            DataType::Liquidation => (
                "liq",
                Data::Liquidation(Liquidation {
                    symbol: sym,
                    timestamp: ts,
                    side: "sell".into(),
                    price: 50.0 + i as f64,
                    quantity: 3.0,
                }),
            ),
            DataType::OpenInterest => (
                "oi",
                Data::OpenInterest(OpenInterest {
                    symbol: sym,
                    timestamp: ts,
                    open_interest: 1000.0 + i as f64,
                    open_interest_value: 5e6,
                }),
            ),
            DataType::Ticker => (
                "options",
                Data::OptionsTicker(OptionsTicker {
                    symbol: sym,
                    timestamp: ts,
                    open_interest: 10.0,
                    mark_iv: 50.0 + i as f64,
                    best_bid_price: 0.1,
                    best_ask_price: 0.12,
                    mark_price: 0.11,
                    underlying_price: 37000.0,
                    last_price: 0.11,
                    bid_iv: 49.0,
                    ask_iv: 51.0,
                }),
            ),
            DataType::PriceIndex => (
                "index",
                Data::PriceIndex(PriceIndex {
                    index_name: "btc_usd".into(),
                    price: 37000.0 + i as f64,
                    timestamp: ts,
                }),
            ),
            DataType::Candle => {
                let producer = match req.symbol.as_str() {
                    s if s.starts_with("KL") => "binance-klines-1m",
                    s if s.starts_with("VP") => "binance-vpin",
                    s if s.starts_with("VI") => "binance-vibs",
                    _ => "binance-tibs",
                };
                (
                    producer,
                    Data::Candle(Candle {
                        symbol: sym,
                        timestamp: ts * 1000 / 1000 + (i as i64) * 1000,
                        open: 1.0,
                        high: 2.0,
                        low: 0.5,
                        close: 1.5,
                        volume: i as f64,
                        interval: "tick_100".into(),
                        buy_ticks: 6,
                        sell_ticks: 4,
                        total_ticks: 10,
                        theta: 0.5,
                    }),
                )
            }
            DataType::Unknown => (
                "wallet",
                Data::Wallet(WalletUpdate {
                    user_id: "u".into(),
                    timestamp: ts,
                    balances: vec![],
                }),
            ),
        };
        MarketDataMessage {
            venue: req.venue.clone(),
            producer: producer.into(),
            data: Some(data),
        }
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A server-side TLS stream tonic can serve (it needs `Connected`).
pub struct TlsIo(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
