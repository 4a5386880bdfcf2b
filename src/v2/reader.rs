//! Reading V2: the only code that talks to the V2 MongoDB. It can only read — no method here
//! issues a write, an index build or any other command that changes V2 — and every read first
//! takes a token from a per-process rate limiter (`governor`), so a fleet of N pods reads V2 at
//! no more than N × the configured budget. Reads prefer a secondary when one exists. It also
//! counts its queries and the time they waited for the limiter (the worker's metrics read them).

use crate::history::{self, MissingHead};
use crate::v2::V2Viz;
use futures_util::TryStreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use mongodb::bson::{doc, Document, RawDocumentBuf};
use mongodb::options::{CollectionOptions, FindOptions, ReadPreference, SelectionCriteria};
use mongodb::{Collection, Database};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Documents per reply of a multi-document query; every reply costs one token.
const BATCH: u32 = 1000;

/// An op's `v` for ordering a log (ops without one first, as the server sorts them).
fn op_version(op: &Value) -> Option<i64> {
    let v = op.get("v")?;
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

/// Vizzes whose op logs one query of [`Reader::vizzes`] reads (`d` `$in` that many ids). A
/// batch's logs take a few queries rather than one: a server that matches `$in` by comparing
/// each document with every id (SecantusDB does, after the index lookup) spends per document
/// time proportional to the ids, and op logs are most of a batch's documents (~60 µs per op at
/// 32 ids vs ~40 at 8, measured on SecantusDB 0.7). On MongoDB the index bounds the work
/// either way; a few more queries per batch stay far inside the V2 budget.
pub const OP_LOG_IDS_PER_QUERY: usize = 8;

/// Default cap on one viz's op log as V2 stores it (BSON bytes). A job holds its op log in
/// memory several times over (BSON, JSON, parsed ops) while it rebuilds history; past this cap
/// the log is not loaded and the history falls back to the two-commit form with the reason
/// recorded (spec 3.5: an unusable op log), so one huge log cannot take a pod's memory.
pub const DEFAULT_MAX_OP_LOG_BYTES: usize = 16 * 1024 * 1024;

/// Times a viz's op log is read again when it lacks the op its snapshot names (see
/// [`history::MissingHead`]) before history falls back. The re-reads go to the primary when
/// there is one, which has every op of every snapshot, so one normally settles it; the second,
/// after [`HEAD_OP_REREAD_PAUSE`], is for a replica set between primaries.
pub const HEAD_OP_REREADS: u32 = 2;

/// Pause before each re-read after the first (see [`HEAD_OP_REREADS`]).
pub const HEAD_OP_REREAD_PAUSE: Duration = Duration::from_millis(250);

/// V2 collection names (production database `vizhub`).
pub mod collections {
    pub const INFO: &str = "documentInfo";
    pub const CONTENT: &str = "documentContent";
    pub const CONTENT_OPS: &str = "o_documentContent";
    pub const USER: &str = "user";
    pub const EVENT_RECORDS: &str = "eventRecords";
}

/// One kind of V2 query the fleet makes, and the index that serves it. [`QUERIES`] lists them
/// all, here beside the methods that make them (each method names its entries), so `planner
/// check` asks V2 about exactly the queries the fleet runs.
#[derive(Debug, Clone, Copy)]
pub struct V2Query {
    /// Short stable name (`planner check --json` reports it).
    pub name: &'static str,
    pub collection: &'static str,
    /// Who makes it, for the operator.
    pub used_by: &'static str,
    /// The index keys (ascending) that serve it: an index whose keys begin with these fields,
    /// in this order, covers the query.
    pub index: &'static [&'static str],
    /// A query of this shape (filter, sort) for `explain`.
    pub example: fn() -> (Document, Option<Document>),
}

/// Every V2 query shape the planner, the workers and `planner verify` issue.
pub const QUERIES: [V2Query; 12] = [
    V2Query {
        name: "info-by-id",
        collection: collections::INFO,
        used_by: "worker (documentInfo of a job's viz, of a batch's vizzes with $in, fork parents' forkedFrom), plan/verify --viz",
        index: &["_id"],
        example: || (doc! {"_id": "x"}, None),
    },
    V2Query {
        name: "info-by-created",
        collection: collections::INFO,
        used_by: "planner --next-batch/--all/windows, verify: documentInfo by createdTimestamp, in (createdTimestamp, _id) order",
        index: &["createdTimestamp", "_id"],
        example: || {
            (
                doc! {"createdTimestamp": {"$gte": 0}},
                Some(doc! {"createdTimestamp": 1, "_id": 1}),
            )
        },
    },
    V2Query {
        name: "info-by-updated",
        collection: collections::INFO,
        used_by: "planner windows (--from/--to, --since-last), verify --from: documentInfo by lastUpdatedTimestamp",
        index: &["lastUpdatedTimestamp"],
        example: || (doc! {"lastUpdatedTimestamp": {"$gte": 0, "$lt": 1}}, None),
    },
    V2Query {
        name: "info-by-upvote-time",
        collection: collections::INFO,
        used_by: "planner windows (--from/--to, --since-last), verify --from: documentInfo by upvotes.timestamp",
        index: &["upvotes.timestamp"],
        example: || {
            (
                doc! {"upvotes": {"$elemMatch": {"timestamp": {"$gte": 0, "$lt": 1}}}},
                None,
            )
        },
    },
    V2Query {
        name: "content-by-id",
        collection: collections::CONTENT,
        used_by: "worker: documentContent of a job's viz (of a batch's vizzes with $in); its size ($bsonSize) before a job run alone reads it",
        index: &["_id"],
        example: || (doc! {"_id": "x"}, None),
    },
    V2Query {
        name: "op-log-by-viz",
        collection: collections::CONTENT_OPS,
        used_by: "worker: o_documentContent of a job's viz ({d}), in v order (again from the primary when it lacks the snapshot's head op); its size ($bsonSize of {d}-matched ops) before a job run alone reads it",
        index: &["d", "v"],
        example: || (doc! {"d": "x"}, Some(doc! {"v": 1})),
    },
    V2Query {
        name: "op-log-by-vizzes",
        collection: collections::CONTENT_OPS,
        used_by: "worker batches: o_documentContent of a batch's vizzes ({d: {$in}}, a few ids per query; put in v order by the worker; again from the primary for logs that lack their snapshot's head op)",
        index: &["d", "v"],
        example: || (doc! {"d": {"$in": ["x", "y"]}}, None),
    },
    V2Query {
        name: "users-by-id",
        collection: collections::USER,
        used_by: "worker: owners, collaborators and upvoters ({_id: {$in}})",
        index: &["_id"],
        example: || (doc! {"_id": {"$in": ["x"]}}, None),
    },
    V2Query {
        name: "event-record-by-id",
        collection: collections::EVENT_RECORDS,
        used_by: "worker: a viz's page-view record ({id}; a batch's with {id: {$in}})",
        index: &["id"],
        example: || (doc! {"id": "x"}, None),
    },
    V2Query {
        name: "info-sources-scan",
        collection: collections::INFO,
        used_by: "planner --since-last change detection: every documentInfo, projected to what the translation reads, in _id order",
        index: &["_id"],
        example: || (doc! {}, Some(doc! {"_id": 1})),
    },
    V2Query {
        name: "content-versions-scan",
        collection: collections::CONTENT,
        used_by: "planner --since-last change detection: every documentContent's _v, in _id order",
        index: &["_id"],
        example: || (doc! {}, Some(doc! {"_id": 1})),
    },
    V2Query {
        name: "pageview-records-scan",
        collection: collections::EVENT_RECORDS,
        used_by: "planner --since-last change detection: the per-viz page-view records' all.all (an id range)",
        index: &["id"],
        example: || {
            (
                doc! {"id": {"$gte": PAGEVIEW_PREFIX, "$lt": PAGEVIEW_PREFIX_END}},
                None,
            )
        },
    },
];

