//! Migrating one viz end to end: read V2, decide (fresh / re-sync / unchanged / conflict), make
//! sure its parent is in V3, translate, write V3 in the order that keeps a half-done job
//! invisible (users → commits → content → upvotes, permissions, analytics → info last), record
//! the ledger. [`Migrator::migrate`] is the one function a job runs; it returns an [`Outcome`] or
//! a [`JobError`] whose [`JobError::disposition`] tells the worker to retry or dead-letter.

use crate::cache::{approx_bytes, Cache};
use crate::ledger::{Ledger, Migrated, VizRecord};
use crate::outcome::{self, ErrorKind, LastMigration, Plan, V3Now};
use crate::retry::{self, Retryable};
use crate::translate::{
    self, Config, Context, Parent, ParentRequest, Prepared, Previous, TranslateError, Translation,
};
use crate::v2::reader::Reader;
use crate::v3::store::{is_transient_mongo, Snapshot, Store, StoreError};
use crate::v3::{collections as c3, Commit};
use crate::{ids, v3, Disposition, Outcome, PRIMORDIAL_VIZ_ID};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

mod batch;
mod expected;
mod write;

use write::{Counting, Known, PageViews, Ready};

/// How many times a fork recounts its parent's `forksCount` after losing the race for the
/// parent's info to a sibling, before its job re-runs.
const RECOUNT_TRIES: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Translate(#[from] TranslateError),
    #[error("viz {viz}: reading V2: {}", crate::v3::store::describe_mongo(source))]
    V2 {
        viz: String,
        source: mongodb::error::Error,
    },
    #[error("viz {viz}: writing V3: {source}")]
    V3 { viz: String, source: StoreError },
    #[error("viz {viz}: not in V2 documentInfo")]
    NotFound { viz: String },
    #[error("viz {viz}: parent {parent} cannot be used: {reason}")]
    Parent {
        viz: String,
        parent: String,
        reason: String,
    },
    /// The parent exists in V2 but its migration failed: the fork fails with it (never hung from
    /// the primordial viz instead), so requeueing both puts it under its real parent (spec 3.2).
    #[error("viz {viz}: parent {parent} failed: {source}")]
    ParentFailed {
        viz: String,
        parent: String,
        source: Box<JobError>,
    },
    #[error("viz {viz}: V3 chain of {commit}: {reason}")]
    Chain {
        viz: String,
        commit: String,
        reason: String,
    },
    #[error("viz {viz}: a concurrent V3 edit changed {docs:?} while we wrote; will retry")]
    Raced { viz: String, docs: Vec<String> },
    #[error("bad job message: {0}")]
    BadMessage(String),
    /// Delivered `deliveries` times before without an outcome: each worker holding it died.
    #[error("viz {viz}: delivered {deliveries} times without an outcome: each time the worker handling it died (killed for memory, crashed, abandoned at a drain) or could not record or move it; not run again")]
    CrashLoop { viz: String, deliveries: i64 },
    #[error("viz {viz}: panic while migrating: {message}")]
    Panic { viz: String, message: String },
}

impl JobError {
    pub fn disposition(&self) -> Disposition {
        match self {
            JobError::Translate(e) => e.disposition(),
            JobError::V2 { source, .. } if is_transient_mongo(source) => Disposition::Retry,
            JobError::V3 { source, .. } if source.is_transient() => Disposition::Retry,
            JobError::Raced { .. } => Disposition::Retry,
            // Retried while the parent's failure is (a dead letter otherwise, never a skip).
            JobError::ParentFailed { source, .. } => match source.disposition() {
                Disposition::Retry => Disposition::Retry,
                Disposition::Skip | Disposition::DeadLetter => Disposition::DeadLetter,
            },
            JobError::NotFound { .. } => Disposition::Skip,
            JobError::V2 { .. }
            | JobError::V3 { .. }
            | JobError::Parent { .. }
            | JobError::Chain { .. }
            | JobError::BadMessage(_)
            | JobError::CrashLoop { .. }
            | JobError::Panic { .. } => Disposition::DeadLetter,
        }
    }

    /// Another write got to one of our V3 documents first (a lost race or a server write
    /// conflict): running the job again at once is the cure.
    pub fn is_collision(&self) -> bool {
        match self {
            JobError::Raced { .. } => true,
            JobError::V3 { source, .. } => source.is_conflict(),
            JobError::ParentFailed { source, .. } => source.is_collision(),
            _ => false,
        }
    }

    /// Short, stable name for headers, metrics and `dlq stats`.
    pub fn kind(&self) -> &'static str {
        // One mapping for headers, the ledger, `dlq stats` and the `error_kind` label.
        self.error_kind().as_str()
    }

    /// The failure class (the `error_kind` label). Every variant, no wildcard: a new one does
    /// not compile until it has its kind.
    pub fn error_kind(&self) -> ErrorKind {
        match self {
            JobError::Translate(t) => t.error_kind(),
            JobError::V2 { .. } => ErrorKind::V2Read,
            JobError::V3 { .. } => ErrorKind::V3Write,
            JobError::NotFound { .. } => ErrorKind::NotFound,
            JobError::Parent { .. } | JobError::ParentFailed { .. } => ErrorKind::Parent,
            JobError::Chain { .. } => ErrorKind::Chain,
            JobError::Raced { .. } => ErrorKind::Raced,
            JobError::BadMessage(_) => ErrorKind::BadMessage,
            JobError::CrashLoop { .. } => ErrorKind::CrashLoop,
            JobError::Panic { .. } => ErrorKind::Panic,
        }
    }
}

/// A job's end.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub viz: String,
    pub outcome: Outcome,
    pub reason: Option<String>,
}

