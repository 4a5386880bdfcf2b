//! The worker loop: consumes jobs, runs [`Migrator::migrate`] for each (at most `concurrency`
//! at once, which is also the per-consumer prefetch), and decides what happens to the delivery:
//!
//! - done (any recorded outcome) → ack;
//! - transient failure → publish to the next delayed-retry queue (confirmed), then ack;
//! - permanent failure, retries exhausted, or a panic → ledger `failed`, publish to the DLQ with
//!   the reason headers (confirmed), then ack.
//!
//! Publishing always comes before the ack, so a crash in between duplicates a message (harmless:
//! jobs are idempotent) but never loses one. An ack that lapin refuses because the channel died
//! since the delivery is logged and counted; the broker redelivers that job.
//!
//! The loop reconnects after a broker restart, stops consuming on shutdown and gives in-flight
//! jobs until the drain deadline (unfinished ones go back to the queue when the connection
//! closes), and with `until_idle` exits once the work and retry queues stayed empty with nothing
//! in flight for that long.
//!
//! Everything it counts lives in [`Stats`], the one place of the worker's counters (failures by
//! [`ErrorKind`], and its queues' depths sampled every [`QUEUE_SAMPLE_EVERY`] so alerts can tell
//! "idle" from "stuck"); the `/metrics` endpoint ([`crate::metrics`]) only reads them.

use crate::broker::{self, BrokerError, HeaderValue, Publisher, Topology};
use crate::ids;
use crate::migrate::{JobError, Migrator};
use crate::outcome::ErrorKind;
use crate::planner::Job;
use crate::{Disposition, Outcome};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Header names on retried and dead-lettered jobs.
pub mod headers {
    pub const ATTEMPTS: &str = "x-vizhub-attempts";
    pub const ERROR_KIND: &str = "x-vizhub-error-kind";
    pub const ERROR_MESSAGE: &str = "x-vizhub-error-message";
    pub const FINGERPRINT: &str = "x-vizhub-fingerprint";
    pub const FIRST_FAILURE: &str = "x-vizhub-first-failure";
    pub const LAST_FAILURE: &str = "x-vizhub-last-failure";
    pub const VIZ: &str = "x-vizhub-viz";
}

#[derive(Debug, Clone)]
pub struct Options {
    pub concurrency: u16,
    pub until_idle: Option<Duration>,
    pub drain_deadline: Duration,
}

/// Counters of a worker run: the one place they are kept ([`crate::metrics`] exports them).
#[derive(Debug)]
pub struct Stats {
    /// Jobs that ended in a recorded outcome other than `failed` (and were acked).
    pub done: AtomicU64,
    /// Jobs sent to a delayed-retry queue.
    pub retried: AtomicU64,
    /// Jobs published to the dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// `retried`, by the kind of error that sent them there.
    pub retried_by_kind: KindCounts,
    /// `dead_lettered`, by the kind of error that sent them there.
    pub dead_lettered_by_kind: KindCounts,
    /// Messages in the work queue, the retry queues (together) and the DLQ, as last sampled
    /// (every [`QUEUE_SAMPLE_EVERY`] while connected; -1 until the first sample).
    pub queue_messages: QueueDepths,
    /// Acks refused or failed because the channel died since the delivery (redelivered later).
    pub acks_lost: AtomicU64,
    /// Jobs being handled now.
    pub in_flight: AtomicU64,
    /// Migrations running now (a job's own task), and the most that ever ran at once: never
    /// more than `--concurrency`, reconnects included.
    pub migrations_running: AtomicU64,
    pub max_migrations_running: AtomicU64,
    /// Moves to a retry queue or the DLQ whose publish failed (the job was requeued instead).
    pub moves_failed: AtomicU64,
    /// Ended jobs by outcome (spec 3.5): `done` by outcome, plus the dead-lettered as `failed`.
    pub outcomes: OutcomeCounts,
    /// Connection attempts to the broker after the first (each follows a lost or failed session).
    pub reconnects: AtomicU64,
    /// True while the worker has a broker session and is consuming.
    pub broker_connected: AtomicBool,
    /// Seconds each delivery took, from receipt to its ack (or its move to a retry queue or the
    /// DLQ). Retried jobs count once per attempt.
    pub job_seconds: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            done: AtomicU64::default(),
            retried: AtomicU64::default(),
            dead_lettered: AtomicU64::default(),
            retried_by_kind: KindCounts::default(),
            dead_lettered_by_kind: KindCounts::default(),
            queue_messages: QueueDepths::default(),
            acks_lost: AtomicU64::default(),
            in_flight: AtomicU64::default(),
            migrations_running: AtomicU64::default(),
            max_migrations_running: AtomicU64::default(),
            moves_failed: AtomicU64::default(),
            outcomes: OutcomeCounts::default(),
            reconnects: AtomicU64::default(),
            broker_connected: AtomicBool::default(),
            // 5 ms … ~164 s: a small viz takes milliseconds, one with a long op log minutes.
            job_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
        }
    }
}