/// Documents per reply of a change-detection scan ([`Reader::scan_sources`] and its siblings):
/// their projected documents are small (an info's upvotes list is the largest part), so a
/// reply of this many stays far below the server's 16 MiB, and a scan of 100,000 vizzes
/// costs ~20 replies per collection.
pub const SCAN_BATCH: u32 = 5000;

/// Every per-viz page-view record's id starts so (see [`super::pageview_event_id`]); the
/// `id` range `[PAGEVIEW_PREFIX, PAGEVIEW_PREFIX_END)` holds exactly them (`;` follows `:`).
const PAGEVIEW_PREFIX: &str = "event.pageview.viz.owner:";
const PAGEVIEW_PREFIX_END: &str = "event.pageview.viz.owner;";

/// What change detection reads of V2 ([`Reader::scan_sources`]).
#[derive(Debug, Default)]
pub struct SourceScan {
    /// Every `documentInfo`, projected to the fields the translation reads.
    pub infos: Vec<crate::v2::DocumentInfo>,
    /// `documentContent` `_v` by `_id`.
    pub content_versions: HashMap<String, u64>,
    /// Page views (`all.all` of the per-viz page-view record) by viz id.
    pub page_views: HashMap<String, f64>,
}

/// Which members of V2's replica set a query may go to.
#[derive(Debug, Clone, Copy)]
enum Node {
    /// A secondary when there is one (every read's default: V2's primary serves its users).
    Secondary,
    /// The primary when there is one: it has every op of every snapshot (see
    /// [`history::MissingHead`]), for the rare re-read of an op log that lacks its head op.
    Primary,
}

/// BSON bytes of a viz's V2 documents, as [`Reader::sizes`] finds them before they are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sizes {
    pub content: usize,
    pub op_log: usize,
    /// Op-log documents.
    pub ops: usize,
}

/// What an op costs in memory beyond its BSON bytes once read as JSON (a node overhead per
/// field: [`crate::cache::approx_bytes`]). Measured: 1,266 B per op over the primordial
/// fixture's 372 ops, 637 over a 6-op log of small ones.
const OP_OVERHEAD: usize = 1280;

impl Sizes {
    /// Roughly what these documents hold once read (what `crate::cache::approx_bytes` counts
    /// of them after the read), with an op log past `cap` not read: content twice its BSON
    /// (1.6–1.8 × measured on the fixtures), the log its bytes plus [`OP_OVERHEAD`] per op.
    pub fn in_memory(&self, cap: usize) -> usize {
        let log = if self.op_log > cap {
            0
        } else {
            self.op_log
                .saturating_add(self.ops.saturating_mul(OP_OVERHEAD))
        };
        self.content.saturating_mul(2).saturating_add(log)
    }
}

