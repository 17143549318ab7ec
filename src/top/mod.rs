//! `walrelay top`: a live view of a running relay, read over HTTP from its
//! `/status` and `/metrics` once per interval, each request with a deadline.
//!
//! Shown: log size against `max_bytes`, ingest rate and acknowledgement
//! latency; per sink state, backlog, drain rate, ETA, age of the oldest
//! undelivered record, dead letters, retries and the last error. `q` (or
//! Ctrl-C) quits and restores the terminal. A relay that stops answering is
//! reported on the screen and asked again at the next refresh; `top` never
//! writes to the relay.
//!
//! `view` is pure (samples in, lines out); `term` owns the terminal.

mod term;
pub mod view;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use view::{render, Sample};

/// Longest wait for one of the two requests of a refresh.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// An HTTP client for the relay's own endpoints (`top`, `status`, `feed`)
/// with deadline `timeout`, trusting the PEM certificates of `ca_file` in
/// addition to the public web CAs (an https ingest URL whose certificate a
/// private CA signed).
///
/// # Errors
/// The CA file is unreadable or holds no certificate.
pub fn http_client(
    timeout: Duration,
    ca_file: Option<&std::path::Path>,
) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "--ca-file {}: no PEM certificate in the file",
                path.display()
            ));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| crate::report::chain(&e))
}

/// How `top` runs.
#[derive(Debug, Clone)]
pub struct TopOptions {
    /// Relay base URL, e.g. `http://127.0.0.1:8429`.
    pub url: String,
    /// PEM CA certificates to trust for an https URL (`--ca-file`).
    pub ca_file: Option<std::path::PathBuf>,
    /// Time between refreshes.
    pub interval: Duration,
    /// Print one screen (rates over one interval) and exit.
    pub once: bool,
}

/// Why `top` stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopError {
    /// The terminal could not be set up or written.
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
    /// `--once` and the relay did not answer.
    #[error("relay at {url} is not answering: {message}")]
    Unreachable { url: String, message: String },
}

async fn get(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let fetch = async {
        let r = client
            .get(url)
            .send()
            .await
            .map_err(|e| crate::report::causes(&e))?;
        if !r.status().is_success() {
            return Err(format!("{url}: HTTP {}", r.status()));
        }
        r.text().await.map_err(|e| crate::report::causes(&e))
    };
    tokio::time::timeout(REQUEST_DEADLINE, fetch)
        .await
        .unwrap_or_else(|_| Err(format!("{url}: no answer within {REQUEST_DEADLINE:?}")))
}

/// One sample of the relay at `base`.
async fn scrape(client: &reqwest::Client, base: &str) -> Result<Sample, String> {
    let (status_url, metrics_url) = (format!("{base}/status"), format!("{base}/metrics"));
    let (status, metrics) = tokio::join!(get(client, &status_url), get(client, &metrics_url));
    Sample::parse(&status?, &metrics?)
}

/// `HH:MM:SS UTC` now.
fn clock() -> String {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, (s / 60) % 60, s % 60)
}

/// Runs until `q`/Ctrl-C (or after one screen with `once`).
///
/// # Errors
/// [`TopError`]: the terminal failed, or with `once` the relay did not answer.
pub async fn run(opts: TopOptions) -> Result<(), TopError> {
    let base = opts.url.trim_end_matches('/').to_string();
    let client =
        http_client(REQUEST_DEADLINE, opts.ca_file.as_deref()).map_err(TopError::Client)?;
    if opts.once {
        let unreachable = |message| TopError::Unreachable {
            url: base.clone(),
            message,
        };
        let first = scrape(&client, &base).await.map_err(unreachable)?;
        let t = Instant::now();
        tokio::time::sleep(opts.interval).await;
        let now = scrape(&client, &base).await.map_err(unreachable)?;
        let v = view::view(Some(&first), &now, t.elapsed());
        for l in render(&v, &base, &clock(), usize::MAX) {
            println!("{l}");
        }
        return Ok(());
    }
    let mut screen = term::Screen::enter()?;
    let mut keys = term::keys();
    let mut keys_open = true;
    let mut prev: Option<(Sample, Instant)> = None;
    loop {
        let lines = match scrape(&client, &base).await {
            Ok(now) => {
                let at = Instant::now();
                let v = match &prev {
                    Some((p, t)) => view::view(Some(p), &now, at - *t),
                    None => view::view(None, &now, Duration::ZERO),
                };
                prev = Some((now, at));
                render(
                    &v,
                    &base,
                    &format!("{}  (q quits)", clock()),
                    screen.width(),
                )
            }
            Err(e) => {
                // Rates restart from the next good sample.
                prev = None;
                vec![
                    format!("walrelay top  {base}  {}  (q quits)", clock()),
                    String::new(),
                    format!("relay not answering: {e}"),
                    format!("asking again every {:?}", opts.interval),
                ]
                .into_iter()
                .map(|l| l.chars().take(screen.width()).collect())
                .collect()
            }
        };
        screen.draw(&lines)?;
        let deadline = tokio::time::sleep(opts.interval);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                k = keys.recv(), if keys_open => match k {
                    Some(b'q' | b'Q' | 3) => return Ok(()),
                    Some(_) => {}
                    None => keys_open = false,
                },
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }
}