impl Stats {
    /// A job ended with `outcome` (recorded in the ledger, or dead-lettered as `failed`).
    fn ended(&self, outcome: Outcome) {
        self.outcomes.add(outcome);
        if outcome != Outcome::Failed {
            self.done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Ended jobs, one counter per [`Outcome`].
#[derive(Debug, Default)]
pub struct OutcomeCounts([AtomicU64; 5]);

impl OutcomeCounts {
    /// Every outcome, in the order [`OutcomeCounts::iter`] reports them.
    pub const ALL: [Outcome; 5] = [
        Outcome::Migrated,
        Outcome::Skipped,
        Outcome::Failed,
        Outcome::Conflict,
        Outcome::Unchanged,
    ];

    fn slot(outcome: Outcome) -> usize {
        match outcome {
            Outcome::Migrated => 0,
            Outcome::Skipped => 1,
            Outcome::Failed => 2,
            Outcome::Conflict => 3,
            Outcome::Unchanged => 4,
        }
    }

    pub fn add(&self, outcome: Outcome) {
        self.0[Self::slot(outcome)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, outcome: Outcome) -> u64 {
        self.0[Self::slot(outcome)].load(Ordering::Relaxed)
    }

    /// `(outcome, count)` for every outcome, zeros included.
    pub fn iter(&self) -> impl Iterator<Item = (Outcome, u64)> + '_ {
        Self::ALL.into_iter().map(|o| (o, self.get(o)))
    }
}

/// Jobs counted by [`ErrorKind`], one counter per kind.
#[derive(Debug)]
pub struct KindCounts([AtomicU64; ErrorKind::ALL.len()]);

impl Default for KindCounts {
    fn default() -> Self {
        KindCounts(std::array::from_fn(|_| AtomicU64::default()))
    }
}

impl KindCounts {
    pub fn add(&self, kind: ErrorKind) {
        self.0[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0[kind.index()].load(Ordering::Relaxed)
    }

    /// `(kind, count)` for every kind, zeros included.
    pub fn iter(&self) -> impl Iterator<Item = (ErrorKind, u64)> + '_ {
        ErrorKind::ALL.into_iter().map(|k| (k, self.get(k)))
    }
}

/// How often a connected worker samples its queues' depths (one passive declare per queue).
pub const QUEUE_SAMPLE_EVERY: Duration = Duration::from_secs(15);

/// The queues a worker samples, by role: the `queue` label of `vizhub_migrate_queue_messages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRole {
    Work,
    /// Every delayed-retry queue, summed.
    Retry,
    Dead,
}

impl QueueRole {
    pub const ALL: [QueueRole; 3] = [QueueRole::Work, QueueRole::Retry, QueueRole::Dead];

    pub fn as_str(self) -> &'static str {
        match self {
            QueueRole::Work => "work",
            QueueRole::Retry => "retry",
            QueueRole::Dead => "dead",
        }
    }
}

/// Last sampled depth per [`QueueRole`]; -1: not sampled yet.
#[derive(Debug)]
pub struct QueueDepths([AtomicI64; 3]);

impl Default for QueueDepths {
    fn default() -> Self {
        QueueDepths(std::array::from_fn(|_| AtomicI64::new(-1)))
    }
}

impl QueueDepths {
    pub fn get(&self, role: QueueRole) -> i64 {
        self.0[role as usize].load(Ordering::Relaxed)
    }