/// A count the server sums (an int32, int64 or double, as it sees fit).
fn count(b: Option<&mongodb::bson::Bson>) -> usize {
    use mongodb::bson::Bson;
    match b {
        Some(Bson::Int32(n)) => usize::try_from(*n).unwrap_or(0),
        Some(Bson::Int64(n)) => usize::try_from(*n).unwrap_or(0),
        Some(Bson::Double(f)) if *f > 0.0 => *f as usize,
        _ => 0,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The head op `content` (a raw `documentContent`) names when `ops`, its op log as read, lack
/// it and reading the log again may find it ([`MissingHead::is_retryable`] at `now_ms`).
fn lacks_head(content: &Value, ops: &[Value], now_ms: i64) -> Option<MissingHead> {
    // A content whose envelope does not parse fails its job later, with the reason.
    let envelope = super::Envelope::deserialize(content).ok()?;
    let missing = history::missing_head(
        envelope.version.unwrap_or(0),
        envelope.op_link.as_deref(),
        ops.iter().filter_map(super::raw_id_of),
    )?;
    let mtime = envelope.meta.as_ref().and_then(|m| m.mtime);
    missing.is_retryable(mtime, now_ms).then_some(missing)
}

/// A batch's V2 documents ([`Reader::vizzes`]).
#[derive(Default)]
pub struct BatchRead {
    pub vizzes: HashMap<String, V2Viz>,
    /// Vizzes to read alone: holding them would have taken the batch past its byte budget, or
    /// their op log passes the op-log cap.
    pub deferred: Vec<String>,
}

/// The bytes a batch read holds, per viz and in all, within its budget.
#[derive(Default)]
struct Held {
    per_viz: HashMap<String, usize>,
    total: usize,
    /// Vizzes let go: past the budget or the op-log cap; they are read alone.
    dropped: std::collections::HashSet<String>,
}

impl Held {
    /// Hold `n` more bytes of `id`. False when `id` was let go already, or when holding them
    /// would take the batch past `budget`: `id` is then let go, what it held freed.
    fn take(&mut self, id: &str, n: usize, budget: usize) -> bool {
        if self.dropped.contains(id) {
            return false;
        }
        if self.total + n > budget {
            self.drop_viz(id);
            return false;
        }
        *self.per_viz.entry(id.to_string()).or_default() += n;
        self.total += n;
        true
    }

    /// Stop holding `n` bytes of `id` (a log about to be read again).
    fn free(&mut self, id: &str, n: usize) {
        if let Some(held) = self.per_viz.get_mut(id) {
            let n = n.min(*held);
            *held -= n;
            self.total -= n;
        }
    }

    fn drop_viz(&mut self, id: &str) {
        if let Some(n) = self.per_viz.remove(id) {
            self.total -= n;
        }
        self.dropped.insert(id.to_string());
    }
}

/// What a batch read holds so far: its contents and op logs, and their bytes.
#[derive(Default)]
struct Holding {
    held: Held,
    contents: HashMap<String, Value>,
    logs: HashMap<String, Vec<Value>>,
    /// Each op log's bytes as read so far (past the cap too: the cap applies to the log alone).
    log_bytes: HashMap<String, usize>,
}

impl Holding {
    /// Let go of `id`'s op log (to read it again), keeping its content.
    fn forget_log(&mut self, id: &str) {
        self.logs.remove(id);
        let n = self.log_bytes.remove(id).unwrap_or(0);
        self.held.free(id, n);
    }

    /// The vizzes of `ids` still held whose op log lacks the op their content snapshot names
    /// (at `now`, ms).
    fn lacking_head(&self, ids: &[String], now: i64) -> Vec<String> {
        ids.iter()
            .filter(|id| !self.held.dropped.contains(*id))
            .filter(|id| {
                self.contents.get(*id).is_some_and(|c| {
                    let log = self.logs.get(*id).map_or(&[][..], Vec::as_slice);
                    lacks_head(c, log, now).is_some()
                })
            })
            .cloned()
            .collect()
    }

    /// The batch read: each viz of `present` (in order) with its info (from `infos`), content
    /// and op log in `v` order, or deferred when it was dropped.
    fn into_read(self, present: Vec<String>, mut infos: HashMap<String, Value>) -> BatchRead {
        let Holding {
            held,
            mut contents,
            mut logs,
            ..
        } = self;
        for log in logs.values_mut() {
            // Stable: ops at one version (an orphan beside the chain's) keep the server's
            // order; history tells them apart by their links.
            log.sort_by_key(op_version);
        }
        let mut out = BatchRead::default();
        for id in present {
            if held.dropped.contains(&id) {
                out.deferred.push(id);
                continue;
            }
            let info = infos.remove(&id).expect("read only ids with an info");
            out.vizzes.insert(
                id.clone(),
                V2Viz {
                    info,
                    content: contents.remove(&id),
                    ops: logs.remove(&id).unwrap_or_default(),
                    ops_withheld: None,
                },
            );
        }
        out
    }
}

/// Read-only, rate-limited access to V2.
#[derive(Clone)]
pub struct Reader {
    db: Database,
    limiter: Arc<DefaultDirectRateLimiter>,
    reads: Arc<AtomicU64>,
    waits: Arc<AtomicU64>,
    /// Total time spent waiting for the limiter, in nanoseconds.
    wait_nanos: Arc<AtomicU64>,
    max_op_log_bytes: usize,
}

impl Reader {
    /// `reads_per_sec`: this process's V2 read budget (queries per second).
    pub fn new(db: Database, reads_per_sec: NonZeroU32) -> Self {
        Reader {
            db,
            limiter: Arc::new(RateLimiter::direct(Quota::per_second(reads_per_sec))),
            reads: Arc::default(),
            waits: Arc::default(),
            wait_nanos: Arc::default(),
            max_op_log_bytes: DEFAULT_MAX_OP_LOG_BYTES,
        }
    }

    /// Cap on one viz's op log (see [`DEFAULT_MAX_OP_LOG_BYTES`]).
    pub fn with_max_op_log_bytes(mut self, max: usize) -> Self {
        self.max_op_log_bytes = max;
        self
    }

    /// The cap on one viz's op log (see [`DEFAULT_MAX_OP_LOG_BYTES`]).
    pub fn max_op_log_bytes(&self) -> usize {
        self.max_op_log_bytes
    }

    /// Queries issued so far, and how many had to wait for the rate limiter.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.reads.load(Ordering::Relaxed),
            self.waits.load(Ordering::Relaxed),
        )
    }

    /// Total time queries spent waiting for the rate limiter.
    pub fn wait_time(&self) -> Duration {
        Duration::from_nanos(self.wait_nanos.load(Ordering::Relaxed))
    }

    async fn token(&self) {
        if self.limiter.check().is_err() {
            self.waits.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            self.limiter.until_ready().await;
            let waited = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.wait_nanos.fetch_add(waited, Ordering::Relaxed);
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    /// A `ping` command, for health checks. It reads no data, but V2 answers it like any
    /// command, so it takes a token of the budget and counts as a read (`/readyz` reuses its
    /// answer for a few seconds). Like the reads, it may be answered by a secondary.
    pub async fn ping(&self) -> mongodb::error::Result<()> {
        self.token().await;
        self.db
            .run_command(doc! {"ping": 1})
            .selection_criteria(SelectionCriteria::ReadPreference(
                ReadPreference::SecondaryPreferred { options: None },
            ))
            .await?;
        Ok(())
    }

    fn coll<T: Send + Sync>(&self, name: &str) -> Collection<T> {
        self.coll_on(name, Node::Secondary)
    }

    fn coll_on<T: Send + Sync>(&self, name: &str, node: Node) -> Collection<T> {
        let pref = match node {
            Node::Secondary => ReadPreference::SecondaryPreferred { options: None },
            Node::Primary => ReadPreference::PrimaryPreferred { options: None },
        };
        self.db.collection_with_options(
            name,
            CollectionOptions::builder()
                .selection_criteria(SelectionCriteria::ReadPreference(pref))
                .build(),
        )
    }

    async fn find_one(
        &self,
        coll: &str,
        filter: Document,
    ) -> mongodb::error::Result<Option<Value>> {
        self.token().await;
        Ok(self
            .coll::<Document>(coll)
            .find_one(filter)
            .await?
            .map(super::from_bson))
    }

    async fn find_all(
        &self,
        coll: &str,
        filter: Document,
        opts: Option<FindOptions>,
    ) -> mongodb::error::Result<Vec<Value>> {
        let docs = self.drain(coll, filter, opts.unwrap_or_default()).await?;
        Ok(docs.into_iter().map(super::from_bson).collect())
    }

    /// Every document of a query, in batches of [`BATCH`] (see [`Reader::visit`]).
    async fn drain(
        &self,
        coll: &str,
        filter: Document,
        opts: FindOptions,
    ) -> mongodb::error::Result<Vec<Document>> {
        let mut out = Vec::new();
        self.visit(coll, filter, opts, |d: Document| {
            out.push(d);
            Ok(ControlFlow::Continue(()))
        })
        .await?;
        Ok(out)
    }

    /// Hand each document of a query to `each`, in batches of [`BATCH`] (or the options' own
    /// `batch_size`), until the query ends
    /// (`true`) or `each` breaks (`false`: the rest is never fetched). Each batch is a command
    /// V2 answers (the `find`, then one `getMore` per further batch), and each takes a token
    /// first. (A batch the server cuts short at its 16 MiB reply limit costs an untaxed
    /// `getMore`; op-log and info documents are far smaller than 16 KiB, so that needs > 1,000
    /// of them.)
    async fn visit<T: DeserializeOwned + Send + Sync>(
        &self,
        coll: &str,
        filter: Document,
        opts: FindOptions,
        each: impl FnMut(T) -> mongodb::error::Result<ControlFlow<()>>,
    ) -> mongodb::error::Result<bool> {
        self.visit_on(Node::Secondary, coll, filter, opts, each)
            .await
    }

    /// [`Reader::visit`], on the members `node` says.
    async fn visit_on<T: DeserializeOwned + Send + Sync>(
        &self,
        node: Node,
        coll: &str,
        filter: Document,
        mut opts: FindOptions,
        mut each: impl FnMut(T) -> mongodb::error::Result<ControlFlow<()>>,
    ) -> mongodb::error::Result<bool> {
        let batch = *opts.batch_size.get_or_insert(BATCH) as usize;
        self.token().await;
        let mut cursor = self
            .coll_on::<T>(coll, node)
            .find(filter)
            .with_options(opts)
            .await?;
        let mut seen = 0usize;
        loop {
            if seen > 0 && seen.is_multiple_of(batch) {
                // The next document needs a `getMore`.
                self.token().await;
            }
            let Some(d) = cursor.try_next().await? else {
                return Ok(true);
            };
            seen += 1;
            if each(d)?.is_break() {
                return Ok(false);
            }
        }
    }

    /// `documentInfo`, `documentContent` and the content op log of one viz (3 queries:
    /// `info-by-id`, `content-by-id`, `op-log-by-viz` in [`QUERIES`]). `None`
    /// when there is no `documentInfo` with that `_id`.
    ///
    /// The op log is read *after* the content snapshot: sharedb-mongo writes an op before the
    /// snapshot that contains it, so every op the snapshot we read names (`_o`, and the chain
    /// behind it) is already in the log then. Read the other way round, an edit landing between
    /// the two reads would give a snapshot whose newest op we never saw. Info goes alongside.
    /// Each query may go to another secondary, though, and one behind the snapshot's lacks its
    /// newest ops: a log that lacks the op the snapshot names is read again from the primary
    /// (see [`Reader::with_head`]), a query more.
    pub async fn viz(&self, id: &str) -> mongodb::error::Result<Option<V2Viz>> {
        self.viz_sized(id, None).await
    }

    /// [`Reader::viz`], once [`Reader::sizes`] told the size of the viz's op log: a log past the
    /// op-log cap is then not read at all (it would be cut at the cap and dropped).
    pub async fn viz_sized(
        &self,
        id: &str,
        sizes: Option<Sizes>,
    ) -> mongodb::error::Result<Option<V2Viz>> {
        let cap = self.max_op_log_bytes;
        let content_then_ops = async {
            let content = self
                .find_one(collections::CONTENT, doc! {"_id": id})
                .await?;
            let ops = match sizes {
                Some(s) if s.op_log > cap => Err(format!("{} bytes", s.op_log)),
                _ => self.op_log(id, Node::Secondary).await?,
            };
            let ops = match (&content, ops) {
                (Some(content), Ok(ops)) => self.with_head(id, content, ops).await?,
                (_, ops) => ops,
            };
            Ok::<_, mongodb::error::Error>((content, ops))
        };
        let (info, (content, ops)) = tokio::try_join!(
            self.find_one(collections::INFO, doc! {"_id": id}),
            content_then_ops,
        )?;
        let (ops, ops_withheld) = match ops {
            Ok(ops) => (ops, None),
            Err(read) => (
                Vec::new(),
                Some(format!(
                    "op log larger than the {} MiB cap ({read}): not loaded",
                    cap / (1024 * 1024)
                )),
            ),
        };
        Ok(info.map(|info| V2Viz {
            info,
            content,
            ops,
            ops_withheld,
        }))
    }

    /// `ops`, the op log read after `content`; or, when it lacks the op the snapshot names and
    /// the snapshot is recent enough for a lagging secondary to explain that
    /// ([`MissingHead::is_retryable`]), the log read again from the primary, up to
    /// [`HEAD_OP_REREADS`] times. A log that still lacks it is returned as read: history falls
    /// back, naming the op.
    async fn with_head(
        &self,
        id: &str,
        content: &Value,
        mut ops: Vec<Value>,
    ) -> mongodb::error::Result<Result<Vec<Value>, String>> {
        for attempt in 0..HEAD_OP_REREADS {
            let Some(missing) = lacks_head(content, &ops, now_ms()) else {
                return Ok(Ok(ops));
            };
            if attempt > 0 {
                tokio::time::sleep(HEAD_OP_REREAD_PAUSE).await;
            }
            tracing::debug!(viz = id, %missing, attempt, "reading the op log again, from the primary");
            // Freed before the log is read again: never two copies of it at once.
            drop(std::mem::take(&mut ops));
            match self.op_log(id, Node::Primary).await? {
                Ok(log) => ops = log,
                // Grown past the cap meanwhile: withheld like any such log.
                withheld @ Err(_) => return Ok(withheld),
            }
        }
        if let Some(missing) = lacks_head(content, &ops, now_ms()) {
            tracing::warn!(viz = id, %missing, rereads = HEAD_OP_REREADS, "the op log still lacks the snapshot's head op: history falls back");
        }
        Ok(Ok(ops))
    }

    /// BSON bytes of a viz's content and op log as V2 stores them, without reading them: two
    /// aggregates sent at once (`$bsonSize` of each document, MongoDB 4.4+), each opening with a
    /// `$match` on the one indexed field (`content-by-id`, `op-log-by-viz`). Not one aggregate
    /// with `$unionWith`: SecantusDB scans the whole op-log collection for a `$unionWith`
    /// sub-pipeline (a 20,000-viz migration stalled at ~1 viz/s on it, 880,000 ops scanned per
    /// job run alone). A job run alone takes its memory share from these before it reads (see
    /// `Migrator::migrate`): two queries more per such job, so a batch's fast path, which
    /// knows its sizes from its own read, never asks.
    pub async fn sizes(&self, id: &str) -> mongodb::error::Result<Sizes> {
        let sum = doc! {"$group": {"_id": null, "b": {"$sum": {"$bsonSize": "$$ROOT"}}, "n": {"$sum": 1}}};
        let summed = |coll: &'static str, field: &'static str| {
            let pipeline = vec![doc! {"$match": {field: id}}, sum.clone()];
            async move {
                self.token().await;
                let groups: Vec<Document> = self
                    .coll::<Document>(coll)
                    .aggregate(pipeline)
                    .await?
                    .try_collect()
                    .await?;
                Ok::<_, mongodb::error::Error>(
                    groups
                        .first()
                        .map_or((0, 0), |g| (count(g.get("b")), count(g.get("n")))),
                )
            }
        };
        let ((content, _), (op_log, ops)) = tokio::try_join!(
            summed(collections::CONTENT, "_id"),
            summed(collections::CONTENT_OPS, "d"),
        )?;
        Ok(Sizes {
            content,
            op_log,
            ops,
        })
    }

    /// The V2 documents of a batch of vizzes in a few queries (`info-by-id`, `content-by-id`
    /// with `$in`, then `op-log-by-vizzes`, one per [`OP_LOG_IDS_PER_QUERY`] vizzes), in the
    /// order [`Reader::viz`] reads one: contents before op logs, so every op a content snapshot
    /// names is in the log we read. Logs that lack their snapshot's head op all the same (a
    /// secondary behind the content's) are read again from the primary, together, as
    /// [`Reader::viz`] reads one again.
    ///
    /// `budget` bounds the BSON bytes held: a viz whose content or op log would take the batch
    /// past it, and a viz whose op log alone passes the reader's op-log cap, is returned in
    /// [`BatchRead::deferred`] for a read of its own ([`Reader::viz`], under the job's own
    /// memory share), each by itself: the rest of the batch is still read. Ids without a
    /// `documentInfo` are in neither map.
    pub async fn vizzes(&self, ids: &[String], budget: usize) -> mongodb::error::Result<BatchRead> {
        if ids.is_empty() {
            return Ok(BatchRead::default());
        }
        let infos = self.batch_infos(ids).await?;
        let present: Vec<String> = ids
            .iter()
            .filter(|i| infos.contains_key(*i))
            .cloned()
            .collect();
        if present.is_empty() {
            return Ok(BatchRead::default());
        }
        // Bytes held, per viz (its content, then its op log) and in all: a viz that would take
        // the batch past `budget` is dropped (what it held freed) and deferred by itself, and
        // the read goes on with the rest, so one large viz never sends its batch-mates to be
        // read alone. (A document over the budget is still fetched, once, and dropped.)
        let mut h = Holding::default();
        self.batch_contents(&present, budget, &mut h).await?;
        let read: Vec<String> = present
            .iter()
            .filter(|id| !h.held.dropped.contains(*id))
            .cloned()
            .collect();
        self.batch_logs(&read, Node::Secondary, budget, &mut h)
            .await?;
        self.reread_lacking_heads(&read, budget, &mut h).await?;
        Ok(h.into_read(present, infos))
    }

    /// The `documentInfo` of each of `ids` V2 has, by id (`info-by-id` with `$in`).
    async fn batch_infos(&self, ids: &[String]) -> mongodb::error::Result<HashMap<String, Value>> {
        let mut infos: HashMap<String, Value> = HashMap::new();
        self.visit(
            collections::INFO,
            doc! {"_id": {"$in": ids}},
            FindOptions::default(),
            |d: Document| {
                let v = super::from_bson(d);
                if let Some(id) = super::raw_id_of(&v) {
                    infos.insert(id, v);
                }
                Ok(ControlFlow::Continue(()))
            },
        )
        .await?;
        Ok(infos)
    }

    /// The contents of `ids` into `h` (`content-by-id` with `$in`), within `budget` (see
    /// [`Reader::vizzes`]).
    async fn batch_contents(
        &self,
        ids: &[String],
        budget: usize,
        h: &mut Holding,
    ) -> mongodb::error::Result<()> {
        self.visit(
            collections::CONTENT,
            doc! {"_id": {"$in": ids}},
            FindOptions::default(),
            |raw: RawDocumentBuf| {
                // A string: matched by `$in` on the batch's ids.
                let id = raw.get_str("_id").unwrap_or_default().to_string();
                if h.held.take(&id, raw.as_bytes().len(), budget) {
                    h.contents.insert(id, super::from_bson(raw.to_document()?));
                }
                Ok(ControlFlow::Continue(()))
            },
        )
        .await?;
        Ok(())
    }

    /// A log read from a secondary behind its snapshot's lacks the op the snapshot names (see
    /// [`Reader::with_head`]): those few logs of `read` are read again, together, from the
    /// primary, up to [`HEAD_OP_REREADS`] times. Queries only for them, so a batch of logs that
    /// are whole costs none.
    async fn reread_lacking_heads(
        &self,
        read: &[String],
        budget: usize,
        h: &mut Holding,
    ) -> mongodb::error::Result<()> {
        let mut again = h.lacking_head(read, now_ms());
        for attempt in 0..HEAD_OP_REREADS {
            if again.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(HEAD_OP_REREAD_PAUSE).await;
            }
            tracing::debug!(vizzes = ?again, attempt, "reading op logs that lack their snapshot's head op again, from the primary");
            for id in &again {
                h.forget_log(id);
            }
            self.batch_logs(&again, Node::Primary, budget, h).await?;
            again = h.lacking_head(&again, now_ms());
        }
        if !again.is_empty() {
            tracing::warn!(vizzes = ?again, rereads = HEAD_OP_REREADS, "op logs still lack their snapshot's head op: history falls back");
        }
        Ok(())
    }

    /// The op logs of `ids` into `h`, [`OP_LOG_IDS_PER_QUERY`] vizzes per query, within
    /// `budget` (see [`Reader::vizzes`]). Unsorted on the server (sorting is the server's work,
    /// in SecantusDB ~5 % of a batch's); [`Reader::vizzes`] puts each log in `v` order.
    async fn batch_logs(
        &self,
        ids: &[String],
        node: Node,
        budget: usize,
        h: &mut Holding,
    ) -> mongodb::error::Result<()> {
        let cap = self.max_op_log_bytes;
        for chunk in ids.chunks(OP_LOG_IDS_PER_QUERY) {
            self.visit_on(
                node,
                collections::CONTENT_OPS,
                doc! {"d": {"$in": chunk}},
                FindOptions::default(),
                |raw: RawDocumentBuf| {
                    let n = raw.as_bytes().len();
                    let d = raw.get_str("d").unwrap_or_default().to_string();
                    if h.held.dropped.contains(&d) {
                        return Ok(ControlFlow::Continue(()));
                    }
                    let total = h.log_bytes.entry(d.clone()).or_default();
                    *total += n;
                    // Past the op-log cap: deferred, and read alone it is reported withheld.
                    let kept = *total <= cap && h.held.take(&d, n, budget);
                    if !kept {
                        h.held.drop_viz(&d);
                        h.logs.remove(&d);
                        h.contents.remove(&d);
                        return Ok(ControlFlow::Continue(()));
                    }
                    h.logs
                        .entry(d)
                        .or_default()
                        .push(super::from_bson(raw.to_document()?));
                    Ok(ControlFlow::Continue(()))
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Which of `ids` have a `documentInfo` (one projected query, `info-by-id` with `$in`).
    pub async fn existing(
        &self,
        ids: &[String],
    ) -> mongodb::error::Result<std::collections::HashSet<String>> {
        let mut out = std::collections::HashSet::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let opts = FindOptions::builder().projection(doc! {"_id": 1}).build();
        self.visit(
            collections::INFO,
            doc! {"_id": {"$in": ids}},
            opts,
            |d: Document| {
                if let Ok(id) = d.get_str("_id") {
                    out.insert(id.to_string());
                }
                Ok(ControlFlow::Continue(()))
            },
        )
        .await?;
        Ok(out)
    }

    /// Raw `eventRecords` docs by event id, one query (`event-record-by-id` with `$in`): the
    /// first record of each id, as [`Reader::event_record`] finds it.
    pub async fn event_records(
        &self,
        ids: &[String],
    ) -> mongodb::error::Result<HashMap<String, Value>> {
        let mut out = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        for d in self
            .find_all(collections::EVENT_RECORDS, doc! {"id": {"$in": ids}}, None)
            .await?
        {
            if let Some(id) = d.get("id").and_then(Value::as_str) {
                out.entry(id.to_string()).or_insert(d);
            }
        }
        Ok(out)
    }

    /// The content op log of `id` in `v` order, read as raw BSON so its size is known as it
    /// arrives: `Err(how much was read)` as soon as it passes the cap (the rest is never
    /// fetched).
    async fn op_log(
        &self,
        id: &str,
        node: Node,
    ) -> mongodb::error::Result<Result<Vec<Value>, String>> {
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        let cap = self.max_op_log_bytes;
        let opts = FindOptions::builder().sort(doc! {"v": 1}).build();
        let whole = self
            .visit_on(
                node,
                collections::CONTENT_OPS,
                doc! {"d": id},
                opts,
                |raw: RawDocumentBuf| {
                    bytes += raw.as_bytes().len();
                    if bytes > cap {
                        return Ok(ControlFlow::Break(()));
                    }
                    out.push(super::from_bson(raw.to_document()?));
                    Ok(ControlFlow::Continue(()))
                },
            )
            .await?;
        Ok(if whole {
            Ok(out)
        } else {
            Err(format!("stopped reading at {bytes} bytes"))
        })
    }

    /// Raw `user` docs by id, one query (`users-by-id`). Missing ids are simply absent from the map.
    pub async fn users(&self, ids: &[String]) -> mongodb::error::Result<HashMap<String, Value>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let docs = self
            .find_all(collections::USER, doc! {"_id": {"$in": ids}}, None)
            .await?;
        Ok(docs
            .into_iter()
            .filter_map(|d| Some((super::raw_id_of(&d)?, d)))
            .collect())
    }

    /// The `forkedFrom` of a viz (one projected query, `info-by-id`); `None` when it has none or is missing.
    pub async fn forked_from(&self, id: &str) -> mongodb::error::Result<Option<String>> {
        self.token().await;
        let doc = self
            .coll::<Document>(collections::INFO)
            .find_one(doc! {"_id": id})
            .projection(doc! {"forkedFrom": 1})
            .await?;
        Ok(doc.and_then(|d| d.get_str("forkedFrom").ok().map(str::to_string)))
    }

    /// The raw `eventRecords` doc with this event id, if any (`event-record-by-id`).
    pub async fn event_record(&self, id: &str) -> mongodb::error::Result<Option<Value>> {
        self.find_one(collections::EVENT_RECORDS, doc! {"id": id})
            .await
    }

    /// Projected `documentInfo` docs matching `filter`, sorted by `(createdTimestamp, _id)`.
    /// One query, drained in batches (each budgeted). Its filters are the `info-by-*` entries
    /// of [`QUERIES`] (an `$or` of the three for a window, `_id` for `--viz`).
    pub async fn scan_infos(
        &self,
        filter: Document,
        limit: Option<i64>,
    ) -> mongodb::error::Result<Vec<Document>> {
        let opts = FindOptions::builder()
            .projection(doc! {"_id": 1, "createdTimestamp": 1})
            .sort(doc! {"createdTimestamp": 1, "_id": 1})
            .limit(limit)
            .build();
        self.drain(collections::INFO, filter, opts).await
    }

    /// What change detection compares with the ledger (spec 4.1 `--since-last`): three scans,
    /// each projected to exactly what the translation reads and drained in replies of
    /// [`SCAN_BATCH`] (each takes a token): `documentInfo` (`info-sources-scan`),
    /// `documentContent`'s `_v` (`content-versions-scan`) and the page-view records' `all.all`
    /// (`pageview-records-scan`). No content text and no op log is read.
    pub async fn scan_sources(&self) -> mongodb::error::Result<SourceScan> {
        let by_id = |projection: Document| {
            FindOptions::builder()
                .projection(projection)
                .sort(doc! {"_id": 1})
                .batch_size(SCAN_BATCH)
                .build()
        };
        let info_fields = doc! {
            "_id": 1, "_type": 1, "id": 1, "documentType": 1, "owner": 1, "title": 1,
            "createdTimestamp": 1, "lastUpdatedTimestamp": 1, "height": 1, "forkedFrom": 1,
            "forkFromBackfilled": 1, "privacy": 1, "upvotes": 1, "collaborators": 1,
        };
        let mut scan = SourceScan::default();
        let infos = &mut scan.infos;
        self.visit(
            collections::INFO,
            doc! {},
            by_id(info_fields),
            |d: Document| {
                // An info the projection cannot type (a field of a shape V2 never wrote) is left
                // out: the window still plans it when its timestamps move, and its job says why.
                if let Ok(info) = crate::v2::parse_info(&super::from_bson(d)) {
                    infos.push(info);
                }
                Ok(ControlFlow::Continue(()))
            },
        )
        .await?;
        let versions = &mut scan.content_versions;
        self.visit(
            collections::CONTENT,
            doc! {},
            by_id(doc! {"_id": 1, "_v": 1}),
            |d: Document| {
                if let Ok(id) = d.get_str("_id") {
                    versions.insert(id.to_string(), count(d.get("_v")) as u64);
                }
                Ok(ControlFlow::Continue(()))
            },
        )
        .await?;
        let views = &mut scan.page_views;
        let opts = FindOptions::builder()
            .projection(doc! {"_id": 0, "id": 1, "all.all": 1})
            .batch_size(SCAN_BATCH)
            .build();
        let range = doc! {"id": {"$gte": PAGEVIEW_PREFIX, "$lt": PAGEVIEW_PREFIX_END}};
        self.visit(collections::EVENT_RECORDS, range, opts, |d: Document| {
            let d = super::from_bson(d);
            let viz = d["id"].as_str().and_then(crate::v2::pageview_viz);
            if let (Some(viz), Some(n)) = (viz, d["all"]["all"].as_f64()) {
                // The first record of an id, as the worker's read takes it.
                views.entry(viz.to_string()).or_insert(n);
            }
            Ok(ControlFlow::Continue(()))
        })
        .await?;
        Ok(scan)
    }

    /// The index key patterns of a V2 collection (`listIndexes`, read-only; one token). A
    /// collection V2 does not have has none.
    pub async fn index_keys(&self, coll: &str) -> mongodb::error::Result<Vec<Document>> {
        self.token().await;
        let listed = match self.coll::<Document>(coll).list_indexes().await {
            Ok(cursor) => cursor.try_collect::<Vec<_>>().await,
            Err(e) => Err(e),
        };
        match listed {
            Ok(models) => Ok(models.into_iter().map(|m| m.keys).collect()),
            // NamespaceNotFound: MongoDB answers listIndexes on a missing collection so.
            Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::Command(ref c) if c.code == 26) => {
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// The winning plan of a `find` (`explain` at `queryPlanner` verbosity: the server plans the
    /// query and runs nothing; one token).
    pub async fn explain(
        &self,
        coll: &str,
        filter: Document,
        sort: Option<Document>,
    ) -> mongodb::error::Result<Document> {
        self.token().await;
        let mut find = doc! {"find": coll, "filter": filter};
        if let Some(sort) = sort {
            find.insert("sort", sort);
        }
        let answer = self
            .db
            .run_command(doc! {"explain": find, "verbosity": "queryPlanner"})
            .selection_criteria(SelectionCriteria::ReadPreference(
                ReadPreference::SecondaryPreferred { options: None },
            ))
            .await?;
        Ok(answer
            .get_document("queryPlanner")
            .and_then(|q| q.get_document("winningPlan"))
            .cloned()
            .unwrap_or_default())
    }
}

/// The `documentInfo` filter of a window (half-open).
pub fn window_filter(from: i64, to: i64) -> Document {
    let range = doc! {"$gte": from, "$lt": to};
    doc! {"$or": [
        {"createdTimestamp": range.clone()},
        {"lastUpdatedTimestamp": range.clone()},
        {"upvotes": {"$elemMatch": {"timestamp": range}}},
    ]}
}

#[cfg(test)]
mod tests {
    use super::{count, lacks_head, op_version, Holding, Sizes, OP_OVERHEAD};
    use crate::history::REPLICATION_LAG_BOUND_MS;
    use mongodb::bson::Bson;
    use serde_json::{json, Value};

    const NOW: i64 = 1_700_000_000_000;

    /// A raw content at v3 naming op `h2` (as `{"$oid"}`, the way V2's ObjectIds read), last
    /// written `age_ms` ago.
    fn content(age_ms: i64) -> Value {
        json!({"_id": "viz", "_type": "json0", "_v": 3, "_o": {"$oid": "h2"},
               "_m": {"ctime": 0, "mtime": NOW - age_ms}, "files": []})
    }

    fn op(id: &str, v: u64) -> Value {
        json!({"_id": {"$oid": id}, "v": v, "d": "viz", "op": []})
    }

    /// Only a recent snapshot whose log lacks the op it names is read again: a log with the op,
    /// a snapshot older than any replica's lag (a truncated log) or one that names no op is not.
    #[test]
    fn a_log_is_read_again_only_when_it_lacks_a_recent_snapshots_head_op() {
        let whole = [op("h0", 0), op("h1", 1), op("h2", 2)];
        let lagging = &whole[..2];
        assert_eq!(lacks_head(&content(1_000), &whole, NOW), None);
        let missing = lacks_head(&content(1_000), lagging, NOW).expect("lacks its head");
        assert_eq!((missing.head.as_str(), missing.v), ("h2", 2));
        assert!(
            lacks_head(&content(1_000), &[], NOW).is_some(),
            "no log read at all"
        );
        let old = content(REPLICATION_LAG_BOUND_MS + 1);
        assert_eq!(lacks_head(&old, lagging, NOW), None);
        let mut unlinked = content(1_000);
        unlinked.as_object_mut().unwrap().remove("_o");
        assert_eq!(lacks_head(&unlinked, lagging, NOW), None);
        let mut no_mtime = content(1_000);
        no_mtime.as_object_mut().unwrap().remove("_m");
        assert_eq!(lacks_head(&no_mtime, lagging, NOW), None);
    }

    /// A job's memory before its read: content twice its BSON, the log its BSON plus a node
    /// overhead per op, nothing for a log past the cap (it is not read).
    #[test]
    fn sizes_estimate_what_a_read_holds_and_skip_a_log_past_the_cap() {
        let s = Sizes {
            content: 1_000,
            op_log: 50_000,
            ops: 10,
        };
        assert_eq!(s.in_memory(1 << 20), 2_000 + 50_000 + 10 * OP_OVERHEAD);
        assert_eq!(s.in_memory(49_999), 2_000);
        let huge = Sizes {
            content: usize::MAX,
            op_log: usize::MAX,
            ops: usize::MAX,
        };
        assert_eq!(huge.in_memory(usize::MAX), usize::MAX, "saturates");
    }

    #[test]
    fn server_sums_are_read_whatever_their_type() {
        assert_eq!(count(Some(&Bson::Int32(7))), 7);
        assert_eq!(count(Some(&Bson::Int64(1 << 40))), 1 << 40);
        assert_eq!(count(Some(&Bson::Double(12.0))), 12);
        assert_eq!(count(Some(&Bson::Int32(-1))), 0);
        assert_eq!(count(None), 0);
    }

    /// A batch letting go of a log to read it again frees the log's bytes, not the content's.
    #[test]
    fn forgetting_a_log_frees_its_bytes_only() {
        let mut h = Holding::default();
        assert!(h.held.take("a", 100, 1_000));
        assert!(h.held.take("a", 700, 1_000));
        h.log_bytes.insert("a".into(), 700);
        h.logs.insert("a".into(), vec![json!({})]);
        h.forget_log("a");
        assert_eq!((h.held.total, h.held.per_viz["a"]), (100, 100));
        assert!(h.logs.is_empty() && h.log_bytes.is_empty());
        // Its log, read again, fits the budget again.
        assert!(h.held.take("a", 700, 1_000));
    }

    /// A batch's op logs come back from the server in no set order: sorted by `v` here,
    /// stably (ops at one version keep their order), ops without a `v` first.
    #[test]
    fn op_logs_are_put_in_version_order() {
        let mut log: Vec<Value> = vec![
            json!({"v": 2, "k": "a"}),
            json!({"v": 0}),
            json!({"v": 2.0, "k": "b"}),
            json!({"k": "no v"}),
            json!({"v": 1}),
            json!({"v": 2, "k": "c"}),
        ];
        log.sort_by_key(op_version);
        let order: Vec<String> = log
            .iter()
            .map(|o| format!("{}{}", o["v"], o["k"].as_str().unwrap_or("")))
            .collect();
        assert_eq!(order, ["nullno v", "0", "1", "2a", "2.0b", "2c"]);
    }
}
