//! InfluxDB compatibility, end to end: the official `influxdb-client` Python
//! package (pinned, installed by `scripts/setup.sh` into `target/test-venv`)
//! and a 1.x writer talk to a relay on loopback whose Influx sink delivers to
//! a real VictoriaMetrics. The client's `ping()`, `health()`, `ready()`,
//! `version()` and a v2 write must work as against InfluxDB; 1.x lines posted
//! to `/write?db=…` with every precision and every way of presenting the
//! token must arrive with the right timestamps; wrong credentials get 401 in
//! 1.x's error shape and append nothing.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::http::appended;
use common::relay::ServedRelay;
use common::vm::Vm;

const TOKEN: &str = "s3cret-ingest";

/// The venv `scripts/setup.sh` creates (or `WALRELAY_TEST_VENV`).
fn venv_python() -> PathBuf {
    let venv = std::env::var_os("WALRELAY_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-venv")));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/setup.sh` (it installs influxdb-client into a venv)",
        python.display()
    );
    python
}

/// Drives the relay with the official client; prints one JSON object.
const CLIENT_SCRIPT: &str = r#"
import json, os, sys, warnings
warnings.simplefilter("ignore")
from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

url, token = os.environ["RELAY_URL"], os.environ["RELAY_TOKEN"]
out = {}
with InfluxDBClient(url=url, token=token, org="o", timeout=10_000) as c:
    out["ping"] = c.ping()
    out["version"] = c.version()
    out["build"] = c.build()
    h = c.health()
    out["health_status"] = h.status
    out["health_name"] = h.name
    out["health_checks"] = [[x.name, x.status] for x in (h.checks or [])]
    r = c.ready()
    out["ready_status"] = r.status
    out["ready_up"] = r.up
    c.write_api(write_options=SYNCHRONOUS).write(
        bucket="b", record="compat_v2,via=python v=42 1764000000500", write_precision="ms")
    out["v2_write"] = "ok"
with InfluxDBClient(url=url, token="wrong", org="o", timeout=10_000) as c:
    try:
        c.write_api(write_options=SYNCHRONOUS).write(bucket="b", record="compat_v2,via=python v=1 1")
        out["wrong_token_write"] = "accepted"
    except ApiException as e:
        out["wrong_token_write"] = e.status
print(json.dumps(out))
"#;

struct Relay {
    relay: ServedRelay,
    url: String,
    _dir: tempfile::TempDir,
}

async fn start_relay(vm_url: &str) -> Relay {
    let dir = tempfile::TempDir::new().unwrap();
    let conf = dir.path().join("relay.toml");
    std::fs::write(
        &conf,
        format!(
            "[wal]\ndir = \"{}\"\n[ingest]\ntoken = \"{TOKEN}\"\n\
             [influx]\nurl = \"{vm_url}\"\norg = \"o\"\nbucket = \"b\"\n\
             [drain]\nretry_initial_ms = 50\nretry_max_ms = 200\n",
            dir.path().join("wal").display()
        ),
    )
    .unwrap();
    let config = walrelay::config::Config::load(&conf).unwrap();
    let relay = ServedRelay::start(config).await;
    Relay {
        url: relay.url.clone(),
        relay,
        _dir: dir,
    }
}

/// (variant, value, ms timestamp) samples of `name` in VictoriaMetrics,
/// waiting until `want` of them are there.
async fn wait_samples(
    vm: &Vm,
    name: &str,
    label: &str,
    want: usize,
) -> BTreeSet<(String, i64, i64)> {
    let mut got = BTreeSet::new();
    for _ in 0..200 {
        got = vm
            .export(name)
            .await
            .into_iter()
            .flat_map(|s| {
                let l = s.labels.get(label).cloned().unwrap_or_default();
                s.samples
                    .into_iter()
                    .map(move |(t, v)| (l.clone(), v as i64, t))
            })
            .collect();
        if got.len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_client_and_a_1x_writer_work_against_the_relay() {
    let python = venv_python();
    let mut vm = Vm::start().await;
    let relay = start_relay(&vm.url()).await;
    let url = relay.url.clone();

    // The official client, as a user would run it.
    let out = tokio::process::Command::new(&python)
        .arg("-c")
        .arg(CLIENT_SCRIPT)
        .env("RELAY_URL", &url)
        .env("RELAY_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "client script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["ping"], true, "{r}");
    assert_eq!(r["version"], env!("CARGO_PKG_VERSION"), "{r}");
    assert_eq!(r["build"], "walrelay", "{r}");
    assert_eq!(r["health_status"], "pass", "{r}");
    assert_eq!(r["health_name"], "walrelay", "{r}");
    assert_eq!(
        r["health_checks"][0],
        serde_json::json!(["log", "pass"]),
        "{r}"
    );
    assert_eq!(r["health_checks"][1][0], "sink:influx", "{r}");
    assert_eq!(r["ready_status"], "ready", "{r}");
    assert!(r["ready_up"].as_str().unwrap().ends_with('s'), "{r}");
    assert_eq!(r["v2_write"], "ok", "{r}");
    assert_eq!(r["wrong_token_write"], 401, "{r}");

    // A 1.x writer: every precision, every way of presenting the token.
    // (variant, query, auth, line timestamp, expected ms timestamp)
    let basic = |user: &str, password: &str| {
        let raw = format!("{user}:{password}");
        format!("Basic {}", base64(raw.as_bytes()))
    };
    let cases: Vec<(&str, &str, Option<String>, i64, i64)> = vec![
        (
            "default",
            "db=telegraf",
            Some(format!("Token {TOKEN}")),
            1_764_000_000_100_000_000,
            1_764_000_000_100,
        ),
        (
            "n",
            "db=telegraf&precision=n",
            Some(basic("telegraf", TOKEN)),
            1_764_000_001_200_000_000,
            1_764_000_001_200,
        ),
        (
            "ns",
            "db=telegraf&precision=ns&rp=autogen&consistency=any",
            None,
            1_764_000_002_300_000_000,
            1_764_000_002_300,
        ),
        (
            "u",
            "db=telegraf&precision=u",
            Some(basic("", TOKEN)),
            1_764_000_003_400_000,
            1_764_000_003_400,
        ),
        (
            "ms",
            "db=telegraf&precision=ms&consistency=one",
            None,
            1_764_000_004_500,
            1_764_000_004_500,
        ),
        (
            "s",
            "db=telegraf&precision=s",
            None,
            1_764_000_005,
            1_764_000_005_000,
        ),
        (
            "m",
            "db=telegraf&precision=m",
            None,
            29_400_001,
            1_764_000_060_000,
        ),
        (
            "h",
            "db=telegraf&precision=h",
            None,
            490_001,
            1_764_003_600_000,
        ),
    ];
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut want = BTreeSet::new();
    for (i, (variant, query, auth, ts, ms)) in cases.iter().enumerate() {
        // Without a header, u/p in the query.
        let query = match auth {
            Some(_) => query.to_string(),
            None => format!("{query}&u=telegraf&p={TOKEN}"),
        };
        let mut req = client
            .post(format!("{url}/write?{query}"))
            .body(format!("compat_v1,variant={variant} v={i}i {ts}\n"));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(
            resp.status().as_u16(),
            204,
            "{variant}: {:?}",
            resp.text().await
        );
        assert_eq!(
            resp.headers()["x-influxdb-version"],
            env!("CARGO_PKG_VERSION")
        );
        want.insert((variant.to_string(), i as i64, *ms));
    }
    let before = appended(&url).await;
    // Wrong credentials: 401 in 1.x's shape, nothing appended.
    for (what, query, auth) in [
        ("wrong p", "db=telegraf&u=telegraf&p=nope".to_string(), None),
        ("no credentials", "db=telegraf".to_string(), None),
        (
            "wrong basic password",
            "db=telegraf".to_string(),
            Some(basic("telegraf", "nope")),
        ),
        (
            "wrong token",
            "db=telegraf".to_string(),
            Some("Token nope".to_string()),
        ),
    ] {
        let mut req = client
            .post(format!("{url}/write?{query}"))
            .body("compat_v1,variant=refused v=99i 1764000009000000000\n");
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{what}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "unauthorized: missing or wrong token"}),
            "{what}"
        );
    }
    assert_eq!(appended(&url).await, before, "a refused write appended");

    // Everything acknowledged arrives, with the right timestamps (VictoriaMetrics
    // keeps milliseconds), and nothing refused does.
    let got = wait_samples(&vm, "compat_v1_v", "variant", want.len()).await;
    assert_eq!(got, want);
    let v2 = wait_samples(&vm, "compat_v2_v", "via", 1).await;
    assert_eq!(
        v2,
        BTreeSet::from([("python".to_string(), 42, 1_764_000_000_500)])
    );

    relay.relay.stop().await.unwrap();
    vm.stop();
}

/// Standard base64 with padding, for Basic credentials.
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The official client against an https ingest URL signed by a private CA:
/// refused without the CA (certificate verification), and with
/// `ssl_ca_cert` its ping and a v2 write work as against InfluxDB.
const TLS_CLIENT_SCRIPT: &str = r#"
import json, os, warnings
warnings.simplefilter("ignore")
from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS

url, token, ca = os.environ["RELAY_URL"], os.environ["RELAY_TOKEN"], os.environ["RELAY_CA"]
out = {}
try:
    with InfluxDBClient(url=url, token=token, org="o", timeout=5_000) as c:
        c.write_api(write_options=SYNCHRONOUS).write(bucket="b", record="compat_tls v=0 1")
    out["without_ca"] = "accepted"
except Exception as e:
    out["without_ca"] = type(e).__name__ + ": " + str(e)
with InfluxDBClient(url=url, token=token, org="o", timeout=10_000, ssl_ca_cert=ca) as c:
    out["ping"] = c.ping()
    c.write_api(write_options=SYNCHRONOUS).write(
        bucket="b", record="compat_tls,via=python v=7 1764000000500", write_precision="ms")
    out["v2_write"] = "ok"
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_client_writes_over_https_with_a_private_ca() {
    let python = venv_python();
    let certs = common::certs::Certs::new();
    certs.ca("ca").leaf("ca", "server", "localhost", false);
    let dir = tempfile::TempDir::new().unwrap();
    let mut config = walrelay::config::Config::default();
    config.wal.dir = dir.path().join("wal");
    config.ingest.token = Some(walrelay::config::Secret::new(TOKEN));
    config.ingest.tls = Some(walrelay::ingest::tls::TlsConfig {
        cert_file: certs.path("server.crt"),
        key_file: certs.path("server.key"),
        client_ca_file: None,
    });
    let relay = ServedRelay::start(config).await;
    let url = relay.url.replace("http://", "https://");
    let out = tokio::process::Command::new(&python)
        .arg("-c")
        .arg(TLS_CLIENT_SCRIPT)
        .env("RELAY_URL", &url)
        .env("RELAY_TOKEN", TOKEN)
        .env("RELAY_CA", certs.path("ca.crt"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "client script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let without = r["without_ca"].as_str().unwrap();
    assert!(
        without.contains("CERTIFICATE_VERIFY_FAILED"),
        "an untrusted certificate is refused: {r}"
    );
    assert_eq!(r["ping"], true, "{r}");
    assert_eq!(r["v2_write"], "ok", "{r}");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&certs.read("ca.crt")).unwrap())
        .build()
        .unwrap();
    let status: serde_json::Value = client
        .get(format!("{url}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["log"]["appended_records"], 1, "{status}");
    drop(client);
    relay.stop().await.unwrap();
}