    fn set(&self, role: QueueRole, messages: u64) {
        let n = i64::try_from(messages).unwrap_or(i64::MAX);
        self.0[role as usize].store(n, Ordering::Relaxed);
    }
}

/// Sample the depths of this worker's queues on `probe` (a channel of its own: a failed passive
/// declare closes the channel it ran on, and the consumer's must survive).
async fn sample_queues(
    probe: &lapin::Channel,
    topology: &Topology,
    retry_queues: &[String],
    depths: &QueueDepths,
) -> Result<(), BrokerError> {
    let work = broker::queue_depth(probe, &topology.work()).await?.0;
    let mut retry = 0u64;
    for q in retry_queues {
        retry += u64::from(broker::queue_depth(probe, q).await?.0);
    }
    let dead = broker::queue_depth(probe, &topology.dead()).await?.0;
    depths.set(QueueRole::Work, work.into());
    depths.set(QueueRole::Retry, retry);
    depths.set(QueueRole::Dead, dead.into());
    Ok(())
}

/// Counts a job in flight for as long as it lives, including when its task is aborted.
struct InFlight(Arc<Stats>);

impl InFlight {
    fn new(stats: Arc<Stats>) -> Self {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(stats)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Marks the broker session up for as long as it lives.
struct Connected<'a>(&'a AtomicBool);

impl<'a> Connected<'a> {
    fn new(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::Relaxed);
        Connected(flag)
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Groups failures that have the same cause: the error kind plus its message with ids and
/// numbers blanked out.
pub fn fingerprint(kind: &str, message: &str, viz: &str) -> String {
    let generic: String = message
        .replace(viz, "<viz>")
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    format!(
        "{kind}-{}",
        &ids::fingerprint(&serde_json::json!([kind, generic]))[..8]
    )
}

/// Run until `shutdown` resolves (or, with `until_idle`, until idle). Returns when drained.
pub async fn run(
    migrator: Migrator,
    amqp_uri: &str,
    topology: &Topology,
    opts: &Options,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BrokerError> {
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(250);
    loop {
        let session = consume(&migrator, amqp_uri, topology, opts, &stats, &mut shutdown).await;
        match session {
            Ok(Exit::Done) => return Ok(()),
            Ok(Exit::Reconnect) => backoff = Duration::from_millis(250),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker unavailable; reconnecting");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        stats.reconnects.fetch_add(1, Ordering::Relaxed);
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

enum Exit {
    Done,
    Reconnect,
}

async fn consume(
    migrator: &Migrator,
    amqp_uri: &str,
    topology: &Topology,
    opts: &Options,
    stats: &Arc<Stats>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Exit, BrokerError> {
    let conn = broker::connect(amqp_uri).await?;
    let channel = conn.create_channel().await?;
    broker::declare(&channel, topology).await?;
    // Per-consumer prefetch (global: false) = concurrency: the broker never hands this worker
    // more jobs than it runs at once, so a busy pod leaves work for the others.
    channel
        .basic_qos(opts.concurrency, BasicQosOptions { global: false })
        .await?;
    let publisher = Arc::new(Publisher::new(&conn).await?);
    let mut probe = Some(conn.create_channel().await?);
    let mut sample = tokio::time::interval(QUEUE_SAMPLE_EVERY);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let tag = format!("worker-{}-{}", std::process::id(), now_secs());
    let mut consumer = channel
        .basic_consume(
            topology.work().as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let connected = Connected::new(&stats.broker_connected);
    tracing::info!(queue = %topology.work(), concurrency = opts.concurrency, "consuming");
    let mut tasks = JoinSet::new();
    let mut idle_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let retry_queues: Vec<String> = (0..topology.retry_delays_ms.len())
        .map(|i| topology.retry(i))
        .collect();
    let exit = loop {
        tokio::select! {
            _ = shutdown.as_mut() => {
                tracing::info!(in_flight = tasks.len(), "shutting down: no new jobs; draining");
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                break Exit::Done;
            }
            delivery = consumer.next() => match delivery {
                Some(Ok(d)) => {
                    idle_since = None;
                    let (m, p, t, s) = (migrator.clone(), publisher.clone(), topology.clone(), stats.clone());
                    let in_flight = InFlight::new(stats.clone());
                    tasks.spawn(async move {
                        let started = Instant::now();
                        handle(&m, &p, &t, &s, d, started).await;
                        s.job_seconds.observe(started.elapsed().as_secs_f64());
                        drop(in_flight);
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer failed; reconnecting");
                    break Exit::Reconnect;
                }
                None => {
                    tracing::warn!("consumer stream ended; reconnecting");
                    break Exit::Reconnect;
                }
            },
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = joined {
                    tracing::error!(error = %e, "job task failed outside the job");
                }
            }
            _ = sample.tick(), if probe.is_some() => {
                let p = probe.as_ref().expect("checked by the guard");
                if let Err(e) = sample_queues(p, topology, &retry_queues, &stats.queue_messages).await {
                    // Sampled again after the next reconnect; jobs are unaffected.
                    tracing::warn!(error = %e, "cannot sample queue depths; stopped until the next broker session");
                    probe = None;
                }
            }
            _ = tick.tick(), if opts.until_idle.is_some() => {
                if !tasks.is_empty() {
                    idle_since = None;
                    continue;
                }
                let mut empty = true;
                for q in std::iter::once(topology.work()).chain(retry_queues.iter().cloned()) {
                    if broker::queue_depth(&channel, &q).await?.0 > 0 {
                        empty = false;
                        break;
                    }
                }
                if !empty {
                    idle_since = None;
                } else if idle_since.get_or_insert_with(Instant::now).elapsed() >= opts.until_idle.unwrap_or_default() {
                    tracing::info!("queues empty and nothing in flight; exiting (--until-idle)");
                    break Exit::Done;
                }
            }
        }
    };
    // No longer consuming (shutting down, or the session is lost): not ready any more.
    drop(connected);
    // Drain: let in-flight jobs finish, up to the deadline. Whatever is still running then is
    // abandoned; its unacked delivery returns to the queue when the connection closes.
    let deadline = tokio::time::sleep(opts.drain_deadline);
    tokio::pin!(deadline);
    while !tasks.is_empty() {
        tokio::select! {
            _ = &mut deadline => {
                tracing::warn!(abandoned = tasks.len(), "drain deadline reached; unfinished jobs return to the queue");
                tasks.abort_all();
                break;
            }
            _ = tasks.join_next() => {}
        }
    }
    let _ = conn.close(200, "bye".into()).await;
    Ok(exit)
}

/// This delivery's attempt number (1 for a first delivery), from our attempts header. Headers
/// come from outside (a hand-made message, a requeue tool): no value of theirs overflows or
/// goes below 1 here.
fn attempt_of(hdrs: &BTreeMap<String, HeaderValue>) -> i64 {
    match hdrs.get(headers::ATTEMPTS) {
        Some(HeaderValue::Int(n)) => (*n).max(0),
        _ => 0,
    }
    .saturating_add(1)
}

/// How many times the broker delivered this message before without an ack (`x-delivery-count`,
/// set by quorum queues on redelivery; 0 on a first delivery).
fn deliveries_before(hdrs: &BTreeMap<String, HeaderValue>) -> i64 {
    match hdrs.get("x-delivery-count") {
        Some(HeaderValue::Int(n)) => (*n).max(0),
        _ => 0,
    }
}

/// How a delivery ends. Every path of [`handle`] ends in exactly one of these, and [`settle`]
/// turns each into an ack or a nack: a delivery never keeps its prefetch slot until the channel
/// dies.
enum Settle {
    /// The job has its outcome in the ledger.
    Ack,
    /// Publish (mandatory, confirmed) to `queue` with the delivery's headers plus `extra`, then
    /// ack; if the publish fails, requeue instead.
    Move {
        queue: String,
        extra: BTreeMap<String, HeaderValue>,
    },
    /// Back to the work queue for another try (the outcome could not be recorded).
    Requeue,
}

/// A job's task, aborted when this is dropped: when the delivery's own task is aborted (drain
/// deadline, lost session), the migration stops with it instead of running on beside the
/// redelivered copy and beyond `--concurrency`.
struct JobTask<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for JobTask<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One migration running, for [`Stats::migrations_running`] and its high-water mark.
struct Running(Arc<Stats>);

impl Running {
    fn new(stats: Arc<Stats>) -> Self {
        let now = stats.migrations_running.fetch_add(1, Ordering::SeqCst) + 1;
        stats
            .max_migrations_running
            .fetch_max(now, Ordering::SeqCst);
        Running(stats)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.migrations_running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One delivery, end to end. Never panics out: a panicking job is caught and dead-lettered.
async fn handle(
    migrator: &Migrator,
    publisher: &Publisher,
    topology: &Topology,
    stats: &Arc<Stats>,
    d: Delivery,
    started: Instant,
) {
    let hdrs = broker::headers_of(&d.properties);
    let attempts = attempt_of(&hdrs);
    let job: Result<Job, JobError> = serde_json::from_slice(&d.data).map_err(|e| {
        JobError::BadMessage(format!(
            "{e}: {}",
            String::from_utf8_lossy(&d.data[..d.data.len().min(200)])
        ))
    });
    let viz = job
        .as_ref()
        .map(|j| j.viz.clone())
        .unwrap_or_else(|_| "<unknown>".into());
    let batch = job.as_ref().ok().and_then(|j| j.batch.clone());
    let deliveries = deliveries_before(&hdrs);
    let result = match job {
        Err(e) => Err(e),
        // The broker's last allowed delivery: every earlier one ended without an ack, i.e. the
        // worker holding it died (killed for memory, crashed, abandoned at a drain). Running it
        // again would likely kill this one too, and past the limit the broker would dead-letter
        // it with none of our headers and no ledger record: record it and dead-letter it here.
        Ok(_) if deliveries >= i64::from(topology.delivery_limit) => Err(JobError::CrashLoop {
            viz: viz.clone(),
            deliveries,
        }),
        Ok(job) => {
            // Run the job in its own task so a panic is contained and reported as a value.
            let m = migrator.clone();
            let running = Running::new(stats.clone());
            let mut task = JobTask(tokio::spawn(async move {
                let _running = running;
                m.migrate(&job.viz, job.batch.as_deref()).await
            }));
            match (&mut task.0).await {
                Ok(r) => r,
                Err(join) => Err(JobError::Panic {
                    viz: viz.clone(),
                    message: panic_message(join),
                }),
            }
        }
    };
    // Until the outcome is known (what the job itself took); the histogram's value also counts
    // the ack or the move.
    let duration_ms = started.elapsed().as_millis() as u64;
    let batch_field = batch.as_deref().unwrap_or("");
    let how = match result {
        Ok(done) => {
            tracing::info!(viz = %done.viz, outcome = done.outcome.as_str(), reason = done.reason.as_deref().unwrap_or(""), batch = batch_field, attempts, duration_ms, "job done");
            stats.ended(done.outcome);
            Settle::Ack
        }
        Err(e) => {
            let disposition = e.disposition();
            let kind = ErrorKind::of(&e);
            let max_retries = topology.retry_delays_ms.len() as i64;
            let mut extra = BTreeMap::new();
            extra.insert(headers::ATTEMPTS.to_string(), HeaderValue::Int(attempts));
            extra.insert(headers::VIZ.to_string(), HeaderValue::Str(viz.clone()));
            extra.insert(
                headers::ERROR_KIND.to_string(),
                HeaderValue::Str(kind.as_str().to_string()),
            );
            extra.insert(
                headers::ERROR_MESSAGE.to_string(),
                HeaderValue::Str(e.to_string()),
            );
            extra.insert(
                headers::LAST_FAILURE.to_string(),
                HeaderValue::Int(now_secs()),
            );
            if !hdrs.contains_key(headers::FIRST_FAILURE) {
                extra.insert(
                    headers::FIRST_FAILURE.to_string(),
                    HeaderValue::Int(now_secs()),
                );
            }
            match disposition {
                Disposition::Retry if attempts <= max_retries => {
                    tracing::warn!(viz, batch = batch_field, attempts, duration_ms, kind = kind.as_str(), error = %e, "transient failure; retrying later");
                    stats.retried.fetch_add(1, Ordering::Relaxed);
                    stats.retried_by_kind.add(kind);
                    Settle::Move {
                        queue: topology.retry(usize::try_from(attempts - 1).unwrap_or(0)),
                        extra,
                    }
                }
                Disposition::Skip => {
                    match migrator.record_failure(&viz, &e, batch.as_deref()).await {
                        Ok(()) => {
                            tracing::info!(viz, batch = batch_field, attempts, duration_ms, kind = kind.as_str(), reason = %e, "job skipped");
                            stats.ended(disposition.final_outcome());
                            Settle::Ack
                        }
                        Err(le) => {
                            tracing::error!(viz, error = %le, "cannot record the skip; the job goes back to the queue");
                            Settle::Requeue
                        }
                    }
                }
                Disposition::Retry | Disposition::DeadLetter => {
                    tracing::error!(viz, batch = batch_field, attempts, duration_ms, kind = kind.as_str(), error = %e, "job failed; dead-lettering");
                    // The dead letter is the record of last resort; try hard to have the ledger
                    // agree (a V3 hiccup should not leave the job without a recorded outcome).
                    let mut recorded = migrator.record_failure(&viz, &e, batch.as_deref()).await;
                    for pause in [200, 1_000] {
                        if recorded.is_ok() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                        recorded = migrator.record_failure(&viz, &e, batch.as_deref()).await;
                    }
                    if let Err(le) = recorded {
                        tracing::error!(viz, error = %le, "cannot record the failure in the ledger");
                    }
                    extra.insert(
                        headers::FINGERPRINT.to_string(),
                        HeaderValue::Str(fingerprint(kind.as_str(), &e.to_string(), &viz)),
                    );
                    stats.ended(disposition.final_outcome());
                    stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    stats.dead_lettered_by_kind.add(kind);
                    Settle::Move {
                        queue: topology.dead(),
                        extra,
                    }
                }
            }
        }
    };
    settle(publisher, stats, &d, &viz, how).await;
}

/// End a delivery as decided: ack, or move (publish first, ack second), or nack with requeue.
/// A move whose publish fails (the target queue is gone, the broker refused or returned it) is
/// requeued — never acked, so the job is not lost — after a short pause, so a broker that keeps
/// refusing does not spin the job.
async fn settle(publisher: &Publisher, stats: &Stats, d: &Delivery, viz: &str, how: Settle) {
    let requeue = lapin::options::BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    let ended = match how {
        Settle::Ack => d.ack(Default::default()).await,
        Settle::Move { queue, extra } => {
            match broker::move_delivery(publisher, d, &queue, extra).await {
                Ok(acked) => Ok(acked),
                Err(e) => {
                    tracing::error!(viz, queue, error = %e, "cannot move the job; it goes back to the queue");
                    stats.moves_failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    d.nack(requeue).await
                }
            }
        }
        Settle::Requeue => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            d.nack(requeue).await
        }
    };
    match ended {
        Ok(true) => {}
        Ok(false) => {
            stats.acks_lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                viz,
                "ack not accepted (channel reset since delivery); the job will be redelivered"
            );
        }
        Err(e) => {
            stats.acks_lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(viz, error = %e, "ack failed; the job will be redelivered");
        }
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic".into()),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The task of a delivery aborted (drain deadline, lost session) takes its migration with
    /// it: nothing of the job runs on beside its redelivered copy.
    #[tokio::test]
    async fn aborting_a_delivery_stops_its_migration() {
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let stats = Arc::new(Stats::default());
        let dropped = Arc::new(AtomicBool::new(false));
        let (flag, s) = (Flag(dropped.clone()), stats.clone());
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let delivery = tokio::spawn(async move {
            let running = Running::new(s);
            let mut task = JobTask(tokio::spawn(async move {
                let (_flag, _running) = (flag, running);
                let _ = started_tx.send(());
                std::future::pending::<()>().await
            }));
            let _ = (&mut task.0).await;
        });
        started.await.unwrap();
        assert_eq!(stats.migrations_running.load(Ordering::SeqCst), 1);
        delivery.abort();
        let _ = delivery.await;
        for _ in 0..1000 {
            if dropped.load(Ordering::SeqCst) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(dropped.load(Ordering::SeqCst), "the migration kept running");
        assert_eq!(stats.migrations_running.load(Ordering::SeqCst), 0);
        assert_eq!(stats.max_migrations_running.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn attempt_numbers_never_overflow_or_go_below_one() {
        let with = |v: HeaderValue| BTreeMap::from([(headers::ATTEMPTS.to_string(), v)]);
        assert_eq!(attempt_of(&BTreeMap::new()), 1);
        assert_eq!(attempt_of(&with(HeaderValue::Int(2))), 3);
        assert_eq!(attempt_of(&with(HeaderValue::Int(i64::MAX))), i64::MAX);
        assert_eq!(attempt_of(&with(HeaderValue::Int(-5))), 1);
        assert_eq!(attempt_of(&with(HeaderValue::Str("x".into()))), 1);
        // The retry queue for any attempt exists.
        let t = Topology::new("p");
        for a in [1, 2, i64::MAX] {
            let q = t.retry(usize::try_from(a - 1).unwrap_or(0));
            assert!(t.all_queues().contains(&q), "{q}");
        }
    }
}
