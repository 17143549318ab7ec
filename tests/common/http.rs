//! The few HTTP reads tests make of a relay (`/status`, `/metrics`,
//! `/health`): a GET whose answer is unwrapped as JSON or text, and a poll of
//! `/status` until a condition holds.

use std::time::Duration;

/// The v2 write path tests post line protocol to.
pub const WRITE_PATH: &str = "/api/v2/write?org=o&bucket=b&precision=ns";

/// A client whose every request has a 10 s deadline.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Trade number `i` as one line of line protocol: BTCUSDT on BINANCE, a buy
/// at `records::TS + i` ns.
pub fn trade_line(i: u64) -> String {
    format!(
        "trades,symbol=BTCUSDT,exchange=BINANCE,side=buy price=97000.5,quantity=0.1 {}\n",
        super::records::TS as u64 + i
    )
}

/// Posts line protocol to the relay's [`WRITE_PATH`] with `Token <token>`.
pub async fn write(
    client: &reqwest::Client,
    relay_url: &str,
    token: &str,
    body: String,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{relay_url}{WRITE_PATH}"))
        .header("Authorization", format!("Token {token}"))
        .body(body)
        .send()
        .await
}

/// GETs `url` and returns its body as JSON (panics on a transport error or a
/// body that is not JSON).
pub async fn get_json(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> serde_json::Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// GETs `url` and returns its body as text (panics on a transport error).
pub async fn get_text(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// The relay's `log.appended_records` from `/status`, read over a
/// connection of its own (none stays open to delay a stop).
pub async fn appended(relay_url: &str) -> u64 {
    let v = get_json(&reqwest::Client::new(), format!("{relay_url}/status")).await;
    v["log"]["appended_records"].as_u64().unwrap()
}

/// Whether a `/status` document shows every sink with an empty backlog.
pub fn drained(status: &serde_json::Value) -> bool {
    status["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["backlog_records"] == 0)
}

/// Polls `{relay_url}/status` every 100 ms until `cond` holds and returns
/// that status; panics naming `what` (with the last status) after `secs`.
pub async fn wait_status(
    client: &reqwest::Client,
    relay_url: &str,
    what: &str,
    secs: u64,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..secs * 10 {
        last = get_json(client, format!("{relay_url}/status")).await;
        if cond(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out: {what}; last status: {last}");
}
