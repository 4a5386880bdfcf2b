//! The worker's HTTP endpoints (spec 4.2): `/metrics` (Prometheus text format), `/healthz` and
//! `/readyz`. This module owns the metric names, their help texts and the readiness checks; it
//! keeps no counters of its own: every value is read at scrape time from where it is counted,
//! the worker's [`Stats`], the V2 [`Reader`] and the V3 store's [`WriteTimes`].
//! `k8s/monitoring/` (dashboard, alerts) uses these names; `tests/metrics.rs` checks it does.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `vizhub_migrate_jobs_total` | counter | `outcome`: `migrated`, `skipped`, `failed`, `conflict`, `unchanged` |
//! | `vizhub_migrate_job_duration_seconds` | histogram | — |
//! | `vizhub_migrate_jobs_in_flight` | gauge | — |
//! | `vizhub_migrate_retries_total` | counter | `error_kind` (below) |
//! | `vizhub_migrate_dead_letters_total` | counter | `error_kind` (below) |
//! | `vizhub_migrate_acks_lost_total` | counter | — |
//! | `vizhub_migrate_broker_reconnects_total` | counter | — |
//! | `vizhub_migrate_broker_connected` | gauge (0/1) | — |
//! | `vizhub_migrate_v2_reads_total` | counter | — |
//! | `vizhub_migrate_v2_rate_limit_waits_total` | counter | — |
//! | `vizhub_migrate_v2_rate_limit_wait_seconds_total` | counter | — |
//! | `vizhub_migrate_v2_read_budget_per_second` | gauge | — |
//! | `vizhub_migrate_v3_write_duration_seconds` | histogram | `write`: `op_insert`, `snapshot_insert`, `snapshot_replace`, `commit_insert` |
//! | `vizhub_migrate_queue_messages` | gauge (-1 until sampled) | `queue`: `work`, `retry`, `dead` |
//! | `vizhub_migrate_build_info` | gauge (1) | `version`, `profile` (`debug`/`release`), `os`, `arch` |
//!
//! `error_kind` is one of [`crate::outcome::ErrorKind::ALL`]: `tombstone`, `no_id`, `not_visualization`,
//! `partial_doc`, `no_files`, `content_missing`, `content_tombstone`, `content_too_large`,
//! `id_mismatch`, `owner_missing`, `owner_deleted_in_v3`, `malformed`, `bad_content`, `v2_read`, `v3_write`,
//! `not_found`, `parent`, `chain`, `raced`, `bad_message`, `crash_loop`, `panic` — every one
//! present from the start (at 0), so `rate()` and `increase()` see a job's first failure.
//!
//! Labels only ever take the fixed values above: no URI, host or id ends up in a label.
//!
//! `/healthz` answers 200 while the process serves. `/readyz` answers 200 only when the worker is
//! consuming from the broker and both MongoDB databases answer a `ping` within
//! [`PING_TIMEOUT`], checked anew on every request; otherwise 503 with one line per check saying
//! which is down.

use crate::v2::reader::Reader;
use crate::v3::store::WriteTimes;
use crate::worker::stats::{KindCounts, QueueRole, Stats};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use mongodb::bson::doc;
use mongodb::Database;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Prefix of every metric name.
pub const PREFIX: &str = "vizhub_migrate";

/// How long `/readyz` waits for each database's `ping`.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// How long `/readyz` reuses V2's answer to a `ping`: probes come every few seconds from every
/// pod, and V2 is live production, read under a budget.
pub const V2_PING_TTL: Duration = Duration::from_secs(5);

/// What the endpoints read: the worker's counters, and the databases `/readyz` pings.
pub struct Metrics {
    registry: Registry,
    stats: Arc<Stats>,
    v2: Reader,
    v3: Database,
    ping_timeout: Duration,
    /// V2's last answer to a `ping` and when it came. Held while pinging, so concurrent probes
    /// share one ping.
    v2_answer: tokio::sync::Mutex<Option<(std::time::Instant, Result<(), String>)>>,
}

