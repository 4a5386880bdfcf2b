//! Migrating a batch of jobs together ([`Migrator::migrate_batch`], what the worker runs): the
//! database I/O is shared by the whole batch, so a batch of B vizzes costs a few queries per
//! collection instead of a few per viz. The stages, each a function of its own:
//!
//! - **Read** ([`Migrator::read_batch`], [`Migrator::read_around`]): V2 once per collection for
//!   the batch (`$in` on ids; op logs in `(d, v)` order, within a byte budget), users and
//!   page-view records likewise; the ledger with `$in`.
//! - **Decide** ([`Migrator::unchanged_ones`]): the plan of every viz the ledger knows, from
//!   its info and content snapshots (two `$in` reads). `Unchanged` and `DeletedInV3` end there
//!   ([`ended_unwritten`](super::ended_unwritten), as for a job alone).
//! - **Link and translate fresh vizzes** ([`Migrator::fresh_parents`],
//!   [`Migrator::translate_fresh`]): parents first; a fork of a viz in the batch from its
//!   parent's translation (the commits V3 is about to hold; commit ids are content-derived),
//!   a fork of a viz in V3 from the parent's chain (all parents' chains read in one query);
//!   parents missing from V3 are fetched and migrated with the batch
//!   ([`Migrator::parents_to_fetch`]).
//! - **Write** ([`Migrator::write_many`], the one writer, also a job alone's): per collection in
//!   the spec's order, every per-document result mapped back to its viz. Fresh vizzes first,
//!   each parent's `forksCount` moved by one op for all its forks in the batch
//!   ([`Counting::Move`]); then the re-syncs ([`Migrator::resync_ones`]: translated from the
//!   last migration, V3's side decided, spec 3.4) and page-view merges
//!   ([`Migrator::merge_page_views`]), after the fresh ones as jobs alone ran after them.
//! - **Record**: the writer records what it wrote; the unchanged ones' records go in at the
//!   end in one command.
//! - **Alone**: what the batch cannot finish (a viz twice in the batch, past the byte budget,
//!   that does not prepare or translate, whose parent is neither in V3 nor in the batch, a
//!   fork cycle, a document another writer got to first, a write error) runs through
//!   [`Migrator::migrate`], after the batch, a few at a time; it reads, decides and writes
//!   through the same functions, one viz at a time.
//!
//! A crash between two writes leaves each job of the batch either recorded or unrecorded with
//! some of its documents written; redelivered, its creates find those documents and it runs
//! alone, reading them (as a re-run of the per-viz path does).

use super::write::{Counting, Known, PageViews, Ready};
use super::{
    ended_unwritten, last_migrated, now_secs, parent_of, plan_of, v2_bytes, v3_now, Done, JobError,
    Migrator, ParentLink, Reading, JOB_MEMORY_KIB, WORKING_COPIES,
};
use crate::job::Job;
use crate::ledger::VizRecord;
use crate::outcome::Plan;
use crate::translate::{self, Context, ParentRequest, Prepared};
use crate::v3::store::Snapshot;
use crate::v3::{self, collections as c3};
use crate::{ids, PRIMORDIAL_VIZ_ID};
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// BSON bytes of V2 documents one batch read holds; vizzes past it are read alone. A batch
/// holds its documents [`WORKING_COPIES`] times over while it runs: half the workers' job memory
/// at most, so two batches (one writing, the next reading) fit in it.
pub(super) const BATCH_READ_BYTES: usize = JOB_MEMORY_KIB * 1024 / WORKING_COPIES / 2;

/// Jobs of a batch that run alone at once.
const ALONE_AT_ONCE: usize = 8;

/// A job the fast path cannot finish: run it alone, trusting the ledger (nothing of it was
/// written here) or reading its V3 documents (some may have been).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alone {
    Trusting,
    Reading,
}

/// A fresh viz of the batch, prepared.
struct Fresh {
    /// The job's place in the batch; `None` for a parent migrated for its forks in the batch.
    at: Option<usize>,
    batch: Option<String>,
    p: Prepared,
    attempts: i64,
    fingerprint: String,
    analytics_fingerprint: Option<String>,
    /// The parent V2 names (or the primordial viz) and whether the link is backfilled.
    wanted: Option<(String, bool)>,
}

/// What [`Migrator::parents_to_fetch`] found out about the batch's parents, so the batch does
/// not ask again.
#[derive(Default)]
struct Fetched {
    /// Parents to migrate first, farthest first, each with the batch to record it under.
    extras: Vec<(Prepared, Option<String>)>,
    /// Ids whose V3 info was read (into `infos`: the snapshots found).
    read: HashSet<String>,
    infos: HashMap<String, Snapshot>,
    /// Ids looked up in V2 (not visible in V3), and those of them V2 has.
    v2_checked: HashSet<String>,
    in_v2: HashSet<String>,
}

