//! The planner: turns a selection of V2 vizzes into one job per viz on the work queue (spec 4.1).
//!
//! It reads `documentInfo` (projected to `_id` and `createdTimestamp`, through the
//! rate-limited [`Reader`]; `--since-last` also runs the change detection of [`changes`], which
//! scans V2's inputs projected and compares them with the ledger), never writes to V2, and publishes jobs in `(createdTimestamp, _id)`
//! order with pipelined publisher confirms. Each run is a `migrationbatch` whose id is derived
//! from its parameters: a run whose batch is already `published` publishes nothing, so a cron
//! job started twice is harmless. Cursors (`--since-last` high-water mark, `--next-batch`
//! position) advance only after every job of the run is confirmed by the broker.
//!
//! Decisions: `--all` batches are keyed by the minute they start (a re-run a minute later is a
//! deliberate reconcile and publishes again); `--since-last` windows end at `now - settle`
//! rounded down to the minute, so two cron starts within that minute share a batch id.
//!
//! Re-migrating on demand (spec 4.4): `--viz ID…` ([`Selection::Vizzes`]) and `--force`
//! ([`Selection::Forced`]) always publish a new batch. Their batch id is the one the selection
//! would have without forcing, plus a run id (`<mode>-<hash>-<run>`, the run id being the time
//! in milliseconds and 24 random bits, in hex): never one published before, and the prefix says
//! which selection it re-ran. `--viz` refuses ([`PlanError::UnknownVizzes`], exit 2) when any id
//! is not in V2's `documentInfo`, publishing nothing: such a job could only end as a dead letter.
//! Forcing a cursor mode (`--next-batch`, `--since-last`) re-publishes what its cursor selects
//! now and then moves the cursor as usual.

mod changes;

pub use changes::Change;

use crate::broker::{Publisher, Topology};
use crate::ids;
use crate::job::Job;
use crate::ledger::{Batch, Ledger};
use crate::v2::reader::{window_filter, Reader};
use mongodb::bson::{doc, Bson, Document};
use serde::Serialize;

/// `migrationstate` keys.
const SINCE_LAST: &str = "since-last";
const NEXT_BATCH: &str = "next-batch";

/// What to plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Created, last updated or upvoted in `[from, to)` (Unix seconds).
    Window { from: i64, to: i64 },
    /// The next `n` vizzes by `(createdTimestamp, _id)` after the last `--next-batch`.
    NextBatch(u64),
    /// From the high-water mark minus `overlap` to now minus `settle`.
    SinceLast { overlap_secs: i64, settle_secs: i64 },
    /// Everything.
    All,
    /// Exactly these V2 vizzes (`--viz`, ids of `documentInfo`), as a new batch on every run even
    /// if an earlier batch covered them. Duplicates count once.
    Vizzes(Vec<String>),
    /// The inner selection as a new batch even if the same selection was published before
    /// (`--force`). Build it with [`Selection::forced`].
    Forced(Box<Selection>),
}

impl Selection {
    /// This selection, publishing a new batch even if it was published before (`--force`).
    /// `Vizzes` always does, and forcing twice is forcing once.
    pub fn forced(self) -> Selection {
        match self {
            Selection::Forced(_) | Selection::Vizzes(_) => self,
            s => Selection::Forced(Box::new(s)),
        }
    }

