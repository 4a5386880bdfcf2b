//! The worker loop: consumes jobs, migrates them in batches with [`Migrator::migrate_batch`]
//! (at most `concurrency` jobs in flight at once, which is also the per-consumer prefetch), and
//! decides what happens to each delivery:
//!
//! - done (any recorded outcome) → ack;
//! - transient failure → publish to the next delayed-retry queue (confirmed), then ack;
//! - permanent failure, retries exhausted, or a panic → ledger `failed`, publish to the DLQ with
//!   the reason headers (confirmed), then ack.
//!
//! What a delivery says (its body, our headers, the broker's delivery count) and the headers it
//! is moved with are the job message's contract, read and written through [`crate::job`].
//!
//! A broker session (`consume`) only connects, schedules and settles. Its stages:
//!
//! - the batcher ([`batcher::Batches`]), which works the way batch sinks do: it buffers
//!   deliveries and hands them on when the buffer holds the batch size (`batch_size`, at most
//!   `concurrency`) or when the oldest buffered delivery has waited `batch_wait` (a timer armed
//!   by the first delivery of the buffer); on shutdown what it still holds runs as a last batch,
//!   drained like the others. A delivery counts as in flight from its receipt;
//! - the loop (`Scheduling::run`), which runs each batch as a task of its own (several at once
//!   as long as the prefetch lets deliveries in) until shutdown, idle or a lost consumer;
//! - beside it, the idle watch (`idle_watch`, with `until_idle`) and the queue sampler
//!   (`sample_queues_every`, a task of its own);
//! - a batch's task (`run_batch`): it parses its deliveries (`prepare`: a bad body, or a
//!   delivery the broker is about to give up on, never runs), migrates the runnable jobs
//!   together in a task of their own (`migrate_contained`: should that task panic, each job runs
//!   again alone, so the panic is pinned on the viz that causes it), decides every delivery's
//!   fate from its job's result alone (`decide`, no I/O), then records and settles each delivery
//!   on its own (`finish`), so a batch's jobs hold their prefetch slots until its slowest job
//!   ends. Counters, the histogram and the `job done` log line (with `batch_jobs`, the size of
//!   the batch the job ran in) stay per job.
//!
//! Publishing always comes before the ack, so a crash in between duplicates a message (harmless:
//! jobs are idempotent) but never loses one. An ack that lapin refuses because the channel died
//! since the delivery is logged and counted; the broker redelivers that job.
//!
//! The loop reconnects after a broker restart (pausing as [`retry::reconnect`] says), stops
//! consuming on shutdown and gives in-flight jobs until the drain deadline (unfinished ones go
//! back to the queue when the connection closes; aborting a batch's task stops its migrations),
//! and with `until_idle` exits once the work and retry queues stayed empty with nothing in
//! flight (buffered included) for that long.
//!
//! Everything it counts lives in [`Stats`] (module [`stats`]), the one place of the worker's
//! counters (failures by [`ErrorKind`](crate::outcome::ErrorKind), and its queues' depths sampled
//! every [`QUEUE_SAMPLE_EVERY`] so alerts can tell "idle" from "stuck"); the `/metrics` endpoint
//! ([`crate::metrics`]) only reads them.

pub mod batcher;
pub mod stats;

pub use stats::Stats;