/// Where [`Migrator::link`] hangs a fresh viz.
enum Linked {
    At(Box<ParentLink>),
    /// The parent cannot be used: the viz hangs from the primordial viz.
    Primordial,
    Alone,
}

/// What the batch knows of its vizzes' parents.
struct Parents<'a> {
    /// The batch's fresh vizzes.
    in_batch: &'a HashSet<String>,
    /// The chains of the fresh vizzes translated so far.
    chains: &'a HashMap<String, Arc<Vec<v3::Commit>>>,
    /// Info snapshots of the parents outside the batch (and of the primordial viz).
    infos: &'a HashMap<String, Snapshot>,
    /// Parents V2 does not have.
    missing: &'a HashSet<String>,
}

/// What the batch read for its fresh vizzes besides their own documents.
#[derive(Clone, Copy)]
struct BatchReads<'a> {
    /// V2 `user` docs by id.
    users: &'a HashMap<String, Value>,
    /// V2 page-view records by id.
    events: &'a HashMap<String, Value>,
    /// Users whose V3 account is deleted.
    deleted_users: &'a BTreeSet<String>,
}

/// What the fast path decided: jobs done (with their ledger records, not yet written) and jobs
/// to run alone.
#[derive(Default)]
struct Decided {
    /// Jobs that end without a write (unchanged, deleted in V3), with their ledger records.
    done: Vec<(usize, Done, VizRecord)>,
    alone: Vec<(usize, Alone)>,
    /// Jobs written and recorded already (fresh ones, re-syncs, page-view merges), or failed.
    finished: Vec<(usize, Result<Done, JobError>)>,
    /// Vizzes whose jobs an earlier attempt ran (see [`Migrator::migrate_again`]).
    earlier: HashSet<String>,
}

impl Decided {
    fn alone(&mut self, at: usize, how: Alone) {
        self.alone.push((at, how));
    }

    /// A fresh viz the fast path cannot finish: its job runs alone (a parent fetched for its
    /// forks is left to its own job, its forks to theirs).
    fn alone_fresh(&mut self, f: &Fresh, how: Alone) {
        if let Some(at) = f.at {
            self.alone(at, how);
        }
    }
}

/// A viz of the batch read and prepared: its place in the batch, and its ledger record.
type PreparedJob = (usize, Prepared, Option<VizRecord>);

/// A fresh viz written by the batch: its place in the batch (`None`: a parent fetched for its
/// forks), its id and its `info.end`.
type FreshAt = (Option<usize>, String, String);

/// What the batch read besides its vizzes' own documents.
struct Around {
    /// V2 page-view records by id.
    events: HashMap<String, Value>,
    /// V2 `user` docs by id.
    users: HashMap<String, Value>,
    /// Users whose V3 account is deleted.
    deleted_users: BTreeSet<String>,
}

/// A viz of the batch the ledger has a record of: its place in the batch, prepared, its
/// record, and its V2 fingerprints now.
type KnownViz = (usize, Prepared, VizRecord, String, Option<String>);

/// The batch's re-syncs and page-view merges, and the info and content snapshots of them it
/// read.
struct Resyncs {
    todo: Vec<(Plan, KnownViz)>,
    infos: HashMap<String, Snapshot>,
    contents: HashMap<String, Snapshot>,
}

/// How many generations of parents missing from V3 a batch fetches for its forks.
const ANCESTOR_ROUNDS: usize = 8;

impl Migrator {
    /// Migrate several jobs together (the worker's batch): one result per job, in the order of
    /// `jobs`, each what [`Migrator::migrate`] returns for that job alone (see the module doc).
    pub async fn migrate_batch(&self, jobs: &[Job]) -> Vec<Result<Done, JobError>> {
        self.migrate_batch_again(jobs, &HashSet::new()).await
    }