    /// The selection without its `Forced` wrappers, and whether each run is a new batch.
    fn peel(&self) -> (&Selection, bool) {
        match self {
            Selection::Forced(inner) => (inner.peel().0, true),
            Selection::Vizzes(_) => (self, true),
            s => (s, false),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanReport {
    pub batch: String,
    pub mode: String,
    pub window: Option<(i64, i64)>,
    pub planned: u64,
    pub published: u64,
    /// The batch had been published before: nothing was published this time.
    pub already_published: bool,
    pub dry_run: bool,
    /// A new batch whatever was published before (`--viz`, `--force`).
    pub forced: bool,
    /// `--since-last`: the change-detection pass (what it read, what it found).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detection: Option<Detection>,
}

/// What a `--since-last` run's change detection did (spec 4.1): the vizzes it compared, what it
/// cost V2, and each changed viz with the fields that moved (also those the window planned
/// anyway).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Detection {
    /// V2 `documentInfo` docs scanned.
    pub scanned: u64,
    /// Vizzes the ledger holds as migrated, compared.
    pub compared: u64,
    /// V2 queries (replies) the pass took.
    pub v2_queries: u64,
    pub seconds: f64,
    /// Changed vizzes the window did not select.
    pub added: u64,
    pub changes: Vec<Change>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("reading V2 documentInfo: {0}")]
    V2(mongodb::error::Error),
    #[error("ledger (V3): {0}")]
    Ledger(mongodb::error::Error),
    #[error("publishing jobs: {0}")]
    Broker(#[from] crate::broker::BrokerError),
    #[error("invalid window: from {from} is not before to {to}")]
    EmptyWindow { from: i64, to: i64 },
    #[error("no viz ids given")]
    NoVizzes,
    /// `--viz` ids that V2's `documentInfo` does not have (nothing was published).
    #[error("not in V2 documentInfo: {}; nothing published", .0.join(", "))]
    UnknownVizzes(Vec<String>),
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A run id for a forced batch: milliseconds since the epoch and 24 random bits, in hex (ordered
/// by time like a ULID; two runs in the same millisecond still differ).
fn run_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{ms:011x}{:06x}", rand::random::<u32>() & 0x00ff_ffff)
}

struct Resolved {
    mode: &'static str,
    params: serde_json::Value,
    filter: Document,
    limit: Option<i64>,
    window: Option<(i64, i64)>,
}

/// What a selection means now: its batch's mode and parameters, the `documentInfo` filter and
/// limit, and its window; cursors read from the ledger.
async fn resolve(selection: &Selection, ledger: &Ledger) -> Result<Resolved, PlanError> {
    Ok(match selection {
        Selection::Window { from, to } => {
            if from >= to {
                return Err(PlanError::EmptyWindow {
                    from: *from,
                    to: *to,
                });
            }
            Resolved {
                mode: "window",
                params: serde_json::json!({"from": from, "to": to}),
                filter: window_filter(*from, *to),
                limit: None,
                window: Some((*from, *to)),
            }
        }
        Selection::NextBatch(n) => next_batch(*n, ledger).await?,
        Selection::SinceLast {
            overlap_secs,
            settle_secs,
        } => since_last(*overlap_secs, *settle_secs, ledger).await?,
        Selection::All => {
            let minute = now_secs().div_euclid(60) * 60;
            Resolved {
                mode: "all",
                params: serde_json::json!({"minute": minute}),
                filter: doc! {},
                limit: None,
                window: None,
            }
        }
        Selection::Vizzes(ids) => {
            let ids = unique(ids);
            if ids.is_empty() {
                return Err(PlanError::NoVizzes);
            }
            Resolved {
                mode: "viz",
                params: serde_json::json!({"vizzes": ids}),
                filter: doc! {"_id": {"$in": &ids}},
                limit: None,
                window: None,
            }
        }
        Selection::Forced(inner) => return Box::pin(resolve(inner, ledger)).await,
    })
}

/// `--next-batch n`: the `n` vizzes after the ledger's cursor, in `(createdTimestamp, _id)`
/// order (from the start without a cursor).
async fn next_batch(n: u64, ledger: &Ledger) -> Result<Resolved, PlanError> {
    let cursor = ledger.state(NEXT_BATCH).await.map_err(PlanError::Ledger)?;
    let filter = match cursor.as_ref().and_then(|c| {
        Some((
            c.get("created")?.as_i64()?,
            c.get("id")?.as_str()?.to_string(),
        ))
    }) {
        None => doc! {"createdTimestamp": {"$exists": true}},
        Some((created, id)) => doc! {"$or": [
            {"createdTimestamp": {"$gt": created}},
            {"createdTimestamp": created, "_id": {"$gt": id}},
        ]},
    };
    Ok(Resolved {
        mode: "next-batch",
        params: serde_json::json!({"n": n, "after": cursor}),
        filter,
        limit: Some(n as i64),
        window: None,
    })
}

/// `--since-last`: the window from the ledger's high-water mark (less `overlap_secs`) to the
/// last whole minute `settle_secs` ago.
async fn since_last(
    overlap_secs: i64,
    settle_secs: i64,
    ledger: &Ledger,
) -> Result<Resolved, PlanError> {
    let hwm = ledger
        .state(SINCE_LAST)
        .await
        .map_err(PlanError::Ledger)?
        .and_then(|v| v.as_i64());
    let to = (now_secs() - settle_secs).div_euclid(60) * 60;
    let from = hwm.map_or(0, |h| (h - overlap_secs).max(0));
    Ok(Resolved {
        mode: "since-last",
        params: serde_json::json!({"from": from, "to": to}),
        filter: window_filter(from, to.max(from + 1)),
        limit: None,
        window: Some((from, to)),
    })
}

/// Sorted, without duplicates.
fn unique(ids: &[String]) -> Vec<String> {
    let mut ids = ids.to_vec();
    ids.sort();
    ids.dedup();
    ids
}

/// A `documentInfo` `_id` as the job names it.
fn id_of(d: &Document) -> Option<String> {
    Some(match d.get("_id")? {
        Bson::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// `createdTimestamp` of a projected `documentInfo` (0 when absent).
fn created_of(d: &Document) -> i64 {
    match d.get("createdTimestamp") {
        Some(Bson::Int32(v)) => *v as i64,
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Double(v)) => *v as i64,
        _ => 0,
    }
}

/// Sort a selection for publishing: `urgent` vizzes first, then `(createdTimestamp, _id)`.
/// Change detection marks the vizzes whose visibility or collaborators (or owner) changed in V2 as
/// urgent: until their job runs a viz hidden on V2 stays public on V3 and an ex-collaborator
/// keeps write access, so on a long catch-up they go to the head of the queue. Re-syncs need no
/// parent first, so nothing orders them after other jobs.
fn publish_order(infos: &mut [Document], urgent: &std::collections::HashSet<&str>) {
    infos.sort_by_cached_key(|d| {
        let id = id_of(d);
        let later = !id.as_deref().is_some_and(|id| urgent.contains(id));
        (later, created_of(d), id)
    });
}

/// The change-detection pass of `--since-last` ([`changes`]): adds to `infos` (the window's
/// selection) every migrated viz V2 changed outside the window, in [`publish_order`].
async fn detect(
    reader: &Reader,
    ledger: &Ledger,
    infos: &mut Vec<Document>,
) -> Result<Detection, PlanError> {
    let started = std::time::Instant::now();
    let queries_before = reader.counters().0;
    let (scan, recorded) = tokio::try_join!(
        async { reader.scan_sources().await.map_err(PlanError::V2) },
        async { ledger.recorded_sources().await.map_err(PlanError::Ledger) },
    )?;
    let changes = changes::compare(&scan, &recorded);
    let selected: std::collections::HashSet<String> = infos.iter().filter_map(id_of).collect();
    let added: Vec<Document> = changes
        .iter()
        .filter(|c| !selected.contains(&c.viz))
        .map(|c| doc! {"_id": &c.viz, "createdTimestamp": c.created})
        .collect();
    let detection = Detection {
        scanned: scan.infos.len() as u64,
        compared: recorded.len() as u64,
        v2_queries: reader.counters().0 - queries_before,
        seconds: started.elapsed().as_secs_f64(),
        added: added.len() as u64,
        changes,
    };
    infos.extend(added);
    let urgent: std::collections::HashSet<&str> = detection
        .changes
        .iter()
        .filter(|c| c.is_access())
        .map(|c| c.viz.as_str())
        .collect();
    publish_order(infos, &urgent);
    tracing::info!(
        scanned = detection.scanned,
        compared = detection.compared,
        changed = detection.changes.len(),
        added = detection.added,
        v2_queries = detection.v2_queries,
        seconds = detection.seconds,
        "change detection"
    );
    Ok(detection)
}

/// Plan a selection: publish its jobs (unless `dry_run`), record the batch, advance cursors.
pub async fn plan(
    reader: &Reader,
    ledger: &Ledger,
    publisher: Option<&Publisher>,
    topology: &Topology,
    selection: &Selection,
    dry_run: bool,
) -> Result<PlanReport, PlanError> {
    let (selection, forced) = selection.peel();
    let mut r = resolve(selection, ledger).await?;
    let batch_id = batch_id(&mut r, forced);
    let (infos, detection) = select(reader, ledger, selection, r.filter, r.limit).await?;
    let mut report = PlanReport {
        batch: batch_id.clone(),
        mode: r.mode.to_string(),
        window: r.window,
        planned: infos.len() as u64,
        published: 0,
        already_published: false,
        dry_run,
        forced,
        detection,
    };
    if dry_run {
        return Ok(report);
    }
    let existing = ledger.batch(&batch_id).await.map_err(PlanError::Ledger)?;
    if existing.as_ref().is_some_and(|b| b.status == "published") {
        tracing::info!(batch = %batch_id, "batch already published; nothing to do");
        report.already_published = true;
        return Ok(report);
    }
    let publisher = publisher.expect("a publisher unless dry-run");
    let published = publish(
        ledger, publisher, topology, &batch_id, r.mode, &r.params, &infos,
    )
    .await?;
    // Cursors move only now that every job is confirmed.
    advance_cursors(ledger, selection, r.window, &infos).await?;
    report.published = published as u64;
    tracing::info!(batch = %batch_id, planned = report.planned, published, "batch published");
    Ok(report)
}

/// The batch's id: its mode and a fingerprint of its parameters, so that planning the same
/// selection again is the same batch; a forced one also names its run (recorded in
/// `r.params`), so that it is a new batch every time.
fn batch_id(r: &mut Resolved, forced: bool) -> String {
    let batch_id = format!(
        "{}-{}",
        r.mode,
        &ids::fingerprint(&serde_json::json!([r.mode, r.params]))[..16]
    );
    if !forced {
        return batch_id;
    }
    let run = run_id();
    r.params["run"] = serde_json::json!(run);
    format!("{batch_id}-{run}")
}

/// The selection's `documentInfo` docs (`filter`, `limit`: the resolved selection's), with the
/// change detection of `--since-last`. `--viz` ids V2 does not have refuse the whole plan.
async fn select(
    reader: &Reader,
    ledger: &Ledger,
    selection: &Selection,
    filter: Document,
    limit: Option<i64>,
) -> Result<(Vec<Document>, Option<Detection>), PlanError> {
    let mut infos = reader
        .scan_infos(filter, limit)
        .await
        .map_err(PlanError::V2)?;
    let detection = match selection {
        Selection::SinceLast { .. } => Some(detect(reader, ledger, &mut infos).await?),
        _ => None,
    };
    if let Selection::Vizzes(wanted) = selection {
        let found: std::collections::HashSet<String> = infos.iter().filter_map(id_of).collect();
        let unknown: Vec<String> = unique(wanted)
            .into_iter()
            .filter(|id| !found.contains(id))
            .collect();
        if !unknown.is_empty() {
            return Err(PlanError::UnknownVizzes(unknown));
        }
    }
    Ok((infos, detection))
}

/// Publish a job per viz of `infos` and wait for the broker's confirms; the ledger's batch
/// (`mode`, `params`: the resolved selection's) says `publishing` until then, `published`
/// after. Returns how many were published.
async fn publish(
    ledger: &Ledger,
    publisher: &Publisher,
    topology: &Topology,
    batch_id: &str,
    mode: &str,
    params: &serde_json::Value,
    infos: &[Document],
) -> Result<usize, PlanError> {
    let mut batch = Batch {
        id: batch_id.to_string(),
        mode: mode.to_string(),
        params: params.clone(),
        planned: infos.len() as i64,
        published: 0,
        status: "publishing".into(),
        created: now_secs(),
        published_at: None,
    };
    ledger.put_batch(&batch).await.map_err(PlanError::Ledger)?;
    let messages = infos.iter().filter_map(|d| {
        let job = Job {
            viz: id_of(d)?,
            batch: Some(batch_id.to_string()),
        };
        Some(job.message())
    });
    let published = publisher.publish_all(&topology.work(), messages).await?;
    batch.published = published as i64;
    batch.status = "published".into();
    batch.published_at = Some(now_secs());
    ledger.put_batch(&batch).await.map_err(PlanError::Ledger)?;
    Ok(published)
}

/// Move the selection's cursor past what was published: `--since-last` to its window's end,
/// `--next-batch` to its last viz (`infos` in publish order). Other selections have none.
async fn advance_cursors(
    ledger: &Ledger,
    selection: &Selection,
    window: Option<(i64, i64)>,
    infos: &[Document],
) -> Result<(), PlanError> {
    match selection {
        Selection::SinceLast { .. } => {
            let to = window.map_or(0, |w| w.1);
            ledger
                .set_state(SINCE_LAST, &serde_json::json!(to))
                .await
                .map_err(PlanError::Ledger)?;
        }
        Selection::NextBatch(_) => {
            if let Some(last) = infos.last() {
                let created = created_of(last);
                let id = last.get_str("_id").unwrap_or_default();
                ledger
                    .set_state(
                        NEXT_BATCH,
                        &serde_json::json!({"created": created, "id": id}),
                    )
                    .await
                    .map_err(PlanError::Ledger)?;
            }
        }
        Selection::Window { .. } | Selection::All | Selection::Vizzes(_) | Selection::Forced(_) => {
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forcing_wraps_once_and_viz_selections_are_always_new_batches() {
        let w = Selection::Window { from: 1, to: 2 };
        assert_eq!(w.peel(), (&w, false));
        let f = w.clone().forced();
        assert_eq!(f, Selection::Forced(Box::new(w.clone())));
        assert_eq!(f.clone().forced(), f);
        assert_eq!(f.peel(), (&w, true));
        let v = Selection::Vizzes(vec!["a".into()]);
        assert_eq!(v.clone().forced(), v);
        assert_eq!(v.peel(), (&v, true));
        let nested = Selection::Forced(Box::new(Selection::Forced(Box::new(Selection::All))));
        assert_eq!(nested.peel(), (&Selection::All, true));
    }

    #[test]
    fn run_ids_differ_and_sort_by_time() {
        let a = run_id();
        let b = run_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 17);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(run_id()[..11] > a[..11]);
    }

    #[test]
    fn access_changes_are_published_first_then_by_creation() {
        let mut infos = vec![
            doc! {"_id": "c", "createdTimestamp": 3},
            doc! {"_id": "b", "createdTimestamp": 2_i64},
            doc! {"_id": "z", "createdTimestamp": 9.0},
            doc! {"_id": "a", "createdTimestamp": 2},
            doc! {"_id": "y", "createdTimestamp": 1},
        ];
        publish_order(&mut infos, &["z", "c"].into_iter().collect());
        let ids: Vec<String> = infos.iter().filter_map(id_of).collect();
        assert_eq!(ids, ["c", "z", "y", "a", "b"]);
    }

    #[test]
    fn viz_ids_count_once() {
        let ids = ["b", "a", "b"].map(String::from);
        assert_eq!(unique(&ids), ["a", "b"]);
    }
}