impl Metrics {
    /// `v2`: the worker's reader (a clone shares its counters); `v3`: the V3 database.
    /// [`Metrics::with_v3_writes`] adds the V3 write latencies.
    pub fn new(stats: Arc<Stats>, v2: Reader, v3: Database) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        // (The registry ends this help text with a period; the collector's have theirs.)
        registry.register_with_unit(
            "job_duration",
            "Time of each handled delivery, from receipt to its ack or its move to a retry queue or the DLQ",
            Unit::Seconds,
            stats.job_seconds.clone(),
        );
        registry.register_collector(Box::new(Counters {
            stats: stats.clone(),
            v2: v2.clone(),
        }));
        Metrics {
            registry,
            stats,
            v2,
            v3,
            ping_timeout: PING_TIMEOUT,
            v2_answer: tokio::sync::Mutex::new(None),
        }
    }

    /// Export the V3 write latencies of the worker's store (`Store::write_times`).
    pub fn with_v3_writes(mut self, times: WriteTimes) -> Self {
        self.registry.register_collector(Box::new(V3Writes(times)));
        self
    }

    /// Export this process's V2 read budget (`--v2-reads-per-sec`), so dashboards can show
    /// `rate(v2_reads_total)` against it.
    pub fn with_v2_budget(mut self, reads_per_sec: u32) -> Self {
        let budget = prometheus_client::metrics::gauge::Gauge::<i64>::default();
        budget.set(i64::from(reads_per_sec));
        self.registry.register(
            "v2_read_budget_per_second",
            "This process's V2 read budget: queries per second the rate limiter lets through",
            budget,
        );
        self
    }

    /// How long each `ping` of `/readyz` may take (default [`PING_TIMEOUT`]).
    pub fn with_ping_timeout(mut self, timeout: Duration) -> Self {
        self.ping_timeout = timeout;
        self
    }

    /// The `/metrics` body (Prometheus text format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Check the broker session and ping both databases (concurrently).
    pub async fn readiness(&self) -> Readiness {
        let broker = if self.stats.broker_connected.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("not connected".to_string())
        };
        let t = self.ping_timeout;
        let (v2, v3) = tokio::join!(
            self.v2_readiness(),
            ping("v3", t, async {
                self.v3.run_command(doc! {"ping": 1}).await.map(|_| ())
            }),
        );
        Readiness { broker, v2, v3 }
    }

    /// V2's answer to a `ping` (it takes a read-budget token), reused for [`V2_PING_TTL`].
    async fn v2_readiness(&self) -> Result<(), String> {
        let mut last = self.v2_answer.lock().await;
        if let Some((at, answer)) = last.as_ref() {
            if at.elapsed() < V2_PING_TTL {
                return answer.clone();
            }
        }
        let answer = ping("v2", self.ping_timeout, self.v2.ping()).await;
        *last = Some((std::time::Instant::now(), answer.clone()));
        answer
    }
}

async fn ping(
    what: &str,
    timeout: Duration,
    ping: impl std::future::Future<Output = mongodb::error::Result<()>>,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, ping).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            // The driver's message can be long (it lists the servers it tried): log it, and
            // answer with its kind only.
            tracing::warn!(database = what, error = %e, "readiness: ping failed");
            Err(format!("ping failed ({})", error_kind(&e)))
        }
        Err(_) => Err(format!(
            "no answer to ping within {}s",
            timeout.as_secs_f64()
        )),
    }
}

fn error_kind(e: &mongodb::error::Error) -> &'static str {
    use mongodb::error::ErrorKind as K;
    match *e.kind {
        K::ServerSelection { .. } => "no server available",
        K::Authentication { .. } => "authentication",
        K::Io(_) | K::ConnectionPoolCleared { .. } => "network",
        K::Command(_) => "command error",
        _ => "error",
    }
}

/// The result of the `/readyz` checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub broker: Result<(), String>,
    pub v2: Result<(), String>,
    pub v3: Result<(), String>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.broker.is_ok() && self.v2.is_ok() && self.v3.is_ok()
    }

    /// One line per check: `broker: up`, `v3: down (…)`.
    pub fn body(&self) -> String {
        [("broker", &self.broker), ("v2", &self.v2), ("v3", &self.v3)]
            .into_iter()
            .map(|(name, r)| match r {
                Ok(()) => format!("{name}: up\n"),
                Err(why) => format!("{name}: down ({why})\n"),
            })
            .collect()
    }
}