use crate::broker::{self, BrokerError, Publisher, Topology};
use crate::job::{self, Failure, Headers, Job};
use crate::migrate::{Done, JobError, Migrator};
use crate::retry::{self, BackoffBuilder, Retryable};
use crate::{Disposition, Outcome};
use batcher::Batches;
use futures_util::{Stream, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use stats::{QueueDepths, QueueRole};
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// `--concurrency`'s default.
pub const DEFAULT_CONCURRENCY: u16 = 64;
/// `--batch-size`'s default.
pub const DEFAULT_BATCH_SIZE: u16 = 32;
/// `--batch-wait-ms`'s default.
pub const DEFAULT_BATCH_WAIT_MS: u64 = 50;

#[derive(Debug, Clone)]
pub struct Options {
    /// Jobs in flight at once (buffered for a batch, migrating, or being settled): the
    /// per-consumer prefetch. 0 counts as 1 (the `worker` binary refuses 0).
    pub concurrency: u16,
    /// Most jobs in one batch; the batch size used is [`Options::batch_jobs`].
    pub batch_size: u16,
    /// How long the oldest buffered delivery waits for its batch to fill before the batch runs
    /// anyway. Zero runs whatever has arrived at once.
    pub batch_wait: Duration,
    pub until_idle: Option<Duration>,
    pub drain_deadline: Duration,
}

impl Default for Options {
    /// The `worker` binary's defaults.
    fn default() -> Self {
        Options {
            concurrency: DEFAULT_CONCURRENCY,
            batch_size: DEFAULT_BATCH_SIZE,
            batch_wait: Duration::from_millis(DEFAULT_BATCH_WAIT_MS),
            until_idle: None,
            drain_deadline: Duration::from_secs(25),
        }
    }
}

impl Options {
    /// The prefetch: `concurrency`, at least 1 (a prefetch of 0 would mean "unlimited").
    pub fn prefetch(&self) -> u16 {
        self.concurrency.max(1)
    }

    /// The batch size used: `min(batch_size, concurrency)`, at least 1 (a batch larger than the
    /// prefetch could never fill and would always wait `batch_wait`).
    pub fn batch_jobs(&self) -> usize {
        usize::from(self.batch_size.min(self.concurrency).max(1))
    }
}

/// How often a connected worker samples its queues' depths (one passive declare per queue).
pub const QUEUE_SAMPLE_EVERY: Duration = Duration::from_secs(15);

/// How often `--until-idle` looks at the queues.
const IDLE_CHECK_EVERY: Duration = Duration::from_millis(250);

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
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
    // The pauses between sessions, stepped here rather than through `Retryable`: each races the
    // shutdown, and a session that consumed starts them over.
    let mut pauses = retry::reconnect().build();
    loop {
        let session = consume(&migrator, amqp_uri, topology, opts, &stats, &mut shutdown).await;
        let lost = match session {
            Ok(Exit::Done) => return Ok(()),
            Ok(Exit::Reconnect) => {
                pauses = retry::reconnect().build();
                None
            }
            Err(e) if e.is_transient() => Some(e),
            Err(e) => return Err(e),
        };
        let pause = pauses.next().expect("reconnect() never gives up");
        if let Some(e) = lost {
            let retry_in_ms = pause.as_millis() as u64;
            tracing::warn!(error = %e, retry_in_ms, "broker unavailable; reconnecting");
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
        stats.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

enum Exit {
    Done,
    Reconnect,
}

/// What a batch task needs from its broker session.
struct Session {
    migrator: Migrator,
    publisher: Publisher,
    topology: Topology,
    stats: Arc<Stats>,
}

/// A broker session's own ends, which only [`consume`] uses: the connection, the consumer's
/// channel and tag, and the channel queue depths are sampled on.
struct Link {
    conn: lapin::Connection,
    channel: lapin::Channel,
    /// A channel of its own for sampling: a failed passive declare closes the channel it ran
    /// on, and the consumer's must survive.
    probe: lapin::Channel,
    tag: String,
}

/// One broker session: connect, schedule batches until shutdown, idle or a lost consumer, then
/// settle what is in flight (up to the drain deadline) and close.
async fn consume(
    migrator: &Migrator,
    amqp_uri: &str,
    topology: &Topology,
    opts: &Options,
    stats: &Arc<Stats>,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
) -> Result<Exit, BrokerError> {
    let (link, consumer, session) = connect(migrator, amqp_uri, topology, opts, stats).await?;
    let connected = Connected::new(&stats.broker_connected);
    tracing::info!(
        queue = %topology.work(),
        concurrency = opts.prefetch(),
        batch_size = opts.batch_jobs(),
        batch_wait_ms = opts.batch_wait.as_millis() as u64,
        "consuming"
    );
    // A task of its own, so a slow passive declare never holds up deliveries. It stops with the
    // loop: its channel closes with this session's connection, and the next session samples anew.
    let sampling = sample_queues_every(link.probe.clone(), topology.clone(), stats.clone());
    let sampler = Aborting(tokio::spawn(sampling));
    let jobs = Arc::new(SessionJobs::default());
    let deliveries = {
        let (stats, jobs) = (stats.clone(), jobs.clone());
        consumer.map(move |d| d.map(|d| Pending::new(d, &stats, &jobs)))
    };
    let mut batches = Batches::new(deliveries, opts.batch_jobs(), opts.batch_wait);
    let mut tasks = JoinSet::new();
    let scheduling = Scheduling {
        link: &link,
        session: &session,
        jobs: &jobs,
        until_idle: opts.until_idle,
    };
    // A failed idle check ends the session at once: dropping `tasks` aborts its batches, whose
    // deliveries the broker redelivers.
    let exit = scheduling.run(&mut batches, &mut tasks, shutdown).await?;
    drop(sampler);
    // No longer consuming (shutting down, or the session is lost): not ready any more.
    drop(connected);
    // What is still buffered runs as a last batch, drained like the others (after a lost
    // session its settlement fails and the broker redelivers it, as for the batches running).
    let rest = batches.take_buffered();
    if !rest.is_empty() {
        tasks.spawn(run_batch(session, rest));
    }
    drain(&mut tasks, opts.drain_deadline, &jobs).await;
    let _ = link.conn.close(200, "bye".into()).await;
    Ok(exit)
}

/// Open a session: the connection, the consumer's channel (queues declared, prefetch set), the
/// publisher batch tasks move deliveries with, the probe channel, then the consumer.
async fn connect(
    migrator: &Migrator,
    amqp_uri: &str,
    topology: &Topology,
    opts: &Options,
    stats: &Arc<Stats>,
) -> Result<(Link, lapin::Consumer, Arc<Session>), BrokerError> {
    let conn = broker::connect(amqp_uri).await?;
    let channel = conn.create_channel().await?;
    broker::declare(&channel, topology).await?;
    // Per-consumer prefetch (global: false) = concurrency: the broker never hands this worker
    // more jobs than it has in flight at once (buffered included), so a busy pod leaves work for
    // the others, and however many batches run, their jobs never exceed it.
    channel
        .basic_qos(opts.prefetch(), BasicQosOptions { global: false })
        .await?;
    let session = Arc::new(Session {
        migrator: migrator.clone(),
        publisher: Publisher::new(&conn).await?,
        topology: topology.clone(),
        stats: stats.clone(),
    });
    let probe = conn.create_channel().await?;
    let tag = format!("worker-{}-{}", std::process::id(), now_secs());
    let consumer = channel
        .basic_consume(
            topology.work().as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let link = Link {
        conn,
        channel,
        probe,
        tag,
    };
    Ok((link, consumer, session))
}

/// What the session's loop reads.
struct Scheduling<'a> {
    link: &'a Link,
    session: &'a Arc<Session>,
    jobs: &'a SessionJobs,
    until_idle: Option<Duration>,
}

impl Scheduling<'_> {
    /// The session's loop: each batch the batcher hands on runs as a task of its own, until
    /// shutdown (consuming cancelled), idle (`--until-idle`) or the consumer's end (reconnect).
    /// Only a failed idle check is an error.
    async fn run<S>(
        &self,
        batches: &mut Batches<S, Pending>,
        tasks: &mut JoinSet<()>,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Exit, BrokerError>
    where
        S: Stream<Item = Result<Pending, lapin::Error>> + Unpin,
    {
        let (link, jobs) = (self.link, self.jobs);
        let watched = watched_queues(&self.session.topology);
        let idle = idle_watch(&link.channel, &watched, jobs, self.until_idle);
        tokio::pin!(idle);
        loop {
            // Biased, in this order: nothing is scheduled once shutdown has come; a failed idle
            // check (a deleted queue, say, which also closes the consumer's channel) ends the
            // session with its error rather than as a lost consumer; finished batches are
            // reaped before the next one starts.
            tokio::select! {
                biased;
                _ = shutdown.as_mut() => {
                    tracing::info!(in_flight = jobs.in_flight(), buffered = batches.buffered_len(), "shutting down: no new jobs; draining");
                    let _ = link.channel.basic_cancel(link.tag.as_str().into(), BasicCancelOptions::default()).await;
                    return Ok(Exit::Done);
                }
                idle = &mut idle => {
                    idle?;
                    tracing::info!("queues empty and nothing in flight; exiting (--until-idle)");
                    return Ok(Exit::Done);
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = joined {
                        tracing::error!(error = %e, "batch task failed outside its jobs");
                    }
                }
                batch = batches.next() => match batch {
                    Some(Ok(batch)) => {
                        tasks.spawn(run_batch(self.session.clone(), batch));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "consumer failed; reconnecting");
                        return Ok(Exit::Reconnect);
                    }
                    None => {
                        tracing::warn!("consumer stream ended; reconnecting");
                        return Ok(Exit::Reconnect);
                    }
                },
            }
        }
    }
}

/// Let the batches in flight finish, up to `deadline`. Whatever is still running then is
/// abandoned (its batch's task aborted, which stops its migrations); its unacked deliveries
/// return to the queue when the connection closes.
async fn drain(tasks: &mut JoinSet<()>, deadline: Duration, jobs: &SessionJobs) {
    let deadline = tokio::time::sleep(deadline);
    tokio::pin!(deadline);
    while !tasks.is_empty() {
        tokio::select! {
            _ = &mut deadline => {
                tracing::warn!(abandoned = jobs.in_flight(), batches = tasks.len(), "drain deadline reached; unfinished jobs return to the queue");
                tasks.abort_all();
                break;
            }
            _ = tasks.join_next() => {}
        }
    }
}

/// The queues whose jobs this worker runs: the work queue and every delayed-retry queue (each
/// comes back to the work queue).
fn watched_queues(topology: &Topology) -> Vec<String> {
    std::iter::once(topology.work())
        .chain(retry_queues(topology))
        .collect()
}

fn retry_queues(topology: &Topology) -> Vec<String> {
    (0..topology.retry_delays_ms.len())
        .map(|i| topology.retry(i))
        .collect()
}

/// With `until_idle`: resolves once `queues` stayed empty, with no delivery of this session
/// received or in flight (buffered included), for that long; looks every [`IDLE_CHECK_EVERY`],
/// on `channel`. Without it, never resolves. A failed look is the session's error.
async fn idle_watch(
    channel: &lapin::Channel,
    queues: &[String],
    jobs: &SessionJobs,
    until_idle: Option<Duration>,
) -> Result<(), BrokerError> {
    let Some(idle) = until_idle else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(IDLE_CHECK_EVERY);
    let mut idle_since: Option<Instant> = None;
    let mut seen = jobs.received();
    loop {
        tick.tick().await;
        // A delivery since the last look restarts the wait, even one settled already.
        if jobs.received() != seen {
            seen = jobs.received();
            idle_since = None;
        }
        if jobs.in_flight() > 0 {
            idle_since = None;
            continue;
        }
        let mut empty = true;
        for q in queues {
            if broker::queue_depth(channel, q).await?.0 > 0 {
                empty = false;
                break;
            }
        }
        if !empty {
            idle_since = None;
        } else if idle_since.get_or_insert_with(Instant::now).elapsed() >= idle {
            return Ok(());
        }
    }
}

/// Sample this worker's queue depths into `stats` every [`QUEUE_SAMPLE_EVERY`], the first at
/// once, until the session ends (the task is aborted) or a sample fails (sampled again from the
/// next session on; jobs are unaffected).
async fn sample_queues_every(probe: lapin::Channel, topology: Topology, stats: Arc<Stats>) {
    let retry_queues = retry_queues(&topology);
    let mut every = tokio::time::interval(QUEUE_SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let depths = &stats.queue_messages;
        if let Err(e) = sample_queues(&probe, &topology, &retry_queues, depths).await {
            tracing::warn!(error = %e, "cannot sample queue depths; stopped until the next broker session");
            return;
        }
    }
}

/// Sample the depths of this worker's queues on `probe` (see [`Link::probe`]).
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

/// A broker session's deliveries: how many it received, and how many are in flight (received
/// and not settled: buffered for a batch, migrating, or being acked or moved). What
/// `--until-idle` and the drain look at.
#[derive(Debug, Default)]
struct SessionJobs {
    received: AtomicU64,
    in_flight: AtomicU64,
}

impl SessionJobs {
    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A delivery waiting in the batcher or in its batch, counted in flight from its receipt.
struct Pending {
    delivery: Delivery,
    received: Instant,
    _in_flight: InFlight,
}

impl Pending {
    /// A delivery just received: counted as received, and in flight from now on. A delivery
    /// waiting for its batch holds a prefetch slot like one migrating.
    fn new(delivery: Delivery, stats: &Arc<Stats>, jobs: &Arc<SessionJobs>) -> Self {
        jobs.received.fetch_add(1, Ordering::Relaxed);
        Pending {
            delivery,
            received: Instant::now(),
            _in_flight: InFlight::new(stats.clone(), jobs.clone()),
        }
    }
}

/// Counts a job in flight (in this worker's [`Stats`] and in its broker session's count) for as
/// long as it lives: from its receipt, through its wait in the batcher and its batch, to its
/// settlement, including when its batch's task is aborted.
struct InFlight(Arc<Stats>, Arc<SessionJobs>);

impl InFlight {
    fn new(stats: Arc<Stats>, session: Arc<SessionJobs>) -> Self {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        session.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(stats, session)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.1.in_flight.fetch_sub(1, Ordering::Relaxed);
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

/// How a delivery ends. Every path of [`finish`] ends in exactly one of these, and [`settle`]
/// turns each into an ack or a nack: a delivery never keeps its prefetch slot until the channel
/// dies.
enum Settle {
    /// The job has its outcome in the ledger.
    Ack,
    /// Publish (mandatory, confirmed) to `queue` with the delivery's headers plus `extra`, then
    /// ack; if the publish fails, requeue instead.
    Move { queue: String, extra: Headers },
    /// Back to the work queue for another try (the outcome could not be recorded).
    Requeue,
}

/// A task aborted when this is dropped. A migration's task: when its batch's task is aborted
/// (drain deadline, lost session), its migrations stop with it instead of running on beside the
/// redelivered copies and beyond `--concurrency`. The queue sampler: it stops with its session.
struct Aborting<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One job migrating, for [`Stats::migrations_running`] and its high-water mark.
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

/// A delivery as its batch sees it: the viz and batch it names, and its job, or why the job
/// does not run.
struct Prepared {
    /// `<unknown>` for a body that is no job.
    viz: String,
    batch: Option<String>,
    job: Result<Job, JobError>,
}

/// Parse a delivery: a body that is no job is a [`JobError::BadMessage`], the broker's last
/// allowed delivery a [`JobError::CrashLoop`]. No I/O.
fn prepare(hdrs: &Headers, body: &[u8], delivery_limit: u32) -> Prepared {
    let job = match Job::parse(body) {
        Ok(job) => job,
        Err(bad) => {
            return Prepared {
                viz: "<unknown>".into(),
                batch: None,
                job: Err(JobError::BadMessage(bad.to_string())),
            };
        }
    };
    let (viz, batch) = (job.viz.clone(), job.batch.clone());
    // The broker's last allowed delivery: every earlier one ended without an ack, i.e. the
    // worker holding it died (killed for memory, crashed, abandoned at a drain). Running it
    // again would likely kill this one too, and past the limit the broker would dead-letter it
    // with none of our headers and no ledger record: record it and dead-letter it here.
    let deliveries = job::deliveries_before(hdrs);
    let job = if deliveries >= i64::from(delivery_limit) {
        Err(JobError::CrashLoop {
            viz: viz.clone(),
            deliveries,
        })
    } else {
        Ok(job)
    };
    Prepared { viz, batch, job }
}

/// What becomes of one delivery, decided by [`decide`] from its job's result and its headers.
/// The I/O side ([`finish`]) does the ledger work a verdict asks for, then settles.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    /// The job has its outcome in the ledger: ack.
    Ack(Outcome),
    /// Skipped for good: record the skip in the ledger, then ack. (If it cannot be recorded,
    /// the I/O side requeues the delivery instead.)
    Skip,
    /// Publish to the delayed-retry queue `queue` (the one of this attempt) with the delivery's
    /// headers plus `extra`, then ack.
    Retry { queue: String, extra: Headers },
    /// Record `failed` in the ledger, publish to the DLQ `queue` with the delivery's headers plus
    /// `extra` (the fingerprint included), then ack.
    DeadLetter { queue: String, extra: Headers },
}

/// The per-batch decision: for each delivery (its headers, the viz it names, and its job's
/// result, in the batch's order), what becomes of it. Pure: no broker, no ledger; `now` (Unix
/// seconds) stamps the failure headers.
fn decide<'a>(
    topology: &Topology,
    now: i64,
    ended: impl IntoIterator<Item = (&'a Headers, &'a str, &'a Result<Done, JobError>)>,
) -> Vec<Verdict> {
    ended
        .into_iter()
        .map(|(hdrs, viz, result)| verdict(topology, now, hdrs, viz, result))
        .collect()
}

/// [`decide`] for one delivery.
fn verdict(
    topology: &Topology,
    now: i64,
    hdrs: &Headers,
    viz: &str,
    result: &Result<Done, JobError>,
) -> Verdict {
    let e = match result {
        Ok(done) => return Verdict::Ack(done.outcome),
        Err(e) => e,
    };
    let message = e.to_string();
    let failure = Failure {
        viz,
        attempt: job::attempt(hdrs),
        kind: e.error_kind(),
        message: &message,
        at: now,
    };
    let max_retries = topology.retry_delays_ms.len() as i64;
    match e.disposition() {
        Disposition::Retry if failure.attempt <= max_retries => Verdict::Retry {
            queue: topology.retry(usize::try_from(failure.attempt - 1).unwrap_or(0)),
            extra: failure.retry_headers(hdrs),
        },
        Disposition::Skip => Verdict::Skip,
        Disposition::Retry | Disposition::DeadLetter => Verdict::DeadLetter {
            queue: topology.dead(),
            extra: failure.dead_letter_headers(hdrs),
        },
    }
}

/// Migrate `jobs` together through `batch`, in a task of its own so that a panic is contained.
/// Should that task panic (or return other than one result per job), each job runs again alone
/// through `single`, each in a task of its own as well, so the panic is pinned on the viz that
/// causes it as [`JobError::Panic`]. Every task is aborted when the returned future is dropped
/// (its batch's task aborted at the drain deadline or with a lost session): no migration runs
/// on beside its redelivered copy. Returns, in order, each job's result and the number of jobs
/// it ran with (`jobs.len()`, or 1 when it ran alone).
async fn migrate_contained<B, BF, S, SF>(
    stats: &Arc<Stats>,
    jobs: Vec<Job>,
    batch: B,
    single: S,
) -> Vec<(Result<Done, JobError>, usize)>
where
    B: FnOnce(Vec<Job>) -> BF,
    BF: Future<Output = Vec<Result<Done, JobError>>> + Send + 'static,
    S: Fn(Job) -> SF,
    SF: Future<Output = Result<Done, JobError>> + Send + 'static,
{
    let n = jobs.len();
    if n == 0 {
        return Vec::new();
    }
    let running: Vec<Running> = (0..n).map(|_| Running::new(stats.clone())).collect();
    let migration = batch(jobs.clone());
    let mut task = Aborting(tokio::spawn(async move {
        let _running = running;
        migration.await
    }));
    let failure = match (&mut task.0).await {
        Ok(results) if results.len() == n => {
            return results.into_iter().map(|r| (r, n)).collect();
        }
        Ok(results) => format!("{} results for {n} jobs", results.len()),
        Err(join) => format!("panic: {}", panic_message(join)),
    };
    drop(task);
    let vizzes: Vec<&str> = jobs.iter().map(|j| j.viz.as_str()).collect();
    tracing::warn!(
        jobs = n,
        ?vizzes,
        error = failure,
        "a batch failed; running its jobs alone"
    );
    let alone: Vec<_> = jobs
        .iter()
        .map(|job| {
            let viz = job.viz.clone();
            let running = Running::new(stats.clone());
            let migration = single(job.clone());
            let mut task = Aborting(tokio::spawn(async move {
                let _running = running;
                migration.await
            }));
            async move {
                match (&mut task.0).await {
                    Ok(r) => r,
                    Err(join) => Err(JobError::Panic {
                        viz,
                        message: panic_message(join),
                    }),
                }
            }
        })
        .collect();
    futures_util::future::join_all(alone)
        .await
        .into_iter()
        .map(|r| (r, 1))
        .collect()
}

/// One batch of deliveries, end to end: prepare each, migrate the runnable jobs together,
/// decide, then record and settle each delivery. Never panics out: a panicking migration is
/// caught and dead-lettered.
/// The vizzes of a batch whose job an earlier attempt ran (a redelivery after a pod died, a
/// retry): what it may have left half-written is looked for (see `Migrator::migrate_again`).
fn earlier_attempts(batch: &[Pending], prepared: &[Prepared], hdrs: &[Headers]) -> HashSet<String> {
    batch
        .iter()
        .zip(prepared)
        .zip(hdrs)
        .filter(|((p, _), h)| p.delivery.redelivered || job::attempt(h) > 1)
        .map(|((_, prep), _)| prep.viz.clone())
        .collect()
}

async fn run_batch(s: Arc<Session>, batch: Vec<Pending>) {
    let hdrs: Vec<Headers> = batch
        .iter()
        .map(|p| broker::headers_of(&p.delivery.properties))
        .collect();
    let prepared: Vec<Prepared> = batch
        .iter()
        .zip(&hdrs)
        .map(|(p, h)| prepare(h, &p.delivery.data, s.topology.delivery_limit))
        .collect();
    let runnable: Vec<Job> = prepared
        .iter()
        .filter_map(|p| p.job.as_ref().ok())
        .cloned()
        .collect();
    let earlier = Arc::new(earlier_attempts(&batch, &prepared, &hdrs));
    let (m, m1, again) = (s.migrator.clone(), s.migrator.clone(), earlier.clone());
    let mut ran = migrate_contained(
        &s.stats,
        runnable,
        move |jobs| async move { m.migrate_batch_again(&jobs, &earlier).await },
        move |job| {
            let (m, again) = (m1.clone(), again.clone());
            async move {
                let batch = job.batch.as_deref();
                if again.contains(&job.viz) {
                    m.migrate_again(&job.viz, batch).await
                } else {
                    m.migrate(&job.viz, batch).await
                }
            }
        },
    )
    .await
    .into_iter();
    // Back in delivery order; a delivery that did not run ran with no other job (0).
    let ended: Vec<Ended> = prepared
        .into_iter()
        .zip(&hdrs)
        .map(|(p, h)| {
            let (result, batch_jobs) = match p.job {
                Ok(_) => ran.next().unwrap_or_else(|| {
                    // Unreachable: `migrate_contained` returns one result per job.
                    let message = "the batch returned no result for the job".to_string();
                    let viz = p.viz.clone();
                    (Err(JobError::Panic { viz, message }), 0)
                }),
                Err(e) => (Err(e), 0),
            };
            Ended {
                viz: p.viz,
                batch: p.batch,
                attempts: job::attempt(h),
                batch_jobs,
                result,
            }
        })
        .collect();
    let verdicts = decide(
        &s.topology,
        now_secs(),
        hdrs.iter()
            .zip(&ended)
            .map(|(h, e)| (h, e.viz.as_str(), &e.result)),
    );
    let finishing = batch
        .into_iter()
        .zip(ended)
        .zip(verdicts)
        .map(|((p, e), v)| finish(&s, p, e, v));
    futures_util::future::join_all(finishing).await;
}

/// One delivery's job as it ended, for [`finish`].
struct Ended {
    viz: String,
    batch: Option<String>,
    attempts: i64,
    /// How many jobs it ran with (0: it did not run).
    batch_jobs: usize,
    result: Result<Done, JobError>,
}

/// The I/O of one delivery once its verdict is known: the ledger records a failure needs, the
/// counters and the log line ([`conclude`]), then [`settle`] (publish first, ack second). The
/// delivery stops counting in flight when this returns.
async fn finish(s: &Session, p: Pending, ended: Ended, verdict: Verdict) {
    // Until the outcome is known (what the job itself took, its wait for the batch included);
    // the histogram's value also counts the ack or the move.
    let duration_ms = p.received.elapsed().as_millis() as u64;
    let how = conclude(s, &ended, verdict, duration_ms).await;
    settle(&s.publisher, &s.stats, &p.delivery, &ended.viz, how).await;
    s.stats
        .job_seconds
        .observe(p.received.elapsed().as_secs_f64());
}

/// What a verdict asks of the ledger, the counters and the log, before the delivery is settled
/// as this returns.
async fn conclude(s: &Session, ended: &Ended, verdict: Verdict, duration_ms: u64) -> Settle {
    let stats = &s.stats;
    let (viz, batch) = (ended.viz.as_str(), ended.batch.as_deref());
    let (attempts, batch_jobs) = (ended.attempts, ended.batch_jobs);
    let batch_field = batch.unwrap_or("");
    match (verdict, &ended.result) {
        (Verdict::Ack(outcome), r) => {
            let (viz, reason) = match r {
                Ok(done) => (done.viz.as_str(), done.reason.as_deref().unwrap_or("")),
                Err(_) => (viz, ""),
            };
            tracing::info!(
                viz,
                outcome = outcome.as_str(),
                reason,
                batch = batch_field,
                attempts,
                duration_ms,
                batch_jobs,
                "job done"
            );
            stats.ended(outcome);
            Settle::Ack
        }
        (Verdict::Skip, Err(e)) => {
            let kind = e.error_kind();
            match s.migrator.record_failure(viz, e, batch).await {
                Ok(()) => {
                    tracing::info!(viz, batch = batch_field, attempts, duration_ms, batch_jobs, kind = kind.as_str(), reason = %e, "job skipped");
                    stats.ended(e.disposition().final_outcome());
                    Settle::Ack
                }
                Err(le) => {
                    tracing::error!(viz, error = %le, "cannot record the skip; the job goes back to the queue");
                    Settle::Requeue
                }
            }
        }
        (Verdict::Retry { queue, extra }, Err(e)) => {
            let kind = e.error_kind();
            tracing::warn!(viz, batch = batch_field, attempts, duration_ms, batch_jobs, kind = kind.as_str(), error = %e, "transient failure; retrying later");
            stats.retried.fetch_add(1, Ordering::Relaxed);
            stats.retried_by_kind.add(kind);
            Settle::Move { queue, extra }
        }
        (Verdict::DeadLetter { queue, extra }, Err(e)) => {
            let kind = e.error_kind();
            tracing::error!(viz, batch = batch_field, attempts, duration_ms, batch_jobs, kind = kind.as_str(), error = %e, "job failed; dead-lettering");
            record_dead_letter(s, viz, e, batch).await;
            Settle::Move { queue, extra }
        }
        // `decide` acks every job that is done; nothing else is reached.
        (_, Ok(done)) => {
            tracing::error!(viz = %done.viz, "a done job was not acked by the decision; acking it");
            stats.ended(done.outcome);
            Settle::Ack
        }
    }
}

/// A dead letter's ledger record and counters. The dead letter is the record of last resort;
/// try hard to have the ledger agree (a V3 hiccup should not leave the job without a recorded
/// outcome).
async fn record_dead_letter(s: &Session, viz: &str, e: &JobError, batch: Option<&str>) {
    let recorded = (|| s.migrator.record_failure(viz, e, batch))
        .retry(retry::record())
        .await;
    if let Err(le) = recorded {
        tracing::error!(viz, error = %le, "cannot record the failure in the ledger");
    }
    s.stats.ended(Outcome::Failed);
    s.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    s.stats.dead_lettered_by_kind.add(e.error_kind());
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
    use crate::broker::HeaderValue;
    use crate::job::{fingerprint, headers};
    use stats::OutcomeCounts;
    use std::collections::BTreeMap;

    fn done(viz: &str, outcome: Outcome) -> Result<Done, JobError> {
        Ok(Done {
            viz: viz.into(),
            outcome,
            reason: None,
        })
    }

    fn job(viz: &str) -> Job {
        Job {
            viz: viz.into(),
            batch: Some("b1".into()),
        }
    }

    /// A transient failure (a lost race), retried while attempts are left.
    fn raced(viz: &str) -> Result<Done, JobError> {
        Err(JobError::Raced {
            viz: viz.into(),
            docs: vec!["content".into()],
        })
    }

    fn attempts(n: i64) -> BTreeMap<String, HeaderValue> {
        BTreeMap::from([(headers::ATTEMPTS.to_string(), HeaderValue::Int(n))])
    }

    const NOW: i64 = 1_700_000_000;

    fn one(
        t: &Topology,
        hdrs: &BTreeMap<String, HeaderValue>,
        viz: &str,
        r: &Result<Done, JobError>,
    ) -> Verdict {
        decide(t, NOW, [(hdrs, viz, r)]).remove(0)
    }

    fn extra_of(v: &Verdict) -> &BTreeMap<String, HeaderValue> {
        match v {
            Verdict::Retry { extra, .. } | Verdict::DeadLetter { extra, .. } => extra,
            other => panic!("no headers: {other:?}"),
        }
    }

    fn str_header<'a>(extra: &'a BTreeMap<String, HeaderValue>, name: &str) -> &'a str {
        match extra.get(name) {
            Some(HeaderValue::Str(s)) => s,
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn done_jobs_are_acked_with_their_outcome() {
        let t = Topology::new("p");
        let none = BTreeMap::new();
        for o in OutcomeCounts::ALL {
            assert_eq!(one(&t, &none, "v", &done("v", o)), Verdict::Ack(o));
        }
        // Whatever attempt it was.
        assert_eq!(
            one(&t, &attempts(3), "v", &done("v", Outcome::Migrated)),
            Verdict::Ack(Outcome::Migrated)
        );
    }

    #[test]
    fn a_transient_failure_goes_to_the_retry_queue_of_its_attempt() {
        let t = Topology::new("p");
        let max = t.retry_delays_ms.len() as i64;
        assert!(max >= 1);
        for before in 0..max {
            let hdrs = if before == 0 {
                BTreeMap::new()
            } else {
                attempts(before)
            };
            let v = one(&t, &hdrs, "viz1", &raced("viz1"));
            let Verdict::Retry { queue, extra } = &v else {
                panic!("attempt {}: {v:?}", before + 1);
            };
            assert_eq!(queue, &t.retry(before as usize), "attempt {}", before + 1);
            assert_eq!(
                extra.get(headers::ATTEMPTS),
                Some(&HeaderValue::Int(before + 1))
            );
            assert_eq!(str_header(extra, headers::VIZ), "viz1");
            assert_eq!(
                str_header(extra, headers::ERROR_KIND),
                raced("viz1").as_ref().unwrap_err().error_kind().as_str()
            );
            assert!(str_header(extra, headers::ERROR_MESSAGE).contains("concurrent V3 edit"));
            assert_eq!(
                extra.get(headers::LAST_FAILURE),
                Some(&HeaderValue::Int(NOW))
            );
            assert_eq!(
                extra.get(headers::FIRST_FAILURE),
                Some(&HeaderValue::Int(NOW))
            );
            assert!(
                !extra.contains_key(headers::FINGERPRINT),
                "a retry has no fingerprint"
            );
        }
    }

    #[test]
    fn a_transient_failure_beyond_the_retries_is_dead_lettered_with_its_fingerprint() {
        let t = Topology::new("p");
        let max = t.retry_delays_ms.len() as i64;
        for before in [max, max + 1, i64::MAX - 1, i64::MAX] {
            let r = raced("viz1");
            let v = one(&t, &attempts(before), "viz1", &r);
            let Verdict::DeadLetter { queue, extra } = &v else {
                panic!("after {before}: {v:?}");
            };
            assert_eq!(queue, &t.dead());
            let e = r.as_ref().unwrap_err();
            let kind = e.error_kind().as_str();
            assert_eq!(
                str_header(extra, headers::FINGERPRINT),
                fingerprint(kind, &e.to_string(), "viz1")
            );
            assert_eq!(str_header(extra, headers::ERROR_KIND), kind);
            assert_eq!(
                extra.get(headers::ATTEMPTS),
                Some(&HeaderValue::Int(before.saturating_add(1)))
            );
        }
    }

    #[test]
    fn a_skip_is_acked_after_its_record() {
        let t = Topology::new("p");
        let r = Err(JobError::NotFound { viz: "gone".into() });
        assert_eq!(one(&t, &BTreeMap::new(), "gone", &r), Verdict::Skip);
        // Never retried, whatever the attempt.
        assert_eq!(one(&t, &attempts(1), "gone", &r), Verdict::Skip);
    }

    #[test]
    fn a_bad_message_is_dead_lettered_without_running() {
        let t = Topology::new("p");
        let none = BTreeMap::new();
        for body in [&b"not json"[..], b"{\"batch\": null}", b"", b"[1,2]"] {
            let p = prepare(&none, body, t.delivery_limit);
            assert_eq!(p.viz, "<unknown>");
            assert!(matches!(p.job, Err(JobError::BadMessage(_))), "{body:?}");
            let v = one(&t, &none, &p.viz, &p.job.map(|_| unreachable!()));
            let Verdict::DeadLetter { queue, extra } = &v else {
                panic!("{v:?}");
            };
            assert_eq!(queue, &t.dead());
            assert_eq!(str_header(extra, headers::VIZ), "<unknown>");
            assert!(str_header(extra, headers::ERROR_MESSAGE).starts_with("bad job message"));
            assert!(extra.contains_key(headers::FINGERPRINT));
        }
        // The message quotes the body as `Job::parse` does (its tests say how much).
        let Err(JobError::BadMessage(m)) = prepare(&none, b"nope", t.delivery_limit).job else {
            panic!("not a bad message");
        };
        assert_eq!(m, Job::parse(b"nope").unwrap_err().to_string());
    }

    #[test]
    fn the_last_allowed_delivery_is_a_crash_loop_dead_lettered_without_running() {
        let t = Topology::new("p");
        let body = job("v9").encode();
        let count =
            |n: i64| BTreeMap::from([(headers::DELIVERY_COUNT.to_string(), HeaderValue::Int(n))]);
        for n in 0..i64::from(t.delivery_limit) {
            let p = prepare(&count(n), &body, t.delivery_limit);
            assert_eq!(p.job.unwrap(), job("v9"), "delivery count {n} runs");
        }
        for n in [i64::from(t.delivery_limit), i64::from(t.delivery_limit) + 3] {
            let p = prepare(&count(n), &body, t.delivery_limit);
            // The viz and the batch stay known: the ledger records the failure for them.
            assert_eq!((p.viz.as_str(), p.batch.as_deref()), ("v9", Some("b1")));
            assert!(
                matches!(p.job, Err(JobError::CrashLoop { deliveries, .. }) if deliveries == n)
            );
            let r = p.job.map(|_| unreachable!());
            let v = one(&t, &count(n), "v9", &r);
            assert!(
                matches!(&v, Verdict::DeadLetter { queue, .. } if *queue == t.dead()),
                "{v:?}"
            );
            assert_eq!(
                str_header(extra_of(&v), headers::ERROR_KIND),
                r.as_ref().unwrap_err().error_kind().as_str()
            );
        }
    }

    #[test]
    fn a_panic_is_dead_lettered() {
        let t = Topology::new("p");
        let r = Err(JobError::Panic {
            viz: "v".into(),
            message: "boom".into(),
        });
        let v = one(&t, &BTreeMap::new(), "v", &r);
        assert!(matches!(&v, Verdict::DeadLetter { .. }), "{v:?}");
        assert!(str_header(extra_of(&v), headers::ERROR_MESSAGE).contains("boom"));
    }

    #[test]
    fn the_first_failure_header_is_kept_when_present() {
        let t = Topology::new("p");
        let mut hdrs = attempts(1);
        hdrs.insert(headers::FIRST_FAILURE.to_string(), HeaderValue::Int(42));
        for r in [raced("v"), Err(JobError::BadMessage("x".into()))] {
            let v = one(&t, &hdrs, "v", &r);
            let extra = extra_of(&v);
            assert!(!extra.contains_key(headers::FIRST_FAILURE), "{v:?}");
            // As the move publishes it: the delivery's headers, then the extra ones.
            let mut moved = hdrs.clone();
            moved.extend(extra.clone());
            assert_eq!(
                moved.get(headers::FIRST_FAILURE),
                Some(&HeaderValue::Int(42))
            );
            assert_eq!(
                moved.get(headers::LAST_FAILURE),
                Some(&HeaderValue::Int(NOW))
            );
            assert_eq!(moved.get(headers::ATTEMPTS), Some(&HeaderValue::Int(2)));
        }
    }

    #[test]
    fn a_batch_is_decided_per_delivery_in_order() {
        let t = Topology::new("p");
        let none = BTreeMap::new();
        let exhausted = attempts(t.retry_delays_ms.len() as i64);
        let results = [
            done("a", Outcome::Migrated),
            raced("b"),
            Err(JobError::NotFound { viz: "c".into() }),
            raced("d"),
            done("e", Outcome::Conflict),
        ];
        let hdrs = [&none, &none, &none, &exhausted, &none];
        let vizzes = ["a", "b", "c", "d", "e"];
        let v = decide(
            &t,
            NOW,
            hdrs.iter()
                .zip(vizzes)
                .zip(&results)
                .map(|((h, viz), r)| (*h, viz, r)),
        );
        assert_eq!(v.len(), 5);
        assert_eq!(v[0], Verdict::Ack(Outcome::Migrated));
        assert!(matches!(&v[1], Verdict::Retry { queue, .. } if *queue == t.retry(0)));
        assert_eq!(str_header(extra_of(&v[1]), headers::VIZ), "b");
        assert_eq!(v[2], Verdict::Skip);
        assert!(matches!(&v[3], Verdict::DeadLetter { .. }));
        assert_eq!(str_header(extra_of(&v[3]), headers::VIZ), "d");
        assert_eq!(v[4], Verdict::Ack(Outcome::Conflict));
        assert!(decide(&t, NOW, []).is_empty());
    }

    #[test]
    fn batch_size_is_capped_by_concurrency_and_never_zero() {
        let o = |concurrency, batch_size| Options {
            concurrency,
            batch_size,
            ..Options::default()
        };
        assert_eq!(
            Options::default().batch_jobs(),
            usize::from(DEFAULT_BATCH_SIZE)
        );
        assert_eq!(o(64, 32).batch_jobs(), 32);
        assert_eq!(o(8, 32).batch_jobs(), 8);
        assert_eq!(o(1, 32).batch_jobs(), 1);
        assert_eq!(o(0, 32).batch_jobs(), 1);
        assert_eq!(o(8, 0).batch_jobs(), 1);
        assert_eq!(o(0, 0).prefetch(), 1);
        assert_eq!(o(64, 0).prefetch(), 64);
    }

    /// Drops flip their flag: a migration's future dropped (aborted) shows here.
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    async fn until_set(flag: &AtomicBool) -> bool {
        for _ in 0..1000 {
            if flag.load(Ordering::SeqCst) {
                return true;
            }
            tokio::task::yield_now().await;
        }
        flag.load(Ordering::SeqCst)
    }

    /// The task of a batch aborted (drain deadline, lost session) takes its migration with it:
    /// nothing of its jobs runs on beside their redelivered copies.
    #[tokio::test]
    async fn aborting_a_delivery_stops_its_migration() {
        let stats = Arc::new(Stats::default());
        let dropped = Arc::new(AtomicBool::new(false));
        let (flag, s) = (Flag(dropped.clone()), stats.clone());
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let batch = tokio::spawn(async move {
            migrate_contained(
                &s,
                vec![job("a"), job("b"), job("c")],
                move |_| async move {
                    let _flag = flag;
                    let _ = started_tx.send(());
                    std::future::pending::<Vec<Result<Done, JobError>>>().await
                },
                |_| async { unreachable!("the batch never fails") },
            )
            .await
        });
        started.await.unwrap();
        assert_eq!(stats.migrations_running.load(Ordering::SeqCst), 3);
        batch.abort();
        let _ = batch.await;
        assert!(until_set(&dropped).await, "the migration kept running");
        assert_eq!(stats.migrations_running.load(Ordering::SeqCst), 0);
        assert_eq!(stats.max_migrations_running.load(Ordering::SeqCst), 3);
    }

    /// The same once the batch panicked and its jobs run alone.
    #[tokio::test]
    async fn aborting_a_batch_stops_the_jobs_running_alone() {
        let stats = Arc::new(Stats::default());
        let dropped = Arc::new(AtomicBool::new(false));
        let (d, s) = (dropped.clone(), stats.clone());
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        let batch = tokio::spawn(async move {
            migrate_contained(
                &s,
                vec![job("a"), job("b")],
                |_| async { panic!("in the batch") },
                move |j| {
                    let (flag, tx) = (Flag(d.clone()), started_tx.clone());
                    async move {
                        let _flag = flag;
                        let _ = tx.send(j.viz);
                        std::future::pending::<Result<Done, JobError>>().await
                    }
                },
            )
            .await
        });
        started.recv().await.unwrap();
        started.recv().await.unwrap();
        assert_eq!(stats.migrations_running.load(Ordering::SeqCst), 2);
        batch.abort();
        let _ = batch.await;
        assert!(
            until_set(&dropped).await,
            "a job running alone kept running"
        );
        assert_eq!(stats.migrations_running.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_batch_returns_one_result_per_job_in_order() {
        let stats = Arc::new(Stats::default());
        let ran = migrate_contained(
            &stats,
            vec![job("a"), job("b"), job("c")],
            |jobs| async move {
                jobs.iter()
                    .map(|j| done(&j.viz, Outcome::Migrated))
                    .collect()
            },
            |_| async { unreachable!("the batch did not fail") },
        )
        .await;
        let vizzes: Vec<_> = ran
            .iter()
            .map(|(r, n)| (r.as_ref().unwrap().viz.as_str(), *n))
            .collect();
        assert_eq!(vizzes, [("a", 3), ("b", 3), ("c", 3)]);
        assert_eq!(stats.migrations_running.load(Ordering::SeqCst), 0);
        assert_eq!(stats.max_migrations_running.load(Ordering::SeqCst), 3);
        // Nothing to run: no task.
        let none = migrate_contained(
            &stats,
            Vec::new(),
            |_| async { unreachable!() },
            |_| async { unreachable!() },
        )
        .await;
        assert!(none.is_empty());
    }

    /// A panic in the batch's task: each job runs again alone, and the panic lands on the viz
    /// that causes it; the others end as they would alone.
    #[tokio::test]
    async fn a_panicking_batch_runs_its_jobs_alone_and_pins_the_panic() {
        let stats = Arc::new(Stats::default());
        let ran = migrate_contained(
            &stats,
            vec![job("a"), job("bad"), job("c")],
            |jobs| async move {
                if jobs.iter().any(|j| j.viz == "bad") {
                    panic!("poisoned by bad");
                }
                Vec::new()
            },
            |j| async move {
                if j.viz == "bad" {
                    panic!("bad viz {}", j.viz);
                }
                done(&j.viz, Outcome::Unchanged)
            },
        )
        .await;
        assert_eq!(ran.len(), 3);
        assert!(ran.iter().all(|(_, n)| *n == 1), "each ran alone");
        assert_eq!(ran[0].0.as_ref().unwrap().viz, "a");
        assert_eq!(ran[2].0.as_ref().unwrap().viz, "c");
        match &ran[1].0 {
            Err(JobError::Panic { viz, message }) => {
                assert_eq!(viz, "bad");
                assert_eq!(message, "bad viz bad");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(stats.migrations_running.load(Ordering::SeqCst), 0);
    }

    /// A batch that breaks the one-result-per-job contract is treated like a panic.
    #[tokio::test]
    async fn a_batch_short_of_results_runs_its_jobs_alone() {
        let stats = Arc::new(Stats::default());
        let ran = migrate_contained(
            &stats,
            vec![job("a"), job("b")],
            |_| async { vec![done("a", Outcome::Migrated)] },
            |j| async move { done(&j.viz, Outcome::Migrated) },
        )
        .await;
        let vizzes: Vec<_> = ran
            .iter()
            .map(|(r, n)| (r.as_ref().unwrap().viz.as_str(), *n))
            .collect();
        assert_eq!(vizzes, [("a", 1), ("b", 1)]);
    }

    /// Whatever attempt number the headers give (`job::attempt`: 1 to `i64::MAX`), the retry
    /// queue a verdict would name exists.
    #[test]
    fn the_retry_queue_of_any_attempt_exists() {
        let t = Topology::new("p");
        for a in [1, 2, i64::MAX] {
            let q = t.retry(usize::try_from(a - 1).unwrap_or(0));
            assert!(t.all_queues().contains(&q), "{q}");
        }
    }
}
