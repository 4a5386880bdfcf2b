//! The worker's `/metrics`, `/healthz` and `/readyz` (spec 4.2), through the real `worker`
//! binary against real RabbitMQ and a MongoDB-protocol server: readiness once it consumes, the
//! counters moving as jobs complete, and 503 naming what is down when a dependency is
//! unreachable; the new series (`build_info`, `error_kind`, V3 write latency, queue depths);
//! the worker refusing to run without its endpoints; and the checked-in dashboard and alerts
//! (`k8s/monitoring/`) using only metrics a real worker exports.

mod common;
#[path = "common/env.rs"]
mod env;

use env::TestEnv;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vizhub_migrate::planner::Selection;

/// How long any wait for the worker may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(180);

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over a fresh connection: `(status, body)`, or `None` when nothing answers.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.ok()?;
    let raw = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Poll `GET path` until `done(status, body)`, failing after [`PATIENCE`]. Returns the body.
async fn poll(port: u16, path: &str, what: &str, done: impl Fn(u16, &str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    let mut last = None;
    loop {
        if let Some((status, body)) = get(port, path).await {
            if done(status, &body) {
                return body;
            }
            last = Some((status, body));
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last answer to {path}: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of one series (`name` or `name{labels}`) in a Prometheus text body.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn value(body: &str, series: &str) -> f64 {
    sample(body, series).unwrap_or_else(|| panic!("no {series} in\n{body}"))
}

fn jobs(body: &str, outcome: &str) -> f64 {
    value(
        body,
        &format!("vizhub_migrate_jobs_total{{outcome=\"{outcome}\"}}"),
    )
}

const OUTCOMES: [&str; 5] = ["migrated", "skipped", "failed", "conflict", "unchanged"];

fn jobs_ended(body: &str) -> f64 {
    OUTCOMES.iter().map(|o| jobs(body, o)).sum()
}

/// `--v2-reads-per-sec` of the workers these tests start.
const V2_BUDGET: u32 = 200;

/// The worker binary on this test's queues, its endpoints on `metrics_addr`, its logs (JSON) on
/// a pipe.
fn worker(env: &TestEnv, metrics_addr: &str, v3_uri: &str, amqp_uri: &str) -> Child {
    env.worker_command()
        .args(["--concurrency", "1", "--metrics-addr", metrics_addr])
        .env("V3_MONGO_URI", v3_uri)
        .env("AMQP_URI", amqp_uri)
        .env_remove("METRICS_ADDR")
        .env("V2_READS_PER_SEC", V2_BUDGET.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker binary")
}

/// Read the worker's JSON log lines on a thread (so the pipe never fills); the `metrics_addr`
/// field of its start-up line is sent back once seen.
fn watch_logs(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(addr) = v["fields"]["metrics_addr"].as_str() {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    rx
}

/// SIGTERM, then the exit status (within the drain deadline and a margin).
async fn terminate(mut child: Child) -> std::process::ExitStatus {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("worker did not exit within 60 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills the worker if the test fails before it stops it.
struct Reap(Option<Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_metrics_move_as_jobs_complete() {
    let env = TestEnv::new("metrics-run").await;
    let ids = env.load_fixtures(&[]).await;
    env.check_v2().await;
    let port = free_port();
    let mut child = worker(
        &env,
        &format!("127.0.0.1:{port}"),
        &env.v3_uri(),
        &env.amqp_uri,
    );
    let _logs = watch_logs(&mut child);
    let mut reap = Reap(Some(child));

    // Ready once it consumes and both databases answer.
    let ready = poll(port, "/readyz", "readiness", |s, _| s == 200).await;
    assert_eq!(ready, "broker: up\nv2: up\nv3: up\n");
    assert_eq!(get(port, "/healthz").await.map(|r| r.0), Some(200));

    let before = poll(port, "/metrics", "metrics", |s, _| s == 200).await;
    for o in OUTCOMES {
        assert_eq!(jobs(&before, o), 0.0, "{o} before any job");
    }
    assert_eq!(
        value(&before, "vizhub_migrate_job_duration_seconds_count"),
        0.0
    );
    // No job yet: V2's only reads are the readiness pings (one per few seconds of probing).
    let pings = value(&before, "vizhub_migrate_v2_reads_total");
    assert!(
        (1.0..=3.0).contains(&pings),
        "{pings} V2 reads before any job"
    );
    assert_eq!(value(&before, "vizhub_migrate_jobs_in_flight"), 0.0);
    assert_eq!(value(&before, "vizhub_migrate_broker_connected"), 1.0);

    let report = env.plan(Selection::All).await;
    assert_eq!(report.published as usize, ids.len());
    let n = ids.len() as f64;
    // Ended, and out of flight: a job's outcome is counted inside the job, its duration once
    // the job returns, and it leaves the in-flight gauge last (a scrape in between saw the
    // outcome without the duration).
    let after = poll(port, "/metrics", "every job to end", |s, body| {
        s == 200
            && sample(body, "vizhub_migrate_jobs_total{outcome=\"migrated\"}") >= Some(n)
            && sample(body, "vizhub_migrate_jobs_in_flight") == Some(0.0)
    })
    .await;

    // One job at a time, parents planned first: every job migrates its viz, once.
    assert_eq!(jobs(&after, "migrated"), n, "{after}");
    assert_eq!(jobs_ended(&after), n, "{after}");
    assert_eq!(
        value(&after, "vizhub_migrate_job_duration_seconds_count"),
        n
    );
    assert!(value(&after, "vizhub_migrate_job_duration_seconds_sum") > 0.0);
    assert!(
        value(
            &after,
            "vizhub_migrate_job_duration_seconds_bucket{le=\"+Inf\"}"
        ) == n,
        "{after}"
    );
    // Each job reads info, content and the op log at least.
    assert!(value(&after, "vizhub_migrate_v2_reads_total") >= 3.0 * n);
    assert!(sample(&after, "vizhub_migrate_v2_rate_limit_waits_total").is_some());
    assert!(sample(&after, "vizhub_migrate_v2_rate_limit_wait_seconds_total").is_some());
    assert_eq!(value(&after, "vizhub_migrate_jobs_in_flight"), 0.0);
    assert_eq!(value(&after, "vizhub_migrate_acks_lost_total"), 0.0);
    assert_eq!(value(&after, "vizhub_migrate_broker_reconnects_total"), 0.0);
    // No failure of any kind, and every kind is there (at 0) before its first failure.
    for kind in vizhub_migrate::outcome::ErrorKind::ALL {
        for family in ["dead_letters", "retries"] {
            let series = format!("vizhub_migrate_{family}_total{{error_kind=\"{kind}\"}}");
            assert_eq!(value(&after, &series), 0.0, "{series}");
        }
    }
    // Every migrated viz wrote ops, snapshots and commits, each write timed.
    for write in ["op_insert", "snapshot_insert", "commit_insert"] {
        let count = value(
            &after,
            &format!("vizhub_migrate_v3_write_duration_seconds_count{{write=\"{write}\"}}"),
        );
        assert!(count >= 1.0, "{write}: {count} timed writes\n{after}");
        let sum = value(
            &after,
            &format!("vizhub_migrate_v3_write_duration_seconds_sum{{write=\"{write}\"}}"),
        );
        assert!(sum > 0.0, "{write}: {sum} s");
    }
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        after.lines().any(|l| l.starts_with(&format!(
            "vizhub_migrate_build_info{{version=\"{version}\","
        )) && l.ends_with("} 1")),
        "no build_info for {version}\n{after}"
    );
    assert_eq!(
        value(&after, "vizhub_migrate_v2_read_budget_per_second"),
        f64::from(V2_BUDGET)
    );
    // No connection string (or any part of one) in a label or anywhere else.
    for secret in [
        "mongodb://",
        "amqp://",
        "guest",
        env.v2.name(),
        env.v3.name(),
    ] {
        assert!(!after.contains(secret), "{secret:?} in /metrics");
    }
    // The ledger agrees.
    for id in &ids {
        assert_eq!(
            env.record(id).await.outcome,
            vizhub_migrate::Outcome::Migrated
        );
    }

    // SIGTERM: the worker drains, stops serving and exits 0.
    let status = terminate(reap.0.take().unwrap()).await;
    assert!(status.success(), "{status:?}");
    assert_eq!(get(port, "/healthz").await, None, "endpoints stopped");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_an_unreachable_database_and_port_0_works() {
    let env = TestEnv::new("metrics-v3down").await;
    // V3 points at a port nothing listens on; the worker still starts (connections are lazy)
    // and consumes, but is not ready.
    let v3_down = format!("mongodb://127.0.0.1:{}/nowhere", free_port());
    let mut child = worker(&env, "127.0.0.1:0", &v3_down, &env.amqp_uri);
    let logs = watch_logs(&mut child);
    let reap = Reap(Some(child));
    let addr = tokio::task::spawn_blocking(move || logs.recv_timeout(PATIENCE))
        .await
        .unwrap()
        .expect("the worker logs the bound metrics_addr");
    let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    assert_ne!(port, 0);

    assert_eq!(get(port, "/healthz").await.map(|r| r.0), Some(200));
    // Once the broker session is up, only V3 is reported down.
    let body = poll(port, "/readyz", "a 503 naming only v3", |s, body| {
        s == 503 && body.starts_with("broker: up\nv2: up\nv3: down")
    })
    .await;
    assert!(
        !body.contains("nowhere") && !body.contains("mongodb://"),
        "{body}"
    );
    let metrics = poll(port, "/metrics", "metrics", |s, _| s == 200).await;
    assert_eq!(value(&metrics, "vizhub_migrate_broker_connected"), 1.0);
    drop(reap); // before its queues go
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_an_unreachable_broker_and_reconnects_are_counted() {
    let env = TestEnv::new("metrics-amqpdown").await;
    let amqp_down = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
    let port = free_port();
    let mut child = worker(
        &env,
        &format!("127.0.0.1:{port}"),
        &env.v3_uri(),
        &amqp_down,
    );
    let _logs = watch_logs(&mut child);
    let reap = Reap(Some(child));

    assert_eq!(
        poll(port, "/healthz", "liveness", |s, _| s == 200).await,
        "ok\n"
    );
    let body = poll(port, "/readyz", "a 503", |s, _| s == 503).await;
    assert_eq!(body, "broker: down (not connected)\nv2: up\nv3: up\n");
    // The worker keeps trying, and says so.
    poll(port, "/metrics", "a counted reconnect", |s, body| {
        s == 200 && sample(body, "vizhub_migrate_broker_reconnects_total") >= Some(1.0)
    })
    .await;
    drop(reap);
    env.cleanup().await;
}

/// `/readyz` does not spend live V2's read budget on every probe: V2's answer to a ping takes a
/// budget token and is reused for a few seconds, however many probes come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_pings_v2_once_per_few_seconds_within_the_budget() {
    use std::sync::Arc;
    use vizhub_migrate::metrics::Metrics;
    use vizhub_migrate::worker::Stats;
    let env = TestEnv::new("readyzbudget").await;
    let m = env.migrator();
    let endpoints = Metrics::new(Arc::new(Stats::default()), m.v2.clone(), env.v3.clone());
    let before = m.v2.counters().0;
    for _ in 0..20 {
        let r = endpoints.readiness().await;
        assert!(r.v2.is_ok(), "{:?}", r.v2);
    }
    assert_eq!(m.v2.counters().0 - before, 1, "20 probes, one V2 ping");
    env.cleanup().await;
}

/// A delivery that fails is counted under its kind, the same kind its dead letter's header
/// names; every other kind stays at 0; and the sampled DLQ depth shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_counted_under_its_error_kind() {
    use vizhub_migrate::broker::{self, Message};
    use vizhub_migrate::outcome::ErrorKind;
    let env = TestEnv::new("metrics-kind").await;
    let port = free_port();
    let mut child = worker(
        &env,
        &format!("127.0.0.1:{port}"),
        &env.v3_uri(),
        &env.amqp_uri,
    );
    let _logs = watch_logs(&mut child);
    let reap = Reap(Some(child));
    // Consuming: the topology is declared.
    poll(port, "/readyz", "readiness", |s, _| s == 200).await;

    let conn = broker::connect(&env.amqp_uri).await.unwrap();
    broker::Publisher::new(&conn)
        .await
        .unwrap()
        .publish(
            &env.topology.work(),
            Message {
                body: br#"{"not": "a job"}"#.to_vec(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let dead = |kind: ErrorKind| {
        format!(
            "vizhub_migrate_dead_letters_total{{error_kind=\"{}\"}}",
            kind.as_str()
        )
    };
    // The DLQ depth is sampled every 15 s: waiting for it also shows the sampling runs.
    let body = poll(
        port,
        "/metrics",
        "the dead letter, counted and sampled",
        |s, body| {
            s == 200
                && sample(body, &dead(ErrorKind::BadMessage)) == Some(1.0)
                && sample(body, "vizhub_migrate_queue_messages{queue=\"dead\"}") == Some(1.0)
        },
    )
    .await;
    for kind in ErrorKind::ALL {
        if kind != ErrorKind::BadMessage {
            assert_eq!(value(&body, &dead(kind)), 0.0, "{kind}");
        }
        let retries = format!("vizhub_migrate_retries_total{{error_kind=\"{kind}\"}}");
        assert_eq!(value(&body, &retries), 0.0, "{retries}");
    }
    assert_eq!(jobs(&body, "failed"), 1.0);
    assert_eq!(
        value(&body, "vizhub_migrate_queue_messages{queue=\"work\"}"),
        0.0
    );
    // The label and the dead letter's header are one name.
    let letters = vizhub_migrate::dlq::list(&conn, &env.topology)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].error_kind, ErrorKind::BadMessage.as_str());
    let _ = conn.close(200, "bye".into()).await;
    drop(reap);
    env.cleanup().await;
}

/// `--metrics-addr` taken: the worker exits 1 at once, naming the address, instead of running
/// without probes and metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_fails_when_it_cannot_bind_metrics_addr() {
    let env = TestEnv::new("metrics-bind").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = tokio::task::spawn_blocking({
        let mut c = env.worker_command();
        c.args(["--metrics-addr", &addr])
            .env_remove("METRICS_ADDR")
            .env("LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        move || c.output().expect("worker binary")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot serve /metrics") && stderr.contains(&addr),
        "{stderr}"
    );
    // It stopped before consuming: nothing declared its queues.
    let conn = vizhub_migrate::broker::connect(&env.amqp_uri)
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    assert!(
        vizhub_migrate::broker::queue_depth(&ch, &env.topology.work())
            .await
            .is_err(),
        "the worker declared its queues"
    );
    drop(taken);
    env.cleanup().await;
}

// ---- k8s/monitoring: the dashboard and the alerts --------------------------------------------

/// Metric-name prefixes the monitoring files may use without the worker exporting them:
/// kube-state-metrics, RabbitMQ's Prometheus plugin, and Prometheus' own `up`.
const EXTERNAL: [&str; 2] = ["kube_", "rabbitmq_"];

fn external(name: &str) -> bool {
    name == "up" || EXTERNAL.iter().any(|p| name.starts_with(p))
}

/// PromQL words that are not metric names: aggregations, keywords, literals.
const NOT_METRICS: [&str; 24] = [
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
];

/// The metric names of a PromQL expression: every identifier that is not a function call, a
/// keyword, a label name (inside `{…}` or after `by`/`without`/`on`/`ignoring`/`group_*`), a
/// string, a range or a number.
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    i += 1;
                }
                i += 1;
            }
            '(' if skip_group => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                i += 1;
                skip_group = false;
            }
            '$' => {
                // A Grafana variable ($__rate_interval outside a range, $datasource).
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                // A number or a duration (`0.99`, `1e3`, `30m`).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                let lower = word.to_ascii_lowercase();
                if matches!(
                    lower.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) {
                    skip_group = true;
                } else if next != Some(&'(') && !NOT_METRICS.contains(&lower.as_str()) {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Series names in a Prometheus text body, as rendered: counters with `_total`, histograms as
/// `_bucket`, `_sum` and `_count`.
fn series_names(body: &str) -> std::collections::BTreeSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// A YAML value of the subset the monitoring files use: block mappings and sequences, plain,
/// quoted and `|` scalars. Anything else (flow collections, anchors, tabs, a bad indent) is an
/// error, so a file this accepts is well-formed YAML that reads as this value.
fn parse_yaml(text: &str) -> Result<serde_json::Value, String> {
    let mut lines = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        if raw.contains('\t') {
            return Err(format!("line {}: a tab", n + 1));
        }
        let t = raw.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        lines.push((n + 1, raw.len() - t.len(), t.trim_end().to_string()));
    }
    let mut i = 0;
    let v = yaml_block(&mut lines, &mut i, 0)?;
    match lines.get(i) {
        None => Ok(v),
        Some((n, _, t)) => Err(format!("line {n}: unexpected {t:?}")),
    }
}

fn yaml_block(
    lines: &mut [(usize, usize, String)],
    i: &mut usize,
    indent: usize,
) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    if lines[*i].2.starts_with("- ") {
        let mut items = Vec::new();
        while *i < lines.len() && lines[*i].1 == indent && lines[*i].2.starts_with("- ") {
            // `- key: v` opens a mapping whose first line is `key: v`, two columns in.
            let rest = lines[*i].2[2..].to_string();
            if !rest.contains(": ") && !rest.ends_with(':') {
                let n = lines[*i].0;
                items.push(Value::String(
                    yaml_scalar(&rest).map_err(|e| format!("line {n}: {e}"))?,
                ));
                *i += 1;
                continue;
            }
            lines[*i].1 = indent + 2;
            lines[*i].2 = rest;
            items.push(yaml_block(lines, i, indent + 2)?);
        }
        return Ok(Value::Array(items));
    }
    let mut map = serde_json::Map::new();
    while *i < lines.len() && lines[*i].1 == indent {
        let (n, _, text) = lines[*i].clone();
        let (key, value) = match text.split_once(": ") {
            Some((k, v)) => (k, v.trim()),
            None => (
                text.strip_suffix(':')
                    .ok_or_else(|| format!("line {n}: not `key: value`"))?,
                "",
            ),
        };
        if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
        {
            return Err(format!("line {n}: key {key:?}"));
        }
        *i += 1;
        let deeper = |i: &usize, lines: &[(usize, usize, String)]| {
            lines.get(*i).map(|l| l.1).filter(|&d| d > indent)
        };
        let v = match value {
            "" => match deeper(i, lines) {
                Some(d) => yaml_block(lines, i, d)?,
                None => Value::Null,
            },
            "|" => {
                let mut block = Vec::new();
                while deeper(i, lines).is_some() {
                    block.push(lines[*i].2.clone());
                    *i += 1;
                }
                Value::String(block.join("\n") + "\n")
            }
            v => Value::String(yaml_scalar(v).map_err(|e| format!("line {n}: {e}"))?),
        };
        if map.insert(key.to_string(), v).is_some() {
            return Err(format!("line {n}: duplicate key {key:?}"));
        }
    }
    match lines.get(*i) {
        Some((n, d, _)) if *d > indent => Err(format!("line {n}: unexpected indent")),
        _ => Ok(Value::Object(map)),
    }
}

fn yaml_scalar(v: &str) -> Result<String, String> {
    if let Some(inner) = v.strip_prefix('"') {
        let inner = inner.strip_suffix('"').ok_or("unterminated string")?;
        // JSON's escapes are a subset of YAML's double-quoted ones.
        return serde_json::from_str(&format!("\"{inner}\"")).map_err(|e| e.to_string());
    }
    if let Some(inner) = v.strip_prefix('\'') {
        let inner = inner.strip_suffix('\'').ok_or("unterminated string")?;
        return Ok(inner.replace("''", "'"));
    }
    if v.starts_with(['{', '[', '&', '*', '!', '|', '>', '%', '@', '`'])
        || v.contains(" #")
        || v.contains(": ")
    {
        return Err(format!(
            "{v:?} is outside the plain scalars this reader accepts"
        ));
    }
    Ok(v.to_string())
}

fn monitoring_file(name: &str) -> String {
    let path = format!("{}/k8s/monitoring/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `expr` of the dashboard (any depth: panels, rows, variables).
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// The exprs of the PrometheusRule, after checking each alert carries what on-call needs.
fn rule_exprs(rule: &serde_json::Value) -> Vec<String> {
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    let mut alerts = Vec::new();
    let mut exprs = Vec::new();
    for group in rule["spec"]["groups"].as_array().expect("spec.groups") {
        for r in group["rules"].as_array().expect("rules") {
            let name = r["alert"].as_str().expect("alert name");
            for field in ["summary", "description"] {
                let text = r["annotations"][field].as_str().unwrap_or("");
                assert!(!text.is_empty(), "{name}: no {field}");
            }
            let runbook = r["annotations"]["runbook_url"].as_str().unwrap_or("");
            assert!(
                runbook.ends_with("README.md#metrics-dashboard-and-alerts"),
                "{name}: runbook_url {runbook:?}"
            );
            assert!(r["labels"]["severity"].is_string(), "{name}: no severity");
            assert!(r["for"].is_string(), "{name}: no `for`");
            alerts.push(name.to_string());
            exprs.push(r["expr"].as_str().expect("expr").to_string());
        }
    }
    alerts.sort();
    assert_eq!(
        alerts,
        [
            "VizhubMigrateDeadLettersGrowing",
            "VizhubMigrateNoProgress",
            "VizhubMigrateV2ReadBudgetSaturated",
            "VizhubMigrateWorkersNotReady",
        ]
    );
    exprs
}

#[test]
fn promql_names_and_the_yaml_subset() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le, write) (rate(a_bucket{write=\"x y\"}[$__rate_interval]))) \
             / on(job) group_left(version) b offset 5m > bool 0 and kube_x - up unless sum without (q) (c:rec)"
        ),
        ["a_bucket", "b", "kube_x", "up", "c:rec"]
    );
    let v = parse_yaml("a: 1\nb:\n  - c: \"x: {{ $y }}\"\n    d: |\n      l1\n      l2\n  - e\n")
        .unwrap();
    assert_eq!(
        v,
        serde_json::json!({"a": "1", "b": [{"c": "x: {{ $y }}", "d": "l1\nl2\n"}, "e"]})
    );
    for bad in [
        "a: 1\n  b: 2\n",
        "a: {b: 1}\n",
        "a:\n\t- b\n",
        "a: 1\na: 2\n",
        "x\n",
    ] {
        assert!(parse_yaml(bad).is_err(), "{bad:?} parsed");
    }
}

/// The checked-in dashboard and alerts parse, and use only metrics a real worker exports (or
/// the allowlisted external ones): a renamed metric breaks this test, not a dashboard in
/// production. The worker's families all exist from its start (zeros, `-1` depths), so one
/// scrape of an idle worker holds every name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_files_use_only_metrics_the_worker_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&monitoring_file("grafana-dashboard.json"))
            .expect("grafana-dashboard.json is JSON");
    assert!(dashboard["panels"]
        .as_array()
        .is_some_and(|p| !p.is_empty()));
    let rule = parse_yaml(&monitoring_file("prometheusrule.yaml"))
        .unwrap_or_else(|e| panic!("prometheusrule.yaml: {e}"));
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    let dashboard_count = exprs.len();
    assert!(dashboard_count >= 10, "{dashboard_count} dashboard queries");
    exprs.extend(rule_exprs(&rule));

    let env = TestEnv::new("metrics-monitoring").await;
    let port = free_port();
    let mut child = worker(
        &env,
        &format!("127.0.0.1:{port}"),
        &env.v3_uri(),
        &env.amqp_uri,
    );
    let _logs = watch_logs(&mut child);
    let reap = Reap(Some(child));
    poll(port, "/readyz", "readiness", |s, _| s == 200).await;
    let body = poll(port, "/metrics", "metrics", |s, _| s == 200).await;
    let exported = series_names(&body);

    let mut missing = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric in {expr:?}");
        for name in names {
            if !external(&name) && !exported.contains(&name) {
                missing.push(format!("{name} (in {expr})"));
            }
            used.insert(name);
        }
    }
    assert!(missing.is_empty(), "not in /metrics: {missing:#?}\n{body}");
    // What the issue asks them to show is there.
    for name in [
        "vizhub_migrate_jobs_total",
        "vizhub_migrate_dead_letters_total",
        "vizhub_migrate_retries_total",
        "vizhub_migrate_v2_reads_total",
        "vizhub_migrate_v2_read_budget_per_second",
        "vizhub_migrate_v3_write_duration_seconds_bucket",
        "vizhub_migrate_jobs_in_flight",
        "vizhub_migrate_queue_messages",
        "kube_deployment_status_replicas_ready",
    ] {
        assert!(used.contains(name), "the monitoring files never use {name}");
    }
    drop(reap);
    env.cleanup().await;
}
