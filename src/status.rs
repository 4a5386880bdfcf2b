//! `planner status`: how far the migration is — queue depths, and per batch how many vizzes were
//! planned and how many ended in each outcome (from the ledger), the recent rate and an ETA.

use crate::broker::{self, BrokerError, Topology};
use crate::ledger::Ledger;
use crate::Outcome;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize)]
pub struct QueueDepth {
    pub queue: String,
    pub ready: u32,
    pub consumers: u32,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchStatus {
    pub batch: String,
    pub mode: String,
    pub status: String,
    pub planned: i64,
    pub outcomes: BTreeMap<String, i64>,
    /// Planned vizzes no job of this batch has ended yet (a viz re-planned by a later batch
    /// counts as ended here once this batch's job on it ended: `ledger::Ledger::record`).
    pub pending: i64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub queues: Vec<QueueDepth>,
    pub batches: Vec<BatchStatus>,
    pub outcomes: BTreeMap<String, i64>,
    /// Jobs ended per minute over the last 5 minutes.
    pub rate_per_min: f64,
    /// Seconds until the work and retry queues drain at that rate.
    pub eta_secs: Option<i64>,
    /// Vizzes whose last job kept an act of V3's users, by kind: `deleted_in_v3`,
    /// `owner_deleted_in_v3` (skipped) and `conflict` (spec 3.4).
    pub kept_for_v3: BTreeMap<String, i64>,
    /// Jobs taken by workers and not yet ended: pending jobs of published batches minus those
    /// still waiting in the work and retry queues. An estimate (AMQP does not report unacked
    /// counts; a worker's `/metrics` has the exact in-flight gauge).
    pub in_flight: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("ledger: {0}")]
    Ledger(#[from] mongodb::error::Error),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// The error kinds of jobs that kept an act of V3's users (spec 3.4), as `status` lists them.
const KEPT_FOR_V3: [&str; 3] = ["deleted_in_v3", "owner_deleted_in_v3", "conflict"];

/// The rate is measured over this many seconds of ledger records.
const RATE_WINDOW_SECS: i64 = 300;

pub async fn collect(
    ledger: &Ledger,
    conn: &lapin::Connection,
    t: &Topology,
) -> Result<Status, StatusError> {
    let mut queues = Vec::new();
    for q in t.all_queues() {
        // A failed passive declare closes its channel, so each queue gets its own; a queue not
        // declared yet (nothing planned) counts as empty.
        let channel = conn.create_channel().await.map_err(BrokerError::from)?;
        let (ready, consumers) = broker::queue_depth(&channel, &q).await.unwrap_or_default();
        queues.push(QueueDepth {
            queue: q,
            ready,
            consumers,
        });
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut outcomes = BTreeMap::new();
    let mut per_batch: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    let mut recent = 0;
    for c in ledger.outcome_counts(now - RATE_WINDOW_SECS).await? {
        match c.batch {
            Some(b) => {
                *per_batch
                    .entry(b)
                    .or_default()
                    .entry(c.outcome)
                    .or_insert(0) += c.n
            }
            None => {
                *outcomes.entry(c.outcome).or_insert(0) += c.n;
                recent += c.recent;
            }
        }
    }
    let batches = ledger
        .batches()
        .await?
        .into_iter()
        .map(|b| {
            let outcomes = per_batch.remove(&b.id).unwrap_or_default();
            let ended: i64 = outcomes.values().sum();
            BatchStatus {
                pending: (b.planned - ended).max(0),
                batch: b.id,
                mode: b.mode,
                status: b.status,
                planned: b.planned,
                outcomes,
            }
        })
        .collect::<Vec<_>>();
    let rate_per_min = recent as f64 * 60.0 / RATE_WINDOW_SECS as f64;
    let backlog: u32 = queues
        .iter()
        .filter(|q| q.queue != t.dead())
        .map(|q| q.ready)
        .sum();
    let eta_secs =
        (rate_per_min > 0.0).then(|| (backlog as f64 / rate_per_min * 60.0).round() as i64);
    let pending: i64 = batches
        .iter()
        .filter(|b: &&BatchStatus| b.status == "published")
        .map(|b| b.pending)
        .sum();
    let kept_for_v3 = ledger.kind_counts(&KEPT_FOR_V3).await?;
    Ok(Status {
        kept_for_v3,
        in_flight: (pending - backlog as i64).max(0),
        queues,
        batches,
        outcomes,
        rate_per_min,
        eta_secs,
    })
}

impl Status {
    /// Human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::from("queues:\n");
        for q in &self.queues {
            s += &format!(
                "  {:<40} {:>8} ready  {:>3} consumers\n",
                q.queue, q.ready, q.consumers
            );
        }
        s += "batches:\n";
        for b in &self.batches {
            let o: Vec<String> = b.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
            s += &format!(
                "  {:<32} {:<10} {:<10} planned {:>6}  pending {:>6}  {}\n",
                b.batch,
                b.mode,
                b.status,
                b.planned,
                b.pending,
                o.join(", ")
            );
        }
        let all: Vec<String> = [
            Outcome::Migrated,
            Outcome::Unchanged,
            Outcome::Skipped,
            Outcome::Failed,
            Outcome::Conflict,
        ]
        .iter()
        .map(|o| {
            format!(
                "{} {}",
                o.as_str(),
                self.outcomes.get(o.as_str()).unwrap_or(&0)
            )
        })
        .collect();
        s += &format!("outcomes: {}\n", all.join(", "));
        let kept: Vec<String> = KEPT_FOR_V3
            .iter()
            .map(|k| format!("{k} {}", self.kept_for_v3.get(*k).unwrap_or(&0)))
            .collect();
        s += &format!("kept for V3's users: {}\n", kept.join(", "));
        s += &format!("in flight: ~{}\n", self.in_flight);
        s += &format!(
            "rate: {:.1} jobs/min over the last 5 min; ETA {}\n",
            self.rate_per_min,
            self.eta_secs
                .map_or("unknown".to_string(), |e| format!("{}m{}s", e / 60, e % 60))
        );
        s
    }
}