    /// [`Migrator::migrate_batch`], where an earlier attempt of the jobs of `earlier` (by
    /// viz) ran (see [`Migrator::migrate_again`]).
    pub async fn migrate_batch_again(
        &self,
        jobs: &[Job],
        earlier: &HashSet<String>,
    ) -> Vec<Result<Done, JobError>> {
        let mut d = Decided {
            earlier: earlier.clone(),
            ..Decided::default()
        };
        self.fast(jobs, &mut d).await;
        let mut out: Vec<Option<Result<Done, JobError>>> = (0..jobs.len()).map(|_| None).collect();
        // The ends the batch decided without writing (unchanged, deleted in V3), recorded
        // together; one the ledger refused or could not take runs alone.
        let (ats, ends): (Vec<usize>, Vec<_>) = std::mem::take(&mut d.done)
            .into_iter()
            .map(|(at, done, rec)| (at, Ok((done, rec))))
            .unzip();
        for (at, r) in ats
            .into_iter()
            .zip(self.record_all(ends, &HashSet::new()).await)
        {
            match r {
                Ok(done) => out[at] = Some(Ok(done)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record the job in its batch; running it alone");
                    d.alone.push((at, Alone::Reading));
                }
            }
        }
        tracing::debug!(
            jobs = jobs.len(),
            fast = jobs.len() - d.alone.len(),
            alone = d.alone.len(),
            "batch fast path done"
        );
        for (at, r) in std::mem::take(&mut d.finished) {
            out[at] = Some(r);
        }
        let earlier = &d.earlier;
        let alone = futures_util::stream::iter(d.alone)
            .map(|(at, how)| async move {
                let j = &jobs[at];
                let again = earlier.contains(&j.viz);
                let r = self
                    .run(&j.viz, j.batch.as_deref(), how == Alone::Trusting, again)
                    .await;
                (at, r)
            })
            .buffer_unordered(ALONE_AT_ONCE);
        let finished: Vec<(usize, Result<Done, JobError>)> = alone.collect().await;
        for (at, r) in finished {
            out[at] = Some(r);
        }
        out.into_iter()
            .map(|r| r.expect("every job of a batch ends in the fast path or alone"))
            .collect()
    }

    /// The fast path: reads for the whole batch, then its fresh vizzes (parents first), and
    /// the unchanged ones. Everything it does not finish is in `d.alone`.
    async fn fast(&self, jobs: &[Job], d: &mut Decided) {
        let Some((prepared, _memory)) = self.read_batch(jobs, d).await else {
            return;
        };
        // From here to its last write the batch holds the worker's write turn: what it reads of
        // V3 (parents, their counts) is what the batch before it wrote, and no batch of this
        // worker writes in between. The reads above, most of a batch's V2 queries, overlap the
        // batch before.
        let _turn = self.writing.lock().await;
        // Parents neither in the batch nor in V3 are migrated with it, once for all their forks
        // (the per-viz path migrates them first, one fork at a time).
        let mut fetched = self.parents_to_fetch(jobs, &prepared).await;
        let extras = std::mem::take(&mut fetched.extras);
        let Some(around) = self.read_around(&prepared, &extras, d).await else {
            return;
        };
        let (fresh, known) = split_fresh(jobs, prepared, extras, &around.events);
        let resyncs = self.unchanged_ones(jobs, known, d).await;
        let ordered = parents_first(fresh, d);
        let wrote = !ordered.is_empty();
        if wrote {
            let read = BatchReads {
                users: &around.users,
                events: &around.events,
                deleted_users: &around.deleted_users,
            };
            self.fresh_ones(ordered, &read, &fetched, d).await;
        }
        // After the fresh ones, as the jobs alone ran after them: a fresh fork of a viz
        // re-synced here links to the chain it had when the batch read it.
        if let Some(r) = resyncs {
            let (users, events) = (&around.users, &around.events);
            self.resync_ones(jobs, r, wrote, users, events, d).await;
        }
    }