/// Encodes [`Stats`] and the reader's counters on each scrape.
struct Counters {
    stats: Arc<Stats>,
    v2: Reader,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters")
            .field("stats", &self.stats)
            .finish()
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: impl prometheus_client::encoding::EncodeCounterValue,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

/// A counter family with one series per [`ErrorKind`] (zeros included).
fn by_kind(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    counts: &KindCounts,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (kind, n) in counts.iter() {
        let labels = [("error_kind", kind.as_str())];
        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The `build_info` labels: what the binary knows of itself without a build script.
pub fn build_labels() -> [(&'static str, &'static str); 4] {
    [
        ("version", env!("CARGO_PKG_VERSION")),
        (
            "profile",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        ),
        ("os", std::env::consts::OS),
        ("arch", std::env::consts::ARCH),
    ]
}

/// Encodes the V3 write latency histograms on each scrape.
#[derive(Debug)]
struct V3Writes(WriteTimes);

impl Collector for V3Writes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "v3_write_duration",
            "Time of each V3 write command until the server answered, by what it writes.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (kind, histogram) in self.0.iter() {
            let labels = [("write", kind.as_str())];
            histogram.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Collector for Counters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_labelled(&mut encoder)?;
        self.encode_worker(&mut encoder)?;
        self.encode_v2(&mut encoder)
    }
}

impl Counters {
    /// The labelled families: the build, the queues' depths, the jobs by outcome.
    fn encode_labelled(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        {
            let mut family = encoder.encode_descriptor(
                "build_info",
                "1, labelled with the worker's version and build.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(1).encode(family.encode_family(&build_labels())?)?;
        }
        {
            let mut family = encoder.encode_descriptor(
                "queue_messages",
                "Messages in the work queue, the retry queues (summed) and the DLQ, sampled every 15 s while connected; -1 until the first sample.",
                None,
                MetricType::Gauge,
            )?;
            for role in QueueRole::ALL {
                let labels = [("queue", role.as_str())];
                ConstGauge::new(s.queue_messages.get(role))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "jobs",
                "Jobs ended, by outcome (spec 3.5; failed = dead-lettered).",
                None,
                MetricType::Counter,
            )?;
            for (outcome, n) in s.outcomes.iter() {
                let labels = [("outcome", outcome.as_str())];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    /// The worker's own counts: jobs in flight, retries and dead letters by kind, the broker.
    fn encode_worker(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            e,
            "jobs_in_flight",
            "Jobs being handled now.",
            load(&s.in_flight) as i64,
        )?;
        by_kind(
            e,
            "retries",
            "Jobs sent to a delayed-retry queue after a transient failure, by error kind.",
            &s.retried_by_kind,
        )?;
        by_kind(
            e,
            "dead_letters",
            "Jobs published to the dead-letter queue, by error kind.",
            &s.dead_lettered_by_kind,
        )?;
        counter(
            e,
            "acks_lost",
            "Acks lost because the broker channel reset since the delivery (the job is redelivered).",
            None,
            load(&s.acks_lost),
        )?;
        counter(
            e,
            "broker_reconnects",
            "Connection attempts to the broker after the first (each follows a lost or failed session).",
            None,
            load(&s.reconnects),
        )?;
        gauge(
            e,
            "broker_connected",
            "1 while the worker has a broker session and is consuming.",
            i64::from(s.broker_connected.load(Ordering::Relaxed)),
        )
    }

    /// V2's reads and the rate limiter's waits.
    fn encode_v2(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (reads, waits) = self.v2.counters();
        counter(e, "v2_reads", "Queries issued to V2 MongoDB.", None, reads)?;
        counter(
            e,
            "v2_rate_limit_waits",
            "V2 queries that had to wait for the per-process rate limiter.",
            None,
            waits,
        )?;
        counter(
            e,
            "v2_rate_limit_wait",
            "Time V2 queries spent waiting for the per-process rate limiter.",
            Some(&Unit::Seconds),
            self.v2.wait_time().as_secs_f64(),
        )?;
        Ok(())
    }
}

/// The router of the three endpoints.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz_handler))
        .with_state(metrics)
}

async fn metrics_handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        m.render(),
    )
}

async fn readyz_handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let r = m.readiness().await;
    let status = if r.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, r.body())
}

