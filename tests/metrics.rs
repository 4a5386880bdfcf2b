//! The worker's `/metrics`, `/healthz` and `/readyz` (spec 4.2), through the real `worker`
//! binary against real RabbitMQ and a MongoDB-protocol server: readiness once it consumes, the
//! counters moving as jobs complete, and 503 naming what is down when a dependency is
//! unreachable.

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

/// The worker binary on this test's queues, its endpoints on `metrics_addr`, its logs (JSON) on
/// a pipe.
fn worker(env: &TestEnv, metrics_addr: &str, v3_uri: &str, amqp_uri: &str) -> Child {
    env.worker_command()
        .args(["--concurrency", "1", "--metrics-addr", metrics_addr])
        .env("V3_MONGO_URI", v3_uri)
        .env("AMQP_URI", amqp_uri)
        .env_remove("METRICS_ADDR")
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
    assert_eq!(value(&after, "vizhub_migrate_retries_total"), 0.0);
    assert_eq!(value(&after, "vizhub_migrate_dead_letters_total"), 0.0);
    assert_eq!(value(&after, "vizhub_migrate_acks_lost_total"), 0.0);
    assert_eq!(value(&after, "vizhub_migrate_broker_reconnects_total"), 0.0);
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