    /// The batch's V2 documents (one read for all, within [`BATCH_READ_BYTES`]) and ledger
    /// records, each viz prepared, with the batch's share of the memory budget. A viz twice in
    /// the batch (a redelivered copy beside the original), deferred past the byte budget, not
    /// in V2, or that does not prepare (a skip, a malformed viz) runs alone, which records or
    /// reports it; so does every job when a read fails.
    async fn read_batch(
        &self,
        jobs: &[Job],
        d: &mut Decided,
    ) -> Option<(Vec<PreparedJob>, tokio::sync::OwnedSemaphorePermit)> {
        let mut first: HashMap<&str, usize> = HashMap::new();
        for (at, j) in jobs.iter().enumerate() {
            if first.contains_key(j.viz.as_str()) {
                d.alone(at, Alone::Trusting);
            } else {
                first.insert(&j.viz, at);
            }
        }
        let ids: Vec<String> = first.keys().map(|v| v.to_string()).collect();
        let read = match self.v2.vizzes(&ids, BATCH_READ_BYTES).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the batch from V2; its jobs run alone");
                first.values().for_each(|at| d.alone(*at, Alone::Trusting));
                return None;
            }
        };
        let mut raws = read.vizzes;
        for id in ids.iter().filter(|id| !raws.contains_key(*id)) {
            d.alone(first[id.as_str()], Alone::Trusting);
        }
        if raws.is_empty() {
            return None;
        }
        let memory = self
            .memory_for_bytes(raws.values().map(v2_bytes).sum())
            .await;
        let read_ids: Vec<String> = raws.keys().cloned().collect();
        let mut ledger = match self.ledger.get_many(&read_ids).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the batch's ledger; its jobs run alone");
                for id in &read_ids {
                    d.alone(first[id.as_str()], Alone::Trusting);
                }
                return None;
            }
        };
        let mut prepared = Vec::new();
        for id in read_ids {
            let at = first[id.as_str()];
            let raw = raws.remove(&id).expect("read");
            match translate::prepare(&raw, &self.cfg) {
                Ok(p) => prepared.push((at, p, ledger.remove(&id))),
                Err(_) => d.alone(at, Alone::Trusting),
            }
        }
        Some((prepared, memory))
    }

    /// The V2 users and page-view records of the batch's vizzes and the parents fetched for
    /// them (one query each), and which of those users' V3 accounts are deleted (their vizzes
    /// and entries are skipped in translation; only when a fresh viz translates here: a daily
    /// re-run of unchanged ones asks nothing). `None` (every job alone) when a read fails.
    async fn read_around(
        &self,
        prepared: &[PreparedJob],
        extras: &[(Prepared, Option<String>)],
        d: &mut Decided,
    ) -> Option<Around> {
        let all = || {
            prepared
                .iter()
                .map(|(_, p, _)| p)
                .chain(extras.iter().map(|(p, _)| p))
        };
        let analytics_ids: Vec<String> = all().map(|p| p.analytics_id.clone()).collect();
        let user_ids: BTreeSet<String> = all().flat_map(|p| p.user_ids.iter().cloned()).collect();
        let user_ids: Vec<String> = user_ids.into_iter().collect();
        let translating = !extras.is_empty() || prepared.iter().any(|(_, _, l)| l.is_none());
        let deleted_users = async {
            if !translating {
                return Ok(Default::default());
            }
            self.deleted_users(&user_ids)
                .await
                .map_err(|e| mongodb::error::Error::custom(e.to_string()))
        };
        let read = tokio::try_join!(
            self.v2.event_records(&analytics_ids),
            self.v2.users(&user_ids),
            deleted_users,
        );
        match read {
            Ok((events, users, deleted_users)) => Some(Around {
                events,
                users,
                deleted_users,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the batch's users and page views from V2; its jobs run alone");
                prepared
                    .iter()
                    .for_each(|(at, _, _)| d.alone(*at, Alone::Trusting));
                None
            }
        }
    }

    /// Parents (and their parents, up to [`ANCESTOR_ROUNDS`] generations) of the batch's fresh
    /// vizzes that are neither in the batch nor visible in V3, read from V2 and prepared: the
    /// batch migrates them first, recorded under the batch of the first fork that needs them,
    /// as the per-viz path records a parent it migrates first. A parent the ledger has a
    /// record of, that V2 lacks, or that does not prepare, is not fetched: its forks' link
    /// decides (the primordial viz, or alone). Read failures stop the fetching there.
    async fn parents_to_fetch(
        &self,
        jobs: &[Job],
        prepared: &[(usize, Prepared, Option<VizRecord>)],
    ) -> Fetched {
        let mut fetched = Fetched::default();
        let mut have: HashSet<String> = prepared.iter().map(|(_, p, _)| p.viz.clone()).collect();
        let mut frontier: Vec<(String, Option<String>)> = prepared
            .iter()
            .filter(|(_, _, last)| last.is_none())
            .filter_map(|(at, p, _)| Some((wanted_parent(p)?.0, jobs[*at].batch.clone())))
            .collect();
        for _ in 0..ANCESTOR_ROUNDS {
            let mut seen = HashSet::new();
            frontier.retain(|(id, _)| !have.contains(id) && seen.insert(id.clone()));
            if frontier.is_empty() {
                break;
            }
            let ids: Vec<String> = frontier.iter().map(|(id, _)| id.clone()).collect();
            have.extend(ids.iter().cloned());
            let Ok(infos) = self.v3.snapshots(c3::INFO, &ids).await else {
                break;
            };
            let unseen: Vec<String> = ids
                .iter()
                .filter(|id| infos.get(*id).is_none_or(|s| s.doc_type.is_none()))
                .cloned()
                .collect();
            fetched.read.extend(ids);
            fetched.infos.extend(infos);
            if unseen.is_empty() {
                break;
            }
            let Ok(mut read) = self.v2.vizzes(&unseen, BATCH_READ_BYTES).await else {
                break;
            };
            // Neither read nor deferred: V2 has no such viz.
            let deferred: HashSet<&String> = read.deferred.iter().collect();
            fetched.in_v2.extend(
                unseen
                    .iter()
                    .filter(|id| read.vizzes.contains_key(*id) || deferred.contains(id))
                    .cloned(),
            );
            fetched.v2_checked.extend(unseen.iter().cloned());
            let Ok(ledger) = self.ledger.get_many(&unseen).await else {
                break;
            };
            let mut next = Vec::new();
            for (id, batch) in frontier {
                let Some(raw) = read.vizzes.remove(&id) else {
                    continue;
                };
                if ledger.contains_key(&id) {
                    continue;
                }
                if let Ok(p) = translate::prepare(&raw, &self.cfg) {
                    if let Some((parent, _)) = wanted_parent(&p) {
                        next.push((parent, batch.clone()));
                    }
                    fetched.extras.push((p, batch));
                }
            }
            frontier = next;
        }
        // Farthest ancestors first.
        fetched.extras.reverse();
        fetched
    }

    /// Vizzes the ledger has recorded: those whose plan is `Unchanged` are done (their record
    /// joins the batch's); re-syncs are returned, with the snapshots read, for
    /// [`Migrator::resync_ones`]; any other plan runs alone.
    async fn unchanged_ones(
        &self,
        jobs: &[Job],
        known: Vec<KnownViz>,
        d: &mut Decided,
    ) -> Option<Resyncs> {
        if known.is_empty() {
            return None;
        }
        let ids: Vec<String> = known.iter().map(|k| k.1.viz.clone()).collect();
        let snaps = tokio::try_join!(
            self.v3.snapshots(c3::INFO, &ids),
            self.v3.snapshots(c3::CONTENT, &ids),
        );
        let (infos, contents) = match snaps {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the batch's V3 snapshots; its jobs run alone");
                for k in known {
                    d.alone(k.0, Alone::Trusting);
                }
                return None;
            }
        };
        let mut todo = Vec::new();
        for k in known {
            let (at, p, last, fingerprint, analytics_fingerprint) = &k;
            let plan = plan_of(
                last_migrated(Some(last)).as_ref(),
                v3_now(infos.get(&p.viz), contents.get(&p.viz)),
                fingerprint,
                analytics_fingerprint.as_deref(),
            );
            let batch = jobs[*at].batch.as_deref();
            if let Some((done, rec)) = ended_unwritten(&plan, &p.viz, batch, Some(last)) {
                d.done.push((*at, done, rec));
                continue;
            }
            match plan {
                Plan::Resync | Plan::AnalyticsOnly => todo.push((plan, k)),
                _ => d.alone(*at, Alone::Trusting),
            }
        }
        (!todo.is_empty()).then_some(Resyncs {
            todo,
            infos,
            contents,
        })
    }

    /// The batch's re-syncs, translated one by one and written together ([`Migrator::write_many`],
    /// the writer of a job run alone). Their page-view snapshots and the accounts V3 deleted
    /// are read for all of them at once; their info and content snapshots again only when the
    /// batch wrote fresh vizzes (`wrote`: a fresh fork moved its parent's count). A job whose
    /// translation fails, or that lost a race, runs alone (which records or reports it).
    async fn resync_ones(
        &self,
        jobs: &[Job],
        mut r: Resyncs,
        wrote: bool,
        users: &HashMap<String, Value>,
        events: &HashMap<String, Value>,
        d: &mut Decided,
    ) {
        let Some((analytics, deleted_users)) = self.resync_reads(&mut r, wrote, events).await
        else {
            for (_, k) in r.todo {
                d.alone(k.0, Alone::Trusting);
            }
            return;
        };
        let known = Known {
            info: &r.infos,
            content: &r.contents,
            analytics: &analytics,
        };
        let (mut ready, mut at_of) = (Vec::new(), Vec::new());
        let (mut views, mut views_at) = (Vec::new(), Vec::new());
        for (plan, (at, p, last, fingerprint, analytics_fingerprint)) in r.todo {
            let migrated = last_migrated(Some(&last));
            if plan == Plan::AnalyticsOnly {
                views_at.push(at);
                views.push(PageViews {
                    viz: p.viz.clone(),
                    analytics: events.get(&p.analytics_id),
                    analytics_id: p.analytics_id,
                    batch: jobs[at].batch.clone(),
                    attempts: last.attempts + 1,
                    m: migrated.expect("analytics-only implies a migration"),
                    analytics_fingerprint,
                });
                continue;
            }
            let earlier = d.earlier.contains(&p.viz);
            let reading = Reading {
                analytics: events.get(&p.analytics_id),
                p,
                batch: jobs[at].batch.clone(),
                attempts: last.attempts + 1,
                migrated,
                fingerprint,
                analytics_fingerprint,
                users,
                deleted_users: &deleted_users,
                read: true,
                earlier,
            };
            match self.translated(reading, None, true, known).await {
                Ok(r) => {
                    at_of.push(at);
                    ready.push(r);
                }
                Err(_) => d.alone(at, Alone::Trusting),
            }
        }
        let written = self.write_many(ready, known, Counting::Recount).await;
        let merged = self.merge_page_views(views, &analytics).await;
        let ends = at_of.into_iter().zip(written);
        for (at, r) in ends.chain(views_at.into_iter().zip(merged)) {
            match r {
                // As a job alone runs again at once: never trusting the ledger.
                Err(e) if e.is_collision() => d.alone(at, Alone::Reading),
                r => d.finished.push((at, r)),
            }
        }
    }

    /// What the batch's re-syncs read besides the batch: their page-view snapshots, the
    /// accounts V3 deleted among their users, and their info and content snapshots again when
    /// the batch wrote fresh vizzes (`wrote`). `None` when a read fails.
    async fn resync_reads(
        &self,
        r: &mut Resyncs,
        wrote: bool,
        events: &HashMap<String, Value>,
    ) -> Option<(HashMap<String, Snapshot>, BTreeSet<String>)> {
        let ids: Vec<String> = r.todo.iter().map(|(_, k)| k.1.viz.clone()).collect();
        let analytics_ids: Vec<String> = r
            .todo
            .iter()
            .map(|(_, k)| k.1.analytics_id.clone())
            .filter(|id| events.contains_key(id))
            .collect();
        let user_ids: BTreeSet<String> = r
            .todo
            .iter()
            .filter(|(plan, _)| *plan == Plan::Resync)
            .flat_map(|(_, k)| k.1.user_ids.iter().cloned())
            .collect();
        let user_ids: Vec<String> = user_ids.into_iter().collect();
        let reads = tokio::try_join!(
            self.v3.snapshots(c3::ANALYTICS_EVENT, &analytics_ids),
            self.deleted_users(&user_ids),
            async {
                if !wrote {
                    return Ok(None);
                }
                let snaps = tokio::try_join!(
                    self.v3.snapshots(c3::INFO, &ids),
                    self.v3.snapshots(c3::CONTENT, &ids),
                )?;
                Ok(Some(snaps))
            },
        );
        match reads {
            Ok((analytics, deleted_users, again)) => {
                if let Some((infos, contents)) = again {
                    (r.infos, r.contents) = (infos, contents);
                }
                Some((analytics, deleted_users))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the batch's re-syncs in V3; their jobs run alone");
                None
            }
        }
    }

    /// Where a fresh viz hangs when its parent is `parent`, decided as the per-viz path
    /// decides it (`resolve_parent`, `parent_link`): the parent translated earlier in the batch
    /// (its `chains` entry) or visible in V3 (`infos`) links the viz at its fork point; one
    /// without a fork point for the viz, or whose chain descends from the viz, or that V2 does
    /// not have (`missing`), leaves it to the primordial viz; anything else (a parent neither in
    /// V3 nor in the batch, running alone, or with no commits) runs the viz alone.
    async fn link(&self, f: &Fresh, parent: &str, backfilled: bool, at: &Parents<'_>) -> Linked {
        let commits = if at.in_batch.contains(parent) {
            match at.chains.get(parent) {
                Some(chain) => chain.clone(),
                None => return Linked::Alone,
            }
        } else if let Some(info) = at.infos.get(parent).filter(|s| s.doc_type.is_some()) {
            match self.chain_of(&f.p.viz, parent, info.info_end()).await {
                Ok(c) => c,
                Err(_) => return Linked::Alone,
            }
        } else if at.missing.contains(parent) {
            return Linked::Primordial;
        } else {
            return Linked::Alone;
        };
        if commits.is_empty() {
            return Linked::Alone;
        }
        match self
            .fork_link(&f.p.viz, f.p.created, parent, &commits)
            .await
        {
            Ok(Some(l)) => Linked::At(Box::new(ParentLink { backfilled, ..l })),
            Ok(None) => Linked::Primordial,
            Err(_) => Linked::Alone,
        }
    }

    /// The fresh vizzes of a batch, parents before their forks: parents resolved (in V3, or
    /// earlier in `ready`), translated, written per collection.
    async fn fresh_ones(
        &self,
        ready_vizzes: Vec<Fresh>,
        read: &BatchReads<'_>,
        fetched: &Fetched,
        d: &mut Decided,
    ) {
        let in_batch: HashSet<String> = ready_vizzes.iter().map(|f| f.p.viz.clone()).collect();
        let (infos, missing) = self.fresh_parents(&ready_vizzes, &in_batch, fetched).await;
        let at = Parents {
            in_batch: &in_batch,
            chains: &HashMap::new(),
            infos: &infos,
            missing: &missing,
        };
        let (ready, ats, chains) = self.translate_fresh(ready_vizzes, at, read, d).await;
        let none = HashMap::new();
        let known = Known {
            info: &none,
            content: &none,
            analytics: &none,
        };
        let counting = Counting::Move { before: &infos };
        let written = self.write_many(ready, known, counting).await;
        for ((at, viz, end), r) in ats.into_iter().zip(written) {
            match r {
                Ok(done) => {
                    // Its forks in later batches of this worker find its chain here, not in
                    // V3 (commit ids are content-derived: what V3 holds now, ending where its
                    // info ends).
                    if let Some(chain) = chains.get(&viz) {
                        self.cache_chain(&viz, Some(&end), chain);
                    }
                    if let Some(at) = at {
                        d.finished.push((at, Ok(done)));
                    }
                }
                // Another writer got to one of its documents, or a write failed: the job runs
                // alone, reading what is there.
                Err(e) => {
                    tracing::debug!(viz, error = %e, "fresh viz not finished in its batch; running it alone");
                    if let Some(at) = at {
                        d.alone(at, Alone::Reading);
                    }
                }
            }
        }
    }

    /// The parents of a batch's fresh vizzes outside it: their infos (read while fetching
    /// parents, or now: one query), their chains prefetched, and those V2 lacks too (deleted
    /// vizzes: their forks hang from the primordial viz; the others run their forks alone,
    /// their migration first). A parent whose info cannot be read counts as not visible.
    async fn fresh_parents(
        &self,
        ready_vizzes: &[Fresh],
        in_batch: &HashSet<String>,
        fetched: &Fetched,
    ) -> (HashMap<String, Snapshot>, HashSet<String>) {
        let mut parents: BTreeSet<String> = ready_vizzes
            .iter()
            .filter_map(|f| f.wanted.as_ref().map(|(w, _)| w.clone()))
            .filter(|w| !in_batch.contains(w))
            .collect();
        // Where a fork whose parent cannot be used hangs.
        if !parents.is_empty() && !in_batch.contains(PRIMORDIAL_VIZ_ID) {
            parents.insert(PRIMORDIAL_VIZ_ID.to_string());
        }
        let parents: Vec<String> = parents.into_iter().collect();
        let unread: Vec<String> = parents
            .iter()
            .filter(|p| !fetched.read.contains(*p))
            .cloned()
            .collect();
        let mut infos = match self.v3.snapshots(c3::INFO, &unread).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the batch's parents; their forks run alone");
                HashMap::new()
            }
        };
        for p in &parents {
            if let Some(s) = fetched.infos.get(p) {
                infos.insert(p.clone(), s.clone());
            }
        }
        self.prefetch_chains(&parents, &infos).await;
        let unseen: Vec<String> = parents
            .iter()
            .filter(|p| infos.get(*p).is_none_or(|s| s.doc_type.is_none()))
            .cloned()
            .collect();
        let (checked, unchecked): (Vec<String>, Vec<String>) = unseen
            .into_iter()
            .partition(|p| fetched.v2_checked.contains(p));
        let known_missing = checked.into_iter().filter(|p| !fetched.in_v2.contains(p));
        let missing: HashSet<String> = match self.v2.existing(&unchecked).await {
            Ok(found) => unchecked
                .into_iter()
                .filter(|p| !found.contains(p))
                .chain(known_missing)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the batch's parents from V2; their forks run alone");
                HashSet::new()
            }
        };
        (infos, missing)
    }

    /// The batch's fresh vizzes, parents first, each hung from its parent (see
    /// [`Migrator::hang`]; a fork of a viz in the batch from its parent's translation) and
    /// translated: ready to write, with each one's place in the batch, id and `info.end`, and
    /// the chains V3 holds of them once written. One that cannot be hung here or does not
    /// translate runs alone.
    async fn translate_fresh(
        &self,
        ready_vizzes: Vec<Fresh>,
        parents: Parents<'_>,
        read: &BatchReads<'_>,
        d: &mut Decided,
    ) -> (
        Vec<Ready>,
        Vec<FreshAt>,
        HashMap<String, Arc<Vec<v3::Commit>>>,
    ) {
        let BatchReads {
            users,
            events,
            deleted_users,
        } = *read;
        // The chains of the vizzes translated so far: V3 holds exactly these once written.
        let mut chains: HashMap<String, Arc<Vec<v3::Commit>>> = HashMap::new();
        let (mut ready, mut ats) = (Vec::new(), Vec::new());
        for f in ready_vizzes {
            let at = Parents {
                chains: &chains,
                ..parents
            };
            let Some(link) = self.hang(&f, &at).await else {
                d.alone_fresh(&f, Alone::Trusting);
                continue;
            };
            let ctx = Context {
                parent: parent_of(link.as_ref()),
                users,
                analytics: events.get(&f.p.analytics_id),
                v3_analytics: None,
                previous: None,
                deleted_users,
                now: now_secs(),
            };
            let Ok(t) = translate::translate(&f.p, &ctx, &self.cfg) else {
                d.alone_fresh(&f, Alone::Trusting);
                continue;
            };
            chains.insert(f.p.viz.clone(), Arc::new(t.commits.clone()));
            ats.push((f.at, f.p.viz.clone(), t.info.end.clone()));
            let earlier = d.earlier.contains(&f.p.viz);
            ready.push(Ready {
                p: f.p,
                t,
                batch: f.batch,
                attempts: f.attempts,
                fingerprint: f.fingerprint,
                analytics_fingerprint: f.analytics_fingerprint,
                parent: link,
                previous_upvoters: false,
                info_base: None,
                resync: None,
                read: false,
                earlier,
            });
        }
        (ready, ats, chains)
    }

    /// Where a fresh viz hangs: `Some(None)` a root, `Some(Some(link))` its parent (V2's, or
    /// the primordial viz when V2's cannot be used), `None` when it must run alone.
    async fn hang(&self, f: &Fresh, at: &Parents<'_>) -> Option<Option<ParentLink>> {
        let Some((parent, backfilled)) = &f.wanted else {
            return Some(None);
        };
        match self.link(f, parent, *backfilled, at).await {
            Linked::At(l) => Some(Some(*l)),
            Linked::Primordial if parent != PRIMORDIAL_VIZ_ID => {
                match self.link(f, PRIMORDIAL_VIZ_ID, true, at).await {
                    Linked::At(l) => Some(Some(*l)),
                    Linked::Primordial | Linked::Alone => None,
                }
            }
            Linked::Primordial | Linked::Alone => None,
        }
    }

    /// Read the chains of `parents` (visible in `infos`) that this worker has not cached at
    /// their info's end, in one query, into the chain cache. A failure is left to the
    /// per-parent reads.
    pub(super) async fn prefetch_chains(
        &self,
        parents: &[String],
        infos: &HashMap<String, Snapshot>,
    ) {
        let wanted: Vec<String> = parents
            .iter()
            .filter(|p| {
                infos
                    .get(*p)
                    .filter(|s| s.doc_type.is_some())
                    .is_some_and(|s| self.cached_chain(p, s.info_end()).is_none())
            })
            .cloned()
            .collect();
        if wanted.is_empty() {
            return;
        }
        match self.v3.commits_of_many(&wanted).await {
            Ok(chains) => {
                for (parent, chain) in chains {
                    let end = infos.get(&parent).and_then(Snapshot::info_end);
                    self.cache_chain(&parent, end, &Arc::new(chain));
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the parents' chains at once"),
        }
    }
}

/// The batch's prepared vizzes split: fresh ones (the ledger has no record of them; the
/// parents fetched for them first) and the ones the ledger knows, with their V2 fingerprints.
fn split_fresh(
    jobs: &[Job],
    prepared: Vec<PreparedJob>,
    extras: Vec<(Prepared, Option<String>)>,
    events: &HashMap<String, Value>,
) -> (Vec<Fresh>, Vec<KnownViz>) {
    let fresh_of = |at: Option<usize>, batch: Option<String>, p: Prepared| {
        let fingerprint = p.source_fingerprint();
        let analytics_fingerprint = events.get(&p.analytics_id).map(ids::fingerprint);
        Fresh {
            at,
            batch,
            wanted: wanted_parent(&p),
            p,
            attempts: 1,
            fingerprint,
            analytics_fingerprint,
        }
    };
    let mut fresh: Vec<Fresh> = extras
        .into_iter()
        .map(|(p, batch)| fresh_of(None, batch, p))
        .collect();
    let mut known = Vec::new();
    for (at, p, last) in prepared {
        match last {
            None => fresh.push(fresh_of(Some(at), jobs[at].batch.clone(), p)),
            Some(last) => {
                let fingerprint = p.source_fingerprint();
                let analytics_fingerprint = events.get(&p.analytics_id).map(ids::fingerprint);
                known.push((at, p, last, fingerprint, analytics_fingerprint))
            }
        }
    }
    (fresh, known)
}

/// Parents before their forks: a fork of a viz in the batch is translated from its parent's
/// translation (the commits V3 is about to hold), and all are written at once. A fork cycle
/// within the batch runs alone (the per-viz path decides who is its root).
fn parents_first(fresh: Vec<Fresh>, d: &mut Decided) -> Vec<Fresh> {
    let mut ordered = Vec::with_capacity(fresh.len());
    let mut waiting = fresh;
    while !waiting.is_empty() {
        let in_batch: HashSet<String> = waiting.iter().map(|f| f.p.viz.clone()).collect();
        let (ready, rest): (Vec<Fresh>, Vec<Fresh>) = waiting
            .into_iter()
            .partition(|f| f.wanted.as_ref().is_none_or(|(w, _)| !in_batch.contains(w)));
        if ready.is_empty() {
            for f in rest {
                d.alone_fresh(&f, Alone::Trusting);
            }
            break;
        }
        ordered.extend(ready);
        waiting = rest;
    }
    ordered
}

/// The parent a fresh viz asks for (V2's, or the primordial viz), and whether the link is
/// backfilled.
pub(super) fn wanted_parent(p: &Prepared) -> Option<(String, bool)> {
    match &p.parent {
        ParentRequest::Root => None,
        ParentRequest::Viz(id) => Some((id.clone(), p.info.fork_from_backfilled == Some(true))),
        ParentRequest::Primordial => Some((PRIMORDIAL_VIZ_ID.to_string(), true)),
    }
}
