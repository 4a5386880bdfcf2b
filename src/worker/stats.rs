//! The worker's counters: the one place they are kept. The worker ([`super`]) counts; the
//! `/metrics` endpoint ([`crate::metrics`]) only reads them at scrape time, so the two never
//! keep copies that could disagree.

use crate::outcome::ErrorKind;
use crate::Outcome;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// Counters of a worker run ([`crate::metrics`] exports them).
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
    /// (every [`super::QUEUE_SAMPLE_EVERY`] while connected; -1 until the first sample).
    pub queue_messages: QueueDepths,
    /// Acks refused or failed because the channel died since the delivery (redelivered later).
    pub acks_lost: AtomicU64,
    /// Jobs received and not yet settled: buffered for a batch, migrating, or being acked or
    /// moved.
    pub in_flight: AtomicU64,
    /// Jobs migrating now (in their batch's task, or alone after the batch panicked), and the
    /// most that ever migrated at once: never more than `--concurrency`, reconnects included.
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
    /// Seconds each delivery took, from receipt (its wait for a batch included) to its ack (or
    /// its move to a retry queue or the DLQ). Retried jobs count once per attempt.
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
    pub(crate) fn ended(&self, outcome: Outcome) {
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

    pub(crate) fn set(&self, role: QueueRole, messages: u64) {
        let n = i64::try_from(messages).unwrap_or(i64::MAX);
        self.0[role as usize].store(n, Ordering::Relaxed);
    }
}
