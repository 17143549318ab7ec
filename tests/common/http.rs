//! The few HTTP reads tests make of a relay (`/status`, `/metrics`,
//! `/health`): a GET whose answer is unwrapped as JSON or text, and a poll of
//! `/status` until a condition holds.

use std::time::Duration;

/// GETs `url` and returns its body as JSON (panics on a transport error or a
/// body that is not JSON).
pub async fn get_json(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> serde_json::Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// GETs `url` and returns its body as text (panics on a transport error).
pub async fn get_text(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
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