/// Everything a job needs; cheap to clone (shared handles).
#[derive(Clone)]
pub struct Migrator {
    pub v2: Reader,
    pub v3: Store,
    pub ledger: Ledger,
    pub cfg: Config,
    /// V3 content at a commit never changes (commits are immutable): cache it across jobs.
    content_cache: Arc<Cache<CachedContent>>,
    /// Each parent's commit chain with the `info.end` it ends at: the forks of one parent (most
    /// of VizHub forks a handful of vizzes) find their fork point without reading it again,
    /// while the parent's info still ends there.
    chain_cache: Arc<Cache<CachedChain>>,
    /// Users this worker synced (created, updated, or found as wanted or V3's own), by id, with
    /// the fingerprint of the V2 user it synced: an owner of many vizzes, or a frequent
    /// upvoter, is read and compared once, not once per viz, while V2 says the same of them.
    users_synced: Arc<Cache<String>>,
    /// Users V3 held live (or not at all) when this worker last asked, and when: a deletion of
    /// the account is looked for again once [`USERS_LIVE_FOR`] has passed, so the users of a
    /// catch-up are asked about once per burst, not once per batch.
    users_live: Arc<Cache<std::time::Instant>>,
    /// The jobs' working memory, in KiB: a job takes its share before it translates, so 16
    /// small jobs run at once but not 16 of 5 MiB each (see [`Migrator::memory_for_bytes`]).
    memory: Arc<tokio::sync::Semaphore>,
    /// Held by a batch from reading its parents in V3 to its last write (see
    /// [`Migrator::migrate_batch`]): this worker's batches in flight read V2 and prepare at
    /// once, but resolve and write one after another, so they never race each other for a
    /// shared parent (the primordial viz is a parent in most batches), and each reads the
    /// V3 state the one before it left.
    writing: Arc<tokio::sync::Mutex<()>>,
}

/// A viz's commit chain and the `info.end` it was read at.
type CachedChain = (String, Arc<Vec<Commit>>);

/// V3 content at a commit, and the vizzes whose commits lead there.
#[derive(Clone)]
struct CachedContent {
    content: Arc<Value>,
    ancestry: Arc<HashSet<String>>,
}

/// Byte budgets of the per-worker caches (see [`crate::cache`]): together well inside a
/// 256 MiB pod, beside the jobs' own working memory.
const CONTENT_CACHE_BYTES: usize = 16 << 20;
const CHAIN_CACHE_BYTES: usize = 8 << 20;
const USERS_SYNCED_BYTES: usize = 1 << 20;

/// How long a user V3 held live counts as live for this worker (see `Migrator::users_live`):
/// an account deleted in V3 within this long of the worker's last look can still have one of
/// its vizzes or entries migrated (the account itself is never re-created).
const USERS_LIVE_FOR: std::time::Duration = std::time::Duration::from_secs(300);

/// Working memory of all jobs of one worker together, in KiB (96 MiB): with the caches and the
/// process itself, inside the 256 MiB the manifests give a worker pod
/// (`tests/memory.rs` measures it).
pub const JOB_MEMORY_KIB: usize = 96 * 1024;

/// How many times a job holds its V2 documents' size while it runs (parsed V2, the states of
/// the history replay, V3 content, diffs, the BSON of its writes), measured roughly.
const WORKING_COPIES: usize = 8;

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn v2_err(viz: &str) -> impl FnOnce(mongodb::error::Error) -> JobError + '_ {
    move |source| JobError::V2 {
        viz: viz.to_string(),
        source,
    }
}

fn v3_err(viz: &str) -> impl FnOnce(StoreError) -> JobError + '_ {
    move |source| JobError::V3 {
        viz: viz.to_string(),
        source,
    }
}

fn ledger_err(viz: &str) -> impl FnOnce(mongodb::error::Error) -> JobError + '_ {
    move |source| JobError::V3 {
        viz: viz.to_string(),
        source: StoreError::Mongo(source),
    }
}

/// What translating a viz hangs it from: its parent's link, or nothing (a root).
fn parent_of(link: Option<&ParentLink>) -> Parent<'_> {
    match link {
        None => Parent::Root,
        Some(l) => Parent::Fork {
            viz: &l.viz,
            commit: &l.commit,
            content: &l.content,
            backfilled: l.backfilled,
        },
    }
}

/// The parent a viz hangs from, resolved in V3.
struct ParentLink {
    viz: String,
    commit: String,
    content: Arc<Value>,
    backfilled: bool,
    /// The parent's info as this job found it, when the job did not migrate the parent itself:
    /// what recounting its `forksCount` starts from.
    info: Option<Snapshot>,
}

/// What V3 holds of a viz whose info it has, against what the migration last wrote there
/// (spec 3.4).
struct V3Side {
    /// The Info the migration last wrote: the ledger's, else replayed from V3's info op log up
    /// to the migration's last op, else V3's own (nothing to tell V3's edits by).
    base_info: Value,
    /// V3's content at the migration's last `end` (`None`: no live content, or never migrated).
    base_content: Option<Value>,
    /// An op not the migration's was applied to the content since its last write.
    content_edited: bool,
    /// The content is past the version the ledger says the migration left it at.
    content_moved: bool,
    /// `info.end` as V3 holds it now.
    end_now: Option<String>,
}

/// The content's side of a re-sync.
#[derive(Debug, Clone)]
struct ResyncDecision {
    /// The content is the migration's (V3 neither edited nor committed since): V2's new
    /// commits and content op are written. Otherwise V3's content and chain stay.
    content_ours: bool,
    /// `content` when V2 changed the content that V3 owns.
    conflicts: Vec<String>,
    /// The ledger's last migration (`None`: the info is there but the ledger has no record).
    last: Option<Migrated>,
    /// V3's info still ends where the ledger says the migration left it: the commits this
    /// re-sync appends are linked from nothing until its info write.
    end_unmoved: bool,
    /// An attempt of ours stopped after some of its V3 writes (the content or `info.end` moved
    /// on without a ledger record): the commits it appended that the new chain does not reach
    /// are taken back once the info ends on the new chain.
    interrupted: bool,
}

impl V3Side {
    /// Decide the content's side once V2 is translated (`t`, from `prev`).
    fn decide(
        &self,
        t: &Translation,
        prev: Option<&Previous>,
        last: Option<Migrated>,
    ) -> ResyncDecision {
        let base_end = last.as_ref().map(|m| m.end.as_str());
        // V3 commits what its users edited: a commit of V3's comes with content ops not ours.
        // So with none, an `end` other than the ledger's is one an attempt of ours wrote before
        // it stopped (V2 moved on since: this translation appends elsewhere).
        let content_ours = !self.content_edited;
        let interrupted = self.content_moved || self.end_now.as_deref() != base_end;
        let v2_changed = match prev {
            Some(prev) => t.content != prev.content || t.commits.iter().any(|c| !c.ops.is_null()),
            None => true,
        };
        let conflicts = if !content_ours && v2_changed {
            vec!["content".to_string()]
        } else {
            Vec::new()
        };
        ResyncDecision {
            content_ours,
            conflicts,
            end_unmoved: base_end.is_some() && self.end_now.as_deref() == base_end,
            interrupted: interrupted && last.is_some(),
            last,
        }
    }
}