/// The endpoints, served on a task of the current runtime until [`Server::stop`].
pub struct Server {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Bind `addr` (port 0 picks a free port: see [`Server::local_addr`]) and serve. Logs the
    /// bound address as the field `metrics_addr`.
    pub async fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<Server> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router(metrics))
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
        tracing::info!(metrics_addr = %addr, "serving /metrics, /healthz, /readyz");
        Ok(Server { addr, stop, task })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop serving: requests under way get a moment to finish, then the server is dropped.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(PING_TIMEOUT + Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_body_names_what_is_down() {
        let r = Readiness {
            broker: Ok(()),
            v2: Ok(()),
            v3: Err("no answer to ping within 2s".into()),
        };
        assert!(!r.is_ready());
        assert_eq!(
            r.body(),
            "broker: up\nv2: up\nv3: down (no answer to ping within 2s)\n"
        );
        let up = Readiness {
            broker: Ok(()),
            v2: Ok(()),
            v3: Ok(()),
        };
        assert!(up.is_ready());
    }

    #[tokio::test]
    async fn renders_every_metric_from_stats() {
        // A database handle connects lazily: nothing here talks to a server.
        let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:1/x")
            .await
            .unwrap();
        let db = client.database("x");
        let stats = Arc::new(Stats::default());
        stats.outcomes.add(crate::Outcome::Migrated);
        stats.outcomes.add(crate::Outcome::Migrated);
        stats.outcomes.add(crate::Outcome::Failed);
        stats.in_flight.store(3, Ordering::Relaxed);
        stats.job_seconds.observe(0.2);
        stats
            .dead_lettered_by_kind
            .add(crate::outcome::ErrorKind::ContentTooLarge);
        stats.retried_by_kind.add(crate::outcome::ErrorKind::V2Read);
        let reader = Reader::new(db.clone(), std::num::NonZeroU32::new(10).unwrap());
        let writes = WriteTimes::default();
        writes
            .of(crate::v3::store::WriteKind::SnapshotReplace)
            .observe(0.003);
        let m = Metrics::new(stats, reader, db)
            .with_v3_writes(writes)
            .with_v2_budget(40);
        let text = m.render();
        for line in [
            "vizhub_migrate_jobs_total{outcome=\"migrated\"} 2",
            "vizhub_migrate_jobs_total{outcome=\"failed\"} 1",
            "vizhub_migrate_jobs_total{outcome=\"unchanged\"} 0",
            "vizhub_migrate_jobs_in_flight 3",
            "vizhub_migrate_job_duration_seconds_count 1",
            "vizhub_migrate_v2_reads_total 0",
            "vizhub_migrate_v2_rate_limit_wait_seconds_total 0.0",
            "vizhub_migrate_broker_connected 0",
            "# TYPE vizhub_migrate_job_duration_seconds histogram",
            "vizhub_migrate_dead_letters_total{error_kind=\"content_too_large\"} 1",
            "vizhub_migrate_dead_letters_total{error_kind=\"panic\"} 0",
            "vizhub_migrate_retries_total{error_kind=\"v2_read\"} 1",
            "vizhub_migrate_retries_total{error_kind=\"raced\"} 0",
            "vizhub_migrate_v3_write_duration_seconds_count{write=\"snapshot_replace\"} 1",
            "vizhub_migrate_v3_write_duration_seconds_count{write=\"op_insert\"} 0",
            "vizhub_migrate_v2_read_budget_per_second 40",
            "vizhub_migrate_queue_messages{queue=\"work\"} -1",
            "# TYPE vizhub_migrate_v3_write_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.lines().any(|l| l.starts_with(&format!(
                "vizhub_migrate_build_info{{version=\"{version}\",profile=\"debug\","
            )) && l.ends_with("} 1")),
            "{text}"
        );
    }
}