/// One run of a job through its viz and, recursively, the parents it migrates first.
struct Walk {
    /// Vizzes this run is migrating right now: the job's viz and the parents it is migrating
    /// first (a fork cycle back to one of them stops the recursion).
    visiting: HashSet<String>,
    /// A viz the ledger has no record of was never written to V3: its own snapshots are not
    /// read, and creates that find a doc there anyway make the job run again with
    /// `trust_ledger` off (see [`Migrator::migrate`]).
    trust_ledger: bool,
    /// An earlier attempt of the job ran (see [`Migrator::migrate_again`]).
    earlier: bool,
}

/// Info, content and page-view snapshots read of a viz, by id.
type Snapshots = (
    HashMap<String, Snapshot>,
    HashMap<String, Snapshot>,
    HashMap<String, Snapshot>,
);

/// What a job alone read of its viz (see [`Migrator::read_alone`]).
struct AloneRead {
    /// Its share of the memory budget, held until the job ends.
    _memory: Option<tokio::sync::OwnedSemaphorePermit>,
    p: Prepared,
    last: Option<VizRecord>,
    /// V2's page-view record of the viz.
    analytics: Option<Value>,
    known: Snapshots,
}

/// Where reading a job's viz got to.
enum Step {
    Read(Box<AloneRead>),
    /// The job ended there (a viz the spec skips), with its ledger record.
    Ended(Box<(Done, VizRecord)>),
}

/// What a job read of one viz, in V2 and the ledger: with the V3 snapshots it read
/// ([`Known`]), what translating it takes ([`Migrator::translated`]).
struct Reading<'a> {
    p: Prepared,
    batch: Option<String>,
    attempts: i64,
    /// What the ledger says the migration last wrote.
    migrated: Option<Migrated>,
    fingerprint: String,
    analytics_fingerprint: Option<String>,
    /// V2's page-view record of the viz.
    analytics: Option<&'a Value>,
    /// V2 `user` docs by id (the viz's, or its whole batch's).
    users: &'a HashMap<String, Value>,
    /// Users whose V3 account is deleted.
    deleted_users: &'a BTreeSet<String>,
    /// Whether the viz's own V3 documents were read (see [`Ready::read`]).
    read: bool,
    /// An earlier attempt of the job ran (see [`Ready::earlier`]).
    earlier: bool,
}

impl Migrator {
    pub fn new(v2: Reader, v3: Store, ledger: Ledger, cfg: Config) -> Self {
        Migrator {
            v2,
            v3,
            ledger,
            cfg,
            content_cache: Arc::new(Cache::new(CONTENT_CACHE_BYTES)),
            chain_cache: Arc::new(Cache::new(CHAIN_CACHE_BYTES)),
            users_synced: Arc::new(Cache::new(USERS_SYNCED_BYTES)),
            users_live: Arc::new(Cache::new(USERS_SYNCED_BYTES)),
            memory: Arc::new(tokio::sync::Semaphore::new(JOB_MEMORY_KIB)),
            writing: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// A job's (or a batch's) share of [`JOB_MEMORY_KIB`] for V2 documents that hold `bytes`
    /// in memory, held until it ends: [`WORKING_COPIES`] times that (the whole budget at most,
    /// so a single huge viz still runs, alone). A batch takes it after its read, which its
    /// byte budget bounds; a job run alone before its read, from the documents' sizes.
    async fn memory_for_bytes(&self, bytes: usize) -> tokio::sync::OwnedSemaphorePermit {
        let kib = (bytes.saturating_mul(WORKING_COPIES) / 1024).clamp(1, JOB_MEMORY_KIB);
        self.memory
            .clone()
            .acquire_many_owned(u32::try_from(kib).unwrap_or(u32::MAX))
            .await
            .expect("the memory semaphore is never closed")
    }

    /// Migrate one viz (the job). Records the ledger for every outcome it returns; errors are
    /// recorded by the caller once it has decided between retry and dead-letter.
    ///
    /// A job that lost a race (another job wrote one of its documents between our read and our
    /// write: a fork recounting its parent's `forksCount`, a child migrating this viz as its
    /// parent), or whose write the server refused as a write conflict, runs again at once, as
    /// [`retry::race`] says (up to [`retry::RACE_RERUNS`] times, after a short jittered pause):
    /// re-deriving is idempotent, and going through a delayed-retry queue for an optimistic-lock
    /// miss would only make the job wait seconds for nothing.
    pub async fn migrate(&self, viz: &str, batch: Option<&str>) -> Result<Done, JobError> {
        self.run(viz, batch, true, false).await
    }

    /// [`Migrator::migrate`] of a job an earlier attempt ran (its delivery redelivered, or a
    /// retry): that attempt may have stopped between an op and its snapshot, on the viz's own
    /// documents or its parent's info, so what it left is taken back once this run wrote them
    /// (see `write::Ready::earlier`).
    pub async fn migrate_again(&self, viz: &str, batch: Option<&str>) -> Result<Done, JobError> {
        self.run(viz, batch, true, true).await
    }

    /// [`Migrator::migrate`]; `trust_ledger` off reads the viz's V3 documents even when the
    /// ledger has no record of it (a batch found some of them there: an attempt stopped
    /// half-way, or another job wrote them). A rerun never trusts the ledger: what it collided
    /// with may have written the viz's documents.
    async fn run(
        &self,
        viz: &str,
        batch: Option<&str>,
        trust_ledger: bool,
        earlier: bool,
    ) -> Result<Done, JobError> {
        let mut first = true;
        let mut reruns = 0u32;
        (|| {
            let trust_ledger = trust_ledger && std::mem::take(&mut first);
            async move {
                let mut walk = Walk {
                    visiting: HashSet::new(),
                    trust_ledger,
                    earlier,
                };
                self.migrate_one(viz, batch, &mut walk).await
            }
        })
        .retry(retry::race())
        .when(JobError::is_collision)
        .notify(|e, pause| {
            reruns += 1;
            let pause_ms = pause.as_millis() as u64;
            tracing::debug!(viz, error = %e, reruns, pause_ms, "collided with another write; running again");
        })
        .await
    }

    /// One viz of a walk: `viz` is on the walk's stack while it (and the parents it needs) run.
    async fn migrate_one(
        &self,
        viz: &str,
        batch: Option<&str>,
        walk: &mut Walk,
    ) -> Result<Done, JobError> {
        walk.visiting.insert(viz.to_string());
        let done = self.migrate_inner(viz, batch, walk).await;
        walk.visiting.remove(viz);
        done
    }

    fn migrate_inner<'a>(
        &'a self,
        viz: &'a str,
        batch: Option<&'a str>,
        walk: &'a mut Walk,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Done, JobError>> + Send + 'a>>
    {
        Box::pin(async move {
            let r = match self.read_alone(viz, batch, walk).await? {
                Step::Read(r) => r,
                Step::Ended(end) => return self.recorded(*end).await,
            };
            let AloneRead {
                p,
                last,
                analytics,
                known: snaps,
                ..
            } = *r;
            let (info_snaps, content_snaps, analytics_snaps) = snaps;
            let migrated = last_migrated(last.as_ref());
            let fingerprint = p.source_fingerprint();
            let analytics_fingerprint = analytics.as_ref().map(ids::fingerprint);
            let plan = plan_of(
                migrated.as_ref(),
                v3_now(info_snaps.get(viz), content_snaps.get(viz)),
                &fingerprint,
                analytics_fingerprint.as_deref(),
            );
            if let Some(end) = ended_unwritten(&plan, viz, batch, last.as_ref()) {
                return self.recorded(end).await;
            }
            let attempts = last.as_ref().map_or(0, |r| r.attempts) + 1;
            if plan == Plan::AnalyticsOnly {
                let views = PageViews {
                    viz: viz.to_string(),
                    analytics_id: p.analytics_id.clone(),
                    batch: batch.map(str::to_string),
                    attempts,
                    m: migrated.expect("analytics-only implies a migration"),
                    analytics: analytics.as_ref(),
                    analytics_fingerprint,
                };
                let mut done = self.merge_page_views(vec![views], &analytics_snaps).await;
                return done.pop().expect("one result per viz merged");
            }
            let (users, deleted_users) = tokio::try_join!(
                async { self.v2.users(&p.user_ids).await.map_err(v2_err(viz)) },
                async { self.deleted_users(&p.user_ids).await.map_err(v3_err(viz)) },
            )?;
            let resync = plan == Plan::Resync;
            let parent = if resync {
                None
            } else {
                self.resolve_parent(&p, batch, walk).await?
            };
            let reading = Reading {
                p,
                batch: batch.map(str::to_string),
                attempts,
                migrated,
                fingerprint,
                analytics_fingerprint,
                analytics: analytics.as_ref(),
                users: &users,
                deleted_users: &deleted_users,
                read: !(walk.trust_ledger && last.is_none()),
                earlier: walk.earlier,
            };
            let known = Known {
                info: &info_snaps,
                content: &content_snaps,
                analytics: &analytics_snaps,
            };
            let ready = self.translated(reading, parent, resync, known).await?;
            let mut done = self.write_many(vec![ready], known, Counting::Recount).await;
            done.pop().expect("one result per viz written")
        })
    }

    /// Record a job's end alone.
    async fn recorded(&self, end: (Done, VizRecord)) -> Result<Done, JobError> {
        let mut done = self.record_all(vec![Ok(end)], &HashSet::new()).await;
        done.pop().expect("one result per end recorded")
    }

    /// What a job alone reads of its viz: its share of the memory budget first, then V2's
    /// documents (prepared), the ledger's record, V2's page views, and V3's snapshots of the
    /// viz. A viz V2 holds but the spec skips ends here.
    async fn read_alone(
        &self,
        viz: &str,
        batch: Option<&str>,
        walk: &Walk,
    ) -> Result<Step, JobError> {
        // The job's own viz waits for its share of the memory budget *before* it reads: its
        // content and op log can be 16 MiB each, and jobs that read first and waited after
        // held them all at once past the pod's limit. The share comes from the documents'
        // sizes (one query, see [`Reader::sizes`]). Parents it migrates first run under that
        // share (waiting there could deadlock against the child).
        let (memory, sizes) = if walk.visiting.len() == 1 {
            let sizes = self.v2.sizes(viz).await.map_err(v2_err(viz))?;
            let bytes = sizes.in_memory(self.v2.max_op_log_bytes());
            (Some(self.memory_for_bytes(bytes).await), Some(sizes))
        } else {
            (None, None)
        };
        let raw = self.v2.viz_sized(viz, sizes).await.map_err(v2_err(viz))?;
        let raw = raw.ok_or_else(|| JobError::NotFound {
            viz: viz.to_string(),
        })?;
        let last = self.ledger.get(viz).await.map_err(ledger_err(viz))?;
        let p = match translate::prepare(&raw, &self.cfg) {
            Ok(p) => p,
            Err(e) if e.disposition() == Disposition::Skip => {
                let done = Done {
                    viz: viz.to_string(),
                    outcome: Outcome::Skipped,
                    reason: Some(e.to_string()),
                };
                let attempts = last.as_ref().map_or(0, |r| r.attempts) + 1;
                let kept = last.and_then(|l| l.migrated);
                let rec = record_of(&done, Some(e.kind()), batch, attempts, kept, Vec::new());
                return Ok(Step::Ended(Box::new((done, rec))));
            }
            Err(e) => return Err(e.into()),
        };
        // The raw documents are parsed into `p` now: free them before the job (and the
        // parents it migrates first) goes on.
        drop(raw);
        let analytics = self
            .v2
            .event_record(&p.analytics_id)
            .await
            .map_err(v2_err(viz))?;
        let known = self
            .snapshots_alone(&p, analytics.is_some(), walk.trust_ledger, last.is_none())
            .await?;
        Ok(Step::Read(Box::new(AloneRead {
            _memory: memory,
            p,
            last,
            analytics,
            known,
        })))
    }

    /// V3's info, content and page-view snapshots of a viz run alone. The ledger is written
    /// after every other document of a job: a viz it has never recorded (`unrecorded`) has
    /// nothing in V3, unless an attempt stopped half-way, whose documents our creates then
    /// find (and the job runs again, reading them). A viz V3 has never had (no info snapshot,
    /// not even a tombstone) is invisible to V3's users: nothing in V3 can count its page
    /// views yet; but an attempt that stopped before its info may have left the page-view
    /// doc: a re-run (not `trust_ledger`) reads it.
    async fn snapshots_alone(
        &self,
        p: &Prepared,
        has_views: bool,
        trust_ledger: bool,
        unrecorded: bool,
    ) -> Result<Snapshots, JobError> {
        let viz = p.viz.as_str();
        if trust_ledger && unrecorded {
            return Ok(Default::default());
        }
        let one = std::slice::from_ref(&p.viz);
        let (info, content) = tokio::try_join!(
            self.v3.snapshots(c3::INFO, one),
            self.v3.snapshots(c3::CONTENT, one),
        )
        .map_err(v3_err(viz))?;
        let analytics = if has_views && (info.contains_key(viz) || !trust_ledger) {
            let id = std::slice::from_ref(&p.analytics_id);
            let snaps = self.v3.snapshots(c3::ANALYTICS_EVENT, id).await;
            snaps.map_err(v3_err(viz))?
        } else {
            HashMap::new()
        };
        Ok((info, content, analytics))
    }

    /// Translate a viz for [`Migrator::write_many`]: what V3 holds of it decided against what
    /// the migration last wrote there (a re-sync's three-way base, spec 3.4), V2 translated
    /// from the last migration's content (`resync`) or from `parent` (a first migration).
    async fn translated(
        &self,
        r: Reading<'_>,
        parent: Option<ParentLink>,
        resync: bool,
        known: Known<'_>,
    ) -> Result<Ready, JobError> {
        let viz = r.p.viz.as_str();
        let theirs = match known.info.get(viz).filter(|s| s.doc_type.is_some()) {
            Some(info) => Some(
                self.v3_side(viz, r.migrated.as_ref(), info, known.live_content(viz))
                    .await?,
            ),
            None => None,
        };
        let previous = match (resync, &r.migrated, &theirs) {
            (
                true,
                Some(m),
                Some(V3Side {
                    base_content: Some(c),
                    ..
                }),
            ) => Some(Previous {
                content_v: m.content_v as u64,
                start_commit: m.start.clone(),
                end_commit: m.end.clone(),
                end_timestamp: m.end_timestamp,
                content: c.clone(),
                file_ids: m.file_ids.clone(),
                analytics: m.analytics.clone(),
                forked_from: m.forked_from.clone(),
                forked_from_is_backfilled: m.forked_from_is_backfilled,
            }),
            _ => None,
        };
        let v3_analytics = known
            .analytics
            .get(&r.p.analytics_id)
            .filter(|s| s.doc_type.is_some())
            .and_then(|s| v3::AnalyticsEvent::from_payload(&s.data));
        let t = {
            let ctx = Context {
                parent: parent_of(parent.as_ref()),
                users: r.users,
                analytics: r.analytics,
                v3_analytics: v3_analytics.as_ref(),
                previous: previous.as_ref(),
                deleted_users: r.deleted_users,
                now: now_secs(),
            };
            translate::translate(&r.p, &ctx, &self.cfg)?
        };
        let decision = theirs
            .as_ref()
            .map(|side| side.decide(&t, previous.as_ref(), r.migrated.clone()));
        Ok(Ready {
            p: r.p,
            t,
            batch: r.batch,
            attempts: r.attempts,
            fingerprint: r.fingerprint,
            analytics_fingerprint: r.analytics_fingerprint,
            parent,
            previous_upvoters: previous.is_some(),
            info_base: theirs.map(|s| s.base_info),
            resync: decision,
            read: r.read,
            earlier: r.earlier,
        })
    }

    /// What V3 holds of `viz` (its live `info`, its `content`) against what the migration last
    /// wrote there. Reads only when V3 moved on from the ledger's record: the info op log when
    /// the ledger holds no base Info, the content's ops and chain when the content is past the
    /// version the migration left it at.
    async fn v3_side(
        &self,
        viz: &str,
        migrated: Option<&Migrated>,
        info: &Snapshot,
        content: Option<&Snapshot>,
    ) -> Result<V3Side, JobError> {
        let base_info = match migrated.and_then(|m| m.info.as_ref()) {
            Some(i) => to_value(i),
            None => self
                .v3
                .last_written(c3::INFO, viz)
                .await
                .map_err(v3_err(viz))?
                .unwrap_or_else(|| info.data.clone()),
        };
        let (base_content, content_edited) = match (migrated, content) {
            (Some(m), Some(c)) if c.version == m.v3_content_v => (Some(c.data.clone()), false),
            (Some(m), Some(c)) => {
                // Moved on: by V3's users, or by an attempt of ours that stopped before its
                // ledger record. Only an op not ours is an edit; either way the base is the
                // content at the migration's last end, not what V3 holds now.
                let edited = self
                    .v3
                    .edited_since(c3::CONTENT, viz, m.v3_content_v)
                    .await
                    .map_err(v3_err(viz))?;
                (
                    Some(self.content_at_end(viz, &m.end).await?),
                    edited || c.version < m.v3_content_v,
                )
            }
            // Info there, the ledger without a record: an attempt stopped before it. Any op
            // not ours on the content is V3's.
            (None, Some(_)) => {
                let edited = self
                    .v3
                    .edited_since(c3::CONTENT, viz, 0)
                    .await
                    .map_err(v3_err(viz))?;
                (None, edited)
            }
            (_, None) => (None, false),
        };
        let content_moved = match (migrated, content) {
            (Some(m), Some(c)) => c.version != m.v3_content_v,
            _ => false,
        };
        Ok(V3Side {
            base_info,
            base_content,
            content_edited,
            content_moved,
            end_now: info.info_end().map(str::to_string),
        })
    }

    /// V3 content at `end`, a commit of `viz` (replayed, cached like any fork point).
    async fn content_at_end(&self, viz: &str, end: &str) -> Result<Value, JobError> {
        let chain = self.v3.commits_of(viz).await.map_err(v3_err(viz))?;
        let at = chain
            .iter()
            .find(|c| c.id == end)
            .ok_or_else(|| JobError::Chain {
                viz: viz.to_string(),
                commit: end.to_string(),
                reason: "the migration's last end commit is missing from V3".into(),
            })?;
        Ok((*self.replayed_content(viz, at, &chain).await?).clone())
    }

    /// Find (or first migrate) the parent and its commit at the fork point (spec 3.1, 3.2).
    async fn resolve_parent(
        &self,
        p: &Prepared,
        batch: Option<&str>,
        walk: &mut Walk,
    ) -> Result<Option<ParentLink>, JobError> {
        let (wanted, backfilled) = match &p.parent {
            ParentRequest::Root => return Ok(None),
            ParentRequest::Viz(id) => (id.clone(), p.info.fork_from_backfilled == Some(true)),
            ParentRequest::Primordial => (PRIMORDIAL_VIZ_ID.to_string(), true),
        };
        if let Some(link) = self
            .parent_link(&p.viz, &wanted, p.created, batch, walk)
            .await?
        {
            return Ok(Some(ParentLink { backfilled, ..link }));
        }
        if wanted == PRIMORDIAL_VIZ_ID {
            return Err(JobError::Parent {
                viz: p.viz.clone(),
                parent: wanted,
                reason: "the primordial viz is not migratable".into(),
            });
        }
        tracing::info!(viz = %p.viz, parent = %wanted, "parent not migratable; hanging the viz from the primordial viz");
        let link = self
            .parent_link(&p.viz, PRIMORDIAL_VIZ_ID, p.created, batch, walk)
            .await?;
        let link = link.ok_or_else(|| JobError::Parent {
            viz: p.viz.clone(),
            parent: PRIMORDIAL_VIZ_ID.into(),
            reason: "the primordial viz is not migratable".into(),
        })?;
        Ok(Some(ParentLink {
            backfilled: true,
            ..link
        }))
    }

    /// `None` when the parent cannot be used: absent from V2, unusable by spec 3.5 (skipped), or
    /// a fork cycle. A parent that exists but fails fails this viz too ([`JobError::ParentFailed`]).
    async fn parent_link(
        &self,
        viz: &str,
        parent: &str,
        created: i64,
        batch: Option<&str>,
        walk: &mut Walk,
    ) -> Result<Option<ParentLink>, JobError> {
        let mut info = self.live_info(viz, parent).await?;
        let visible = info.is_some();
        let end = info.as_ref().and_then(Snapshot::info_end);
        // A parent not visible yet is migrated first (below), and its commits read after that.
        let mut commits = if visible {
            self.chain_of(viz, parent, end).await?
        } else {
            Arc::default()
        };
        if !visible || commits.is_empty() {
            if walk.visiting.contains(parent) {
                tracing::warn!(viz, parent, "fork cycle");
                return Ok(None);
            }
            if self.prepare_ancestors(viz, parent, batch, walk).await? {
                tracing::warn!(viz, parent, "fork cycle in V2: this viz is its root");
                return Ok(None);
            }
            match self.migrate_one(parent, batch, walk).await {
                Ok(done)
                    if matches!(
                        done.outcome,
                        Outcome::Migrated | Outcome::Unchanged | Outcome::Conflict
                    ) => {}
                // Skipped (spec 3.5) or not in V2: the fork hangs from the primordial viz.
                Ok(_) | Err(JobError::NotFound { .. }) => return Ok(None),
                Err(e) => {
                    tracing::warn!(viz, parent, error = %e, "parent failed; the fork fails with it");
                    return Err(JobError::ParentFailed {
                        viz: viz.to_string(),
                        parent: parent.to_string(),
                        source: Box::new(e),
                    });
                }
            }
            commits = Arc::new(self.v3.commits_of(parent).await.map_err(v3_err(viz))?);
            info = None;
        }
        let link = self.fork_link(viz, created, parent, &commits).await?;
        Ok(link.map(|l| ParentLink { info, ..l }))
    }

    /// `viz` (created at `created`) linked to `parent`, whose chain is `commits`, at its fork
    /// point (spec 3.1): the one place a fork's link is made, for a job alone, a batch and
    /// `verify`. `None` when the parent has no commit before the viz was created, or when the
    /// parent descends from the viz (a fork cycle, see [`Self::content_at`]). Not backfilled;
    /// the caller says.
    async fn fork_link(
        &self,
        viz: &str,
        created: i64,
        parent: &str,
        commits: &[Commit],
    ) -> Result<Option<ParentLink>, JobError> {
        let Some(fork) = translate::fork_point(commits, created) else {
            return Ok(None);
        };
        let Some(content) = self.content_at(viz, fork, commits).await? else {
            tracing::warn!(
                viz,
                parent,
                "fork cycle: the parent already descends from this viz"
            );
            return Ok(None);
        };
        Ok(Some(ParentLink {
            viz: parent.to_string(),
            commit: fork.id.clone(),
            content,
            backfilled: false,
            info: None,
        }))
    }

    /// The info snapshot of `of` (read for `viz`'s job), unless it is missing or deleted.
    async fn live_info(&self, viz: &str, of: &str) -> Result<Option<Snapshot>, JobError> {
        Ok(self
            .v3
            .snapshots(c3::INFO, &[of.to_string()])
            .await
            .map_err(v3_err(viz))?
            .remove(of)
            .filter(|s| s.doc_type.is_some()))
    }

    /// The cached V3 content at commit `id`, if this worker has it.
    fn cached_content(&self, id: &str) -> Option<CachedContent> {
        self.content_cache.get(id)
    }

    /// The commit chain of `parent`, whose info ends at `end` (when visible), from the cache
    /// when it was read ending there; cached when the chain read ends there too (a parent being
    /// re-synced at this moment may have commits past its info's end: not cached).
    async fn chain_of(
        &self,
        viz: &str,
        parent: &str,
        end: Option<&str>,
    ) -> Result<Arc<Vec<Commit>>, JobError> {
        if let Some(chain) = self.cached_chain(parent, end) {
            return Ok(chain);
        }
        let chain = Arc::new(self.v3.commits_of(parent).await.map_err(v3_err(viz))?);
        self.cache_chain(parent, end, &chain);
        Ok(chain)
    }

    /// The cached chain of `parent`, if it was read ending at `end`.
    fn cached_chain(&self, parent: &str, end: Option<&str>) -> Option<Arc<Vec<Commit>>> {
        self.chain_cache
            .get(parent)
            .filter(|(at, _)| Some(at.as_str()) == end)
            .map(|(_, chain)| chain)
    }

    /// Cache `chain`, read for `parent` whose info ends at `end`, when it ends there too.
    fn cache_chain(&self, parent: &str, end: Option<&str>, chain: &Arc<Vec<Commit>>) {
        if let Some(end) = end.filter(|e| chain.last().is_some_and(|c| c.id == *e)) {
            let bytes = chain
                .iter()
                .map(|c| c.id.len() + approx_bytes(&c.ops))
                .sum();
            let entry = (end.to_string(), chain.clone());
            self.chain_cache.insert(parent.to_string(), entry, bytes);
        }
    }

    /// V2's `forkedFrom` chain above `viz`, from `parent` up, one projected read per link,
    /// until it ends or repeats; and whether it comes back to `viz` (a fork cycle through it).
    async fn v2_ancestry(&self, viz: &str, parent: &str) -> Result<(Vec<String>, bool), JobError> {
        let mut chain = vec![parent.to_string()];
        loop {
            let at = chain.last().expect("never empty");
            match self.v2.forked_from(at).await.map_err(v2_err(viz))? {
                Some(p) if p == viz => return Ok((chain, true)),
                // A cycle further up that does not pass through `viz`, or the chain's root.
                Some(p) if chain.contains(&p) => return Ok((chain, false)),
                None => return Ok((chain, false)),
                Some(p) => chain.push(p),
            }
        }
    }

    /// Called when `parent` is not in V3 yet. `Ok(true)`: `viz` is the root of a V2 fork cycle
    /// through `parent` (A forked from B, B from A) — the member with the smallest id hangs from
    /// the primordial viz, every other keeps its V2 parent; deciding by id, not by which job came
    /// first, makes two jobs of one cycle that run at once build the same chains. Otherwise the
    /// ancestors above `parent` that V3 lacks are migrated first, farthest first, so each finds
    /// its own parent in V3 and the recursion into `parent` stays one level deep: chains of any
    /// depth, on a bounded stack. Their failures are left for `parent`'s own migration to meet
    /// (and report, naming them); only a transient error stops here.
    async fn prepare_ancestors(
        &self,
        viz: &str,
        parent: &str,
        batch: Option<&str>,
        walk: &mut Walk,
    ) -> Result<bool, JobError> {
        let (chain, cycle) = self.v2_ancestry(viz, parent).await?;
        if cycle {
            return Ok(chain.iter().all(|m| m.as_str() > viz));
        }
        let above = &chain[1..];
        if above.is_empty() {
            return Ok(false);
        }
        let live = self
            .v3
            .snapshots(c3::INFO, above)
            .await
            .map_err(v3_err(viz))?;
        let missing = above
            .iter()
            .take_while(|a| live.get(*a).is_none_or(|s| s.doc_type.is_none()))
            .filter(|a| !walk.visiting.contains(*a));
        let missing: Vec<String> = missing.cloned().collect();
        for ancestor in missing.iter().rev() {
            match self.migrate_one(ancestor, batch, walk).await {
                Err(e) if e.disposition() == Disposition::Retry => return Err(e),
                _ => {}
            }
        }
        Ok(false)
    }

    /// V3 content at `at` (a commit of `chain`), replaying ancestors across vizzes, cached.
    ///
    /// `None` when the chain at `at` descends from `viz` itself: V2 has a fork cycle (A forked
    /// from B, B from A), `viz` is its root (see [`Self::prepare_ancestors`]) and is being
    /// re-synced. Linking `viz` there would close the cycle in V3; the caller keeps it hanging
    /// from the primordial viz. Worker and `verify` decide this the same way, from V3.
    async fn content_at(
        &self,
        viz: &str,
        at: &Commit,
        chain: &[Commit],
    ) -> Result<Option<Arc<Value>>, JobError> {
        let c = self.replay(viz, at, chain).await?;
        Ok((!c.ancestry.contains(viz)).then_some(c.content))
    }

    /// V3 content at `at` (a commit of `chain`), whatever vizzes it descends from: what
    /// `verify` compares a viz's content with. Replayed as [`Self::content_at`] replays, and
    /// cached the same way.
    pub(crate) async fn replayed_content(
        &self,
        viz: &str,
        at: &Commit,
        chain: &[Commit],
    ) -> Result<Arc<Value>, JobError> {
        Ok(self.replay(viz, at, chain).await?.content)
    }

    /// The replay behind [`Self::content_at`]: from the nearest cached ancestor commit, else
    /// from the root, walking fork parents across vizzes; the result is cached.
    async fn replay(
        &self,
        viz: &str,
        at: &Commit,
        chain: &[Commit],
    ) -> Result<CachedContent, JobError> {
        if let Some(c) = self.cached_content(&at.id) {
            return Ok(c);
        }
        let mut all: HashMap<String, Commit> =
            chain.iter().map(|c| (c.id.clone(), c.clone())).collect();
        let mut ancestry: HashSet<String> = chain.iter().map(|c| c.viz.clone()).collect();
        // Walk up to the root, two queries per ancestor viz, or only as far as an ancestor
        // commit whose content is cached (typically the fork point of the parent itself, cached
        // when this worker migrated the parent): commits are immutable, so replaying the commits
        // below it onto its content gives what a replay from the root would.
        let mut root = chain.first().cloned();
        let mut base = None;
        while let Some(parent_id) = root.as_ref().and_then(|c| c.parent.clone()) {
            if all.contains_key(&parent_id) {
                return Err(JobError::Chain {
                    viz: viz.into(),
                    commit: parent_id,
                    reason: "cycle in commit parents".into(),
                });
            }
            if let Some(c) = self.cached_content(&parent_id) {
                ancestry.extend(c.ancestry.iter().cloned());
                base = Some((parent_id, c.content));
                break;
            }
            let found = self
                .v3
                .commits(std::slice::from_ref(&parent_id))
                .await
                .map_err(v3_err(viz))?;
            let Some(pc) = found.into_iter().next() else {
                return Err(JobError::Chain {
                    viz: viz.into(),
                    commit: parent_id,
                    reason: "parent commit missing from V3".into(),
                });
            };
            let ancestors = self.v3.commits_of(&pc.viz).await.map_err(v3_err(viz))?;
            ancestry.insert(pc.viz.clone());
            root = ancestors.first().cloned();
            all.extend(ancestors.into_iter().map(|c| (c.id.clone(), c)));
        }
        let content = match base {
            Some((id, content)) => v3::content_after((&id, (*content).clone()), &all, &at.id),
            None => v3::content_at(&all, &at.id),
        }
        .map_err(|e| JobError::Chain {
            viz: viz.into(),
            commit: at.id.clone(),
            reason: e.to_string(),
        })?;
        let cached = CachedContent {
            content: Arc::new(content),
            ancestry: Arc::new(ancestry),
        };
        let bytes = approx_bytes(&cached.content);
        self.content_cache
            .insert(at.id.clone(), cached.clone(), bytes);
        Ok(cached)
    }

    /// Of `ids`, the users whose V3 account is deleted (a `user` tombstone): asked of V3 for
    /// those this worker has not seen live within [`USERS_LIVE_FOR`] (one query, none when all
    /// were).
    async fn deleted_users(&self, ids: &[String]) -> Result<BTreeSet<String>, StoreError> {
        let now = std::time::Instant::now();
        let ask: Vec<String> = ids
            .iter()
            .filter(|id| {
                self.users_live
                    .get(id)
                    .is_none_or(|at| now.duration_since(at) > USERS_LIVE_FOR)
            })
            .cloned()
            .collect();
        let deleted = self.v3.deleted(c3::USER, &ask).await?;
        for id in ask.into_iter().filter(|id| !deleted.contains(id)) {
            self.users_live.insert(id, now, 16);
        }
        Ok(deleted.into_iter().collect())
    }

    /// Record a failure (after retries, before dead-lettering). Keeps what an earlier successful
    /// migration left, so a later re-sync still knows it.
    pub async fn record_failure(
        &self,
        viz: &str,
        err: &JobError,
        batch: Option<&str>,
    ) -> Result<(), JobError> {
        let last = self.ledger.get(viz).await.map_err(ledger_err(viz))?;
        let attempts = last.as_ref().map_or(0, |r| r.attempts) + 1;
        let done = Done {
            viz: viz.to_string(),
            outcome: err.disposition().final_outcome(),
            reason: Some(err.to_string()),
        };
        let kept = last.and_then(|l| l.migrated);
        let rec = record_of(&done, Some(err.kind()), batch, attempts, kept, Vec::new());
        self.ledger.record(&rec).await.map_err(ledger_err(viz))?;
        self.settle_parent_count(viz).await;
        Ok(())
    }

    /// A job that ends failed after its info became visible (its parent's recount kept losing,
    /// a write after the info failed) leaves a fork its parent's `forksCount` does not count:
    /// counted here, best effort, so counts stay exact whatever ends the job (spec 3.4). Its
    /// requeued job recounts again anyway.
    async fn settle_parent_count(&self, viz: &str) {
        let parent = match self.live_info(viz, viz).await {
            Ok(Some(info)) => info.info_forked_from().map(str::to_string),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(viz, error = %e, "cannot read the failed viz's info to recount its parent");
                None
            }
        };
        let Some(parent) = parent else { return };
        if let Err(e) = self
            .recount(vec![parent.clone()], HashMap::new(), now_ms())
            .await
        {
            tracing::warn!(viz, parent, error = %e, "cannot recount the failed fork's parent");
        }
    }

    /// What a job would write, writing nothing (for `worker preview`).
    pub async fn preview(&self, viz: &str) -> Result<Value, JobError> {
        let t = self.expected(viz).await?;
        Ok(serde_json::json!({
            "info": t.info, "content": t.content, "commits": t.commits, "users": t.users,
            "upvotes": t.upvotes, "permissions": t.permissions, "analyticsevent": t.analytics,
            "history": format!("{:?}", t.history), "skipped": t.skipped,
        }))
    }
}

/// The ledger record of a job's end.
fn record_of(
    done: &Done,
    kind: Option<&str>,
    batch: Option<&str>,
    attempts: i64,
    migrated: Option<Migrated>,
    skipped_entries: Vec<String>,
) -> VizRecord {
    VizRecord {
        viz: done.viz.clone(),
        outcome: done.outcome,
        reason: done.reason.clone(),
        error_kind: kind.map(str::to_string),
        batch: batch.map(str::to_string),
        attempts,
        time: now_secs(),
        migrated,
        skipped_entries,
    }
}

/// What the ledger's last record says was migrated (none after a skip).
fn last_migrated(last: Option<&VizRecord>) -> Option<Migrated> {
    last.filter(|l| l.outcome != Outcome::Skipped)
        .and_then(|l| l.migrated.clone())
}

/// The plan for a viz the ledger last left at `migrated`, from what V3 holds of it now
/// ([`v3_now`]) and V2's fingerprints now.
fn plan_of(
    migrated: Option<&Migrated>,
    v3: V3Now,
    fingerprint: &str,
    analytics_fingerprint: Option<&str>,
) -> Plan {
    let last_view = migrated.map(|m| LastMigration {
        fingerprint: &m.fingerprint,
        analytics: m.analytics_fingerprint.as_deref(),
    });
    outcome::plan(last_view.as_ref(), fingerprint, analytics_fingerprint, v3)
}

/// The end of a job whose plan writes nothing to V3 ([`Plan::Unchanged`],
/// [`Plan::DeletedInV3`]) and its ledger record; `None` for a plan that writes.
fn ended_unwritten(
    plan: &Plan,
    viz: &str,
    batch: Option<&str>,
    last: Option<&VizRecord>,
) -> Option<(Done, VizRecord)> {
    let attempts = last.map_or(0, |r| r.attempts) + 1;
    match plan {
        Plan::Unchanged => {
            let done = unchanged(viz, batch, last);
            let skipped = last.map(|l| l.skipped_entries.clone()).unwrap_or_default();
            let rec = record_of(&done, None, batch, attempts, last_migrated(last), skipped);
            Some((done, rec))
        }
        Plan::DeletedInV3 => {
            // V3's users deleted it: an act, never undone (spec 3.4). What the ledger knew of
            // the migration is kept, so a later run still knows it was ours.
            let done = Done {
                viz: viz.to_string(),
                outcome: Outcome::Skipped,
                reason: Some(outcome::DELETED_IN_V3.to_string()),
            };
            tracing::info!(viz, "deleted in V3: not re-created");
            let kept = last.and_then(|l| l.migrated.clone());
            let rec = record_of(
                &done,
                Some("deleted_in_v3"),
                batch,
                attempts,
                kept,
                Vec::new(),
            );
            Some((done, rec))
        }
        Plan::Fresh | Plan::Resync | Plan::AnalyticsOnly => None,
    }
}

/// What V3 holds of a viz, from its info and content snapshots as read (tombstones included).
fn v3_now(info: Option<&Snapshot>, content: Option<&Snapshot>) -> V3Now {
    let deleted = |s: Option<&Snapshot>| s.is_some_and(|s| s.doc_type.is_none());
    if deleted(info) || deleted(content) {
        V3Now::Deleted
    } else if info.is_some() {
        V3Now::Live
    } else {
        V3Now::Absent
    }
}

/// The end of a job whose plan is [`Plan::Unchanged`].
fn unchanged(viz: &str, batch: Option<&str>, last: Option<&VizRecord>) -> Done {
    // Migrated moments ago in this same batch by a fork's job (parents are migrated first,
    // recursively): this job's viz is migrated, by this batch.
    let earlier_in_batch = batch.is_some()
        && last.is_some_and(|l| l.outcome == Outcome::Migrated && l.batch.as_deref() == batch);
    Done {
        viz: viz.to_string(),
        outcome: if earlier_in_batch {
            Outcome::Migrated
        } else {
            Outcome::Unchanged
        },
        reason: earlier_in_batch
            .then(|| "migrated earlier in this batch, as a fork's parent".into()),
    }
}

/// Roughly what a viz's V2 documents hold in memory.
fn v2_bytes(raw: &crate::v2::V2Viz) -> usize {
    raw.content.as_ref().map_or(0, approx_bytes) + raw.ops.iter().map(approx_bytes).sum::<usize>()
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("V3 payloads serialize")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
