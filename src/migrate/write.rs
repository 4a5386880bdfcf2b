//! The one writer of a migrated viz's V3 documents, for one viz or many at once.
//!
//! [`Migrator::write_many`] takes vizzes translated and decided ([`Ready`]) and writes them
//! per collection in the order that keeps a half-done job invisible (users → commits →
//! content → upvotes, permissions, analytics → info → the parent's `forksCount`): each
//! collection's documents of all the vizzes in one or two commands, every per-document result
//! mapped back to its viz, a viz that raced or failed left out of the collections after it.
//! Then the ledger records of the vizzes written, in one command. On a re-sync V3's side
//! decides (spec 3.4): content V3 owns is left as it is, the info is merged three-way (see
//! [`crate::merge`]), fields both sides changed end the job `conflict`, and what a stopped
//! attempt of ours left is taken back.
//!
//! A job run alone writes through it as a batch of one; the worker's batch writes its fresh
//! vizzes and its re-syncs through it (`tests/batch.rs::a_batch_writes_what_one_job_at_a_time_writes`,
//! `a_batch_resyncs_what_one_job_at_a_time_resyncs`). The parents' `forksCount` is recounted
//! from V3 per fork for a job alone, moved once per parent by all its forks for a batch
//! ([`Counting`]); both fall back to the one recount loop, [`Migrator::recount`].

use super::{
    ledger_err, now_ms, record_of, to_value, v3_err, Done, JobError, Migrator, ParentLink,
    ResyncDecision, RECOUNT_TRIES,
};
use crate::ledger::{Migrated, VizRecord};
use crate::translate::{Prepared, TranslateError, Translation};
use crate::v3::store::{Policy, Snapshot, StoreError, SyncReport};
use crate::v3::{self, collections as c3, Commit};
use crate::{history, ids, Outcome};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// A viz translated and decided: what [`Migrator::write_many`] writes.
pub(super) struct Ready {
    pub p: Prepared,
    pub t: Translation,
    pub batch: Option<String>,
    pub attempts: i64,
    pub fingerprint: String,
    pub analytics_fingerprint: Option<String>,
    /// The parent the viz hangs from, on a first migration (its `forksCount` is recounted).
    pub parent: Option<ParentLink>,
    /// The migration wrote upvotes and permissions of the viz before: the migrated ones V2
    /// no longer has are deleted.
    pub previous_upvoters: bool,
    /// The Info the migration last wrote, when V3 holds the viz's info: the three-way base
    /// every info write merges against (see [`crate::merge`]).
    pub info_base: Option<Value>,
    /// What the re-sync decided about the content (`None` on a first migration).
    pub resync: Option<ResyncDecision>,
    /// Whether the viz's own V3 documents were read. Not when the ledger has no record of it:
    /// nothing of it was written, and a create that finds a doc of it there anyway (left by
    /// an attempt that stopped half-way) makes the job run again, reading.
    pub read: bool,
    /// An earlier attempt of the job ran (a redelivery, a retry): it may have stopped between
    /// an op and its snapshot, on the viz's documents or its parent's info, where another
    /// writer has moved on since (another op at that version); that op is taken back once
    /// this run wrote there. Only such jobs pay the two reads a look costs.
    pub earlier: bool,
}

impl Ready {
    fn viz(&self) -> &str {
        &self.p.viz
    }

    fn content_ours(&self) -> bool {
        self.resync.as_ref().is_none_or(|d| d.content_ours)
    }

    /// An attempt of ours may have stopped after some of its writes: a first migration that
    /// read V3 (a rerun), or a re-sync that found signs of one.
    fn recovering(&self) -> bool {
        self.earlier
            || match &self.resync {
                None => self.read,
                Some(d) => d.interrupted || d.last.is_none(),
            }
    }
}

/// Snapshots read before translating (the vizzes' info and content, their analytics events),
/// by id: the writes go by them instead of reading them again.
#[derive(Clone, Copy)]
pub(super) struct Known<'a> {
    pub info: &'a HashMap<String, Snapshot>,
    pub content: &'a HashMap<String, Snapshot>,
    pub analytics: &'a HashMap<String, Snapshot>,
}

impl Known<'_> {
    /// The live content snapshot of `viz`, if read.
    pub fn live_content(&self, viz: &str) -> Option<&Snapshot> {
        self.content.get(viz).filter(|s| s.doc_type.is_some())
    }
}

/// One viz being written.
struct Slot {
    r: Ready,
    /// Docs of the viz another writer got to first: the job runs again (before its info).
    raced: Vec<String>,
    failed: Option<JobError>,
    /// The version the viz's content is at after its writes.
    content_v: i64,
    /// Info fields V2 and V3 both changed (V3's kept).
    field_conflicts: Vec<String>,
}

impl Slot {
    fn viz(&self) -> &str {
        self.r.viz()
    }

    fn live(&self) -> bool {
        self.failed.is_none()
    }

    /// The job's end and its ledger record.
    fn finish(self) -> (Done, VizRecord) {
        let content_ours = self.r.content_ours();
        let Ready {
            p,
            t,
            batch,
            attempts,
            fingerprint,
            analytics_fingerprint,
            info_base,
            resync,
            ..
        } = self.r;
        let mut conflicts = resync
            .as_ref()
            .map(|d| d.conflicts.clone())
            .unwrap_or_default();
        conflicts.extend(self.field_conflicts);
        let (mut done, mut migrated, skipped) =
            migrated_of(&p, &t, fingerprint, analytics_fingerprint, self.content_v);
        let last = resync.as_ref().and_then(|d| d.last.as_ref());
        keep_base(
            &mut migrated,
            last,
            info_base.as_ref(),
            &conflicts,
            content_ours,
        );
        if !conflicts.is_empty() {
            let reason = crate::merge::conflict_reason(&conflicts);
            tracing::warn!(viz = %p.viz, %reason, "conflict: V2 and V3 both changed the viz; V3's kept");
            done.outcome = Outcome::Conflict;
            done.reason = Some(reason);
        }
        let kind = (done.outcome == Outcome::Conflict).then_some("conflict");
        let rec = record_of(
            &done,
            kind,
            batch.as_deref(),
            attempts,
            Some(migrated),
            skipped,
        );
        (done, rec)
    }
}

/// Doc id → the slots whose doc it is (a user can be many vizzes').
type Owners = HashMap<String, Vec<usize>>;

/// Fail each live slot `pick` selects: a command written for all of them failed with `e`.
fn fail(slots: &mut [Slot], pick: impl Fn(&Slot) -> bool, e: &StoreError) {
    for s in slots.iter_mut().filter(|s| s.live() && pick(s)) {
        s.failed = Some(JobError::V3 {
            viz: s.viz().to_string(),
            source: e.clone(),
        });
    }
}

/// Map a sync's lost races back to their slots, and its creates that found the doc there
/// when `own` says the slot went by no snapshot of it, or by one read before the other
/// writer's (users are shared docs whose creates are identical: never).
fn note(slots: &mut [Slot], owners: &Owners, r: SyncReport, own: impl Fn(&Ready) -> bool) {
    for id in r.lost_races {
        for &i in owners.get(&id).into_iter().flatten() {
            slots[i].raced.push(id.clone());
        }
    }
    for id in r.existed {
        for &i in owners.get(&id).into_iter().flatten() {
            if own(&slots[i].r) {
                slots[i].raced.push(id.clone());
            }
        }
    }
}

/// A slot that raced ends here: its job runs again. So does a fork of a viz written here that
/// ended (its parents come first in `slots`): it waits for that viz.
fn settle_races(slots: &mut [Slot]) {
    let mut ended: HashSet<String> = HashSet::new();
    for s in slots.iter_mut() {
        if let Some(p) = s.r.parent.as_ref().filter(|p| ended.contains(&p.viz)) {
            s.raced.push(format!("{}/{}", c3::INFO, p.viz));
        }
        if s.live() && !s.raced.is_empty() {
            s.failed = Some(JobError::Raced {
                viz: s.viz().to_string(),
                docs: std::mem::take(&mut s.raced),
            });
        }
        if !s.live() {
            ended.insert(s.viz().to_string());
        }
    }
}

impl Migrator {
    /// Write `ready` (see the module doc): one result per viz, in order.
    pub(super) async fn write_many(
        &self,
        ready: Vec<Ready>,
        known: Known<'_>,
        counting: Counting<'_>,
    ) -> Vec<Result<Done, JobError>> {
        let ts = now_ms();
        let mut slots: Vec<Slot> = ready
            .into_iter()
            .map(|r| Slot {
                r,
                raced: Vec::new(),
                failed: None,
                content_v: 0,
                field_conflicts: Vec::new(),
            })
            .collect();
        self.write_users(&mut slots, ts).await;
        self.write_contents(&mut slots, known, ts).await;
        for coll in [c3::UPVOTE, c3::PERMISSION] {
            self.write_entries(&mut slots, coll, ts).await;
        }
        self.write_analytics(&mut slots, known, ts).await;
        // Info last: it makes the viz visible, so not while a document of the viz is not ours,
        // nor while its parent written here is not visible.
        settle_races(&mut slots);
        self.write_infos(&mut slots, known, ts).await;
        settle_races(&mut slots);
        self.count_forks(&mut slots, counting, ts).await;
        settle_races(&mut slots);
        self.take_back_stopped(&mut slots).await;
        self.record_written(slots).await
    }

    async fn write_users(&self, slots: &mut [Slot], ts: i64) {
        let mut owners = Owners::new();
        for (i, s) in slots.iter().enumerate() {
            for u in &s.r.t.users {
                owners.entry(u.id.clone()).or_default().push(i);
            }
        }
        let users = slots.iter().flat_map(|s| s.r.t.users.iter());
        match self.sync_users(users, ts).await {
            Ok(r) => note(slots, &owners, r, |_| false),
            Err(e) => fail(slots, |_| true, &e),
        }
    }

    /// Commits, then the content, of the vizzes whose content is the migration's; the others
    /// keep V3's content at the version V3 has it. A re-sync whose content update lost its
    /// race to a V3 edit takes back the commits it appended: nothing links them (its info
    /// still ends at the migration's last end), and left there V3's next commit would give
    /// that end a second child.
    async fn write_contents(&self, slots: &mut [Slot], known: Known<'_>, ts: i64) {
        let writing = |s: &Slot| s.live() && s.r.content_ours();
        for s in slots.iter_mut().filter(|s| s.live() && !s.r.content_ours()) {
            s.content_v = known.content.get(s.viz()).map_or(0, |c| c.version);
        }
        let commits = slots
            .iter()
            .filter(|s| writing(s))
            .flat_map(|s| s.r.t.commits.iter());
        if let Err(e) = self.v3.insert_commits(commits).await {
            return fail(slots, writing, &e);
        }
        let mut owners = Owners::new();
        let mut contents = Vec::new();
        for (i, s) in slots.iter().enumerate().filter(|(_, s)| writing(s)) {
            owners.insert(s.viz().to_string(), vec![i]);
            contents.push((s.viz().to_string(), s.r.t.content.clone()));
        }
        let report = match self
            .v3
            .sync_known(c3::CONTENT, &contents, known.content, Policy::Update, ts)
            .await
        {
            Ok(r) => r,
            Err(e) => return fail(slots, writing, &e),
        };
        drop(contents);
        let lost: HashSet<String> = report.lost_races.iter().cloned().collect();
        for s in slots.iter_mut().filter(|s| writing(s)) {
            // The version the content is at now (a create makes v1, an op the next version).
            s.content_v = match known.content.get(s.viz()) {
                Some(c) if c.doc_type.is_none() || c.data == s.r.t.content => c.version,
                Some(c) => c.version + 1,
                None => 1,
            };
        }
        let unlinked: Vec<String> = slots
            .iter()
            .filter(|s| writing(s) && lost.contains(s.viz()))
            .filter(|s| s.r.resync.as_ref().is_some_and(|d| d.end_unmoved))
            .flat_map(|s| s.r.t.commits.iter().map(|c| c.id.clone()))
            .collect();
        note(slots, &owners, report, |_| true);
        if let Err(e) = self.v3.delete_commits(&unlinked).await {
            fail(slots, |s| lost.contains(s.viz()), &e);
        }
    }

    /// Upvotes or permissions (`coll`) of the live slots: see [`Migrator::sync_entries`].
    async fn write_entries(&self, slots: &mut [Slot], coll: &str, ts: i64) {
        let mut owners = Owners::new();
        let mut entries = Entries::default();
        for (i, s) in slots.iter().enumerate().filter(|(_, s)| s.live()) {
            let t = &s.r.t;
            let list: Vec<(String, Value, i64)> = if coll == c3::UPVOTE {
                let at = |u: &v3::Upvote| (u.id.clone(), to_value(u), u.timestamp);
                t.upvotes.iter().map(at).collect()
            } else {
                let at = |u: &v3::Permission| (u.id.clone(), to_value(u), u.timestamp);
                t.permissions.iter().map(at).collect()
            };
            for (id, v, at) in list {
                owners.entry(id.clone()).or_default().push(i);
                if s.r.read {
                    entries.read.push(id.clone());
                }
                entries.given.insert(id.clone(), at);
                entries.wanted.push((id, v));
            }
            if s.r.previous_upvoters {
                entries.previous.push(s.viz().to_string());
            }
        }
        match self.sync_entries(coll, &entries, ts).await {
            Ok(r) => note(slots, &owners, r, |r| !r.read),
            Err(e) => fail(slots, |_| true, &e),
        }
    }

    async fn write_analytics(&self, slots: &mut [Slot], known: Known<'_>, ts: i64) {
        let mut owners = Owners::new();
        let mut wanted = Vec::new();
        for (i, s) in slots.iter().enumerate().filter(|(_, s)| s.live()) {
            if let Some(a) = &s.r.t.analytics {
                owners.insert(a.id.clone(), vec![i]);
                wanted.push((a.id.clone(), to_value(a)));
            }
        }
        let synced = self
            .v3
            .sync_known(
                c3::ANALYTICS_EVENT,
                &wanted,
                known.analytics,
                Policy::Update,
                ts,
            )
            .await;
        match synced {
            Ok(r) => note(slots, &owners, r, |_| true),
            Err(e) => fail(slots, |s| s.r.t.analytics.is_some(), &e),
        }
    }

    /// The infos: counts recomputed from V3, never incremented (a viz V3 never had cannot
    /// have V3-native forks or upvotes; its migrated forks hang from it only once it is
    /// visible, and their jobs recount it then), merged with V3's (spec 3.4).
    async fn write_infos(&self, slots: &mut [Slot], known: Known<'_>, ts: i64) {
        let seen: Vec<String> = slots
            .iter()
            .filter(|s| s.live() && known.info.contains_key(s.viz()))
            .map(|s| s.viz().to_string())
            .collect();
        let counts = tokio::try_join!(self.v3.forks_counts(&seen), self.v3.upvotes_counts(&seen));
        let (forks, upvotes) = match counts {
            Ok(c) => c,
            Err(e) => return fail(slots, |s| seen.iter().any(|v| v == s.viz()), &e),
        };
        let mut owners = Owners::new();
        let mut wanted = Vec::new();
        for (i, s) in slots.iter_mut().enumerate().filter(|(_, s)| s.live()) {
            let viz = s.r.viz().to_string();
            let mut info = s.r.t.info.clone();
            let seen = known.info.contains_key(&viz);
            let count = |c: &HashMap<String, i64>| c.get(&viz).copied().unwrap_or(0);
            info.forks_count = if seen { count(&forks) } else { 0 };
            info.upvotes_count = if seen {
                count(&upvotes)
            } else {
                s.r.t.upvotes.len() as i64
            };
            let ours = to_value(&info);
            let live = known.info.get(&viz).filter(|x| x.doc_type.is_some());
            let data = match (live, &s.r.info_base) {
                (Some(x), Some(base)) => {
                    let m = crate::merge::info(base, &ours, &x.data, s.r.content_ours());
                    s.field_conflicts = m.conflicts;
                    m.data
                }
                _ => ours,
            };
            owners.insert(viz.clone(), vec![i]);
            wanted.push((viz, data));
        }
        match self
            .v3
            .sync_known(c3::INFO, &wanted, known.info, Policy::Update, ts)
            .await
        {
            Ok(r) => note(slots, &owners, r, |_| true),
            Err(e) => fail(slots, |_| true, &e),
        }
    }

    /// The parents' `forksCount`, for the vizzes a first migration hung from one, as
    /// `counting` says; a fork whose parent's count kept losing its race runs again.
    async fn count_forks(&self, slots: &mut [Slot], counting: Counting<'_>, ts: i64) {
        let mut forks_of: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in slots.iter().enumerate().filter(|(_, s)| s.live()) {
            if let Some(parent) = &s.r.parent {
                forks_of.entry(parent.viz.clone()).or_default().push(i);
            }
        }
        if forks_of.is_empty() {
            return;
        }
        let lost = match counting {
            Counting::Recount => {
                let mut lost = Vec::new();
                // One fork at a time, from the parent's info as the job found it.
                for &i in forks_of.values().flatten() {
                    let parent = slots[i].r.parent.as_ref().expect("grouped by parent");
                    let found = parent.info.iter().map(|s| (parent.viz.clone(), s.clone()));
                    match self
                        .recount(vec![parent.viz.clone()], found.collect(), ts)
                        .await
                    {
                        Ok(still) => lost.extend(still),
                        Err(e) => fail(&mut slots[i..=i], |_| true, &e),
                    }
                }
                lost
            }
            Counting::Move { before } => {
                let written: HashSet<&str> = slots.iter().map(Slot::viz).collect();
                let names: HashMap<String, Vec<&str>> = forks_of
                    .iter()
                    .map(|(p, forks)| (p.clone(), forks.iter().map(|&i| slots[i].viz()).collect()))
                    .collect();
                match self.move_counts(&names, before, &written, ts).await {
                    Ok(lost) => lost,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot recount the batch's parents; their forks run again");
                        forks_of.keys().cloned().collect()
                    }
                }
            }
        };
        for parent in lost {
            for &i in forks_of.get(&parent).into_iter().flatten() {
                slots[i].raced.push(format!("{}/{parent}", c3::INFO));
            }
        }
    }

    /// Each parent's `forksCount` moved once for all its forks of a batch (`forks_of`), from
    /// its info as the batch read it (`before`); the ones that cannot be moved so are
    /// recounted. Returns the parents whose count kept losing its race.
    ///
    /// Parents written here (`written`: the batch's own vizzes, and parents fetched for
    /// their forks) move by their forks like the ones outside it, from their info as
    /// created: read back, and used only while still at version 1 with no fork counted. Then
    /// no one has written them since, so no recount has counted the batch's forks (visible
    /// since their infos); one written since is recounted in full.
    async fn move_counts(
        &self,
        forks_of: &HashMap<String, Vec<&str>>,
        before: &HashMap<String, Snapshot>,
        written: &HashSet<&str>,
        ts: i64,
    ) -> Result<Vec<String>, StoreError> {
        let created: Vec<String> = forks_of
            .keys()
            .filter(|p| !before.contains_key(*p) && written.contains(p.as_str()))
            .cloned()
            .collect();
        let mut before = std::borrow::Cow::Borrowed(before);
        if !created.is_empty() {
            match self.v3.snapshots(c3::INFO, &created).await {
                Ok(read) => before.to_mut().extend(
                    read.into_iter()
                        .filter(|(_, s)| s.version == 1 && s.info_forks_count() == Some(0)),
                ),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read back the batch's parents; recounting them");
                }
            }
        }
        let mut full = Vec::new();
        let mut moved = Vec::new();
        for (parent, forks) in forks_of {
            let read = before
                .get(parent)
                .filter(|s| s.doc_type.is_some())
                .and_then(|s| Some((s, s.info_forks_count()?)));
            let Some((s, n)) = read else {
                full.push(parent.clone());
                continue;
            };
            // The move stands for these forks: another batch's move of the same count by as
            // many other forks is not ours (see `Store::move_known`).
            let mut counted: Vec<&str> = forks.clone();
            counted.sort_unstable();
            let data = s.info_with_forks_count(n + forks.len() as i64);
            moved.push((parent.clone(), data, format!("forks {}", counted.join(" "))));
        }
        if !moved.is_empty() {
            let report = self.v3.move_known(c3::INFO, &moved, &before, ts).await?;
            full.extend(report.lost_races);
        }
        self.recount(full, HashMap::new(), ts).await
    }

    /// Recompute each of `parents`' `forksCount` from V3 (a json1 op on its Info where it
    /// changed): the one recount loop, for a fork alone, a batch's parents and a failed fork's
    /// parent. `found` holds infos as a job read them before writing: current unless a sibling
    /// recounted in between, they save a read; a write from one that is not current loses its
    /// race, and the count is taken again from a fresh read, here, rather than by re-running
    /// the job. Returns the parents still losing after [`RECOUNT_TRIES`] rounds.
    pub(super) async fn recount(
        &self,
        mut parents: Vec<String>,
        mut found: HashMap<String, Snapshot>,
        ts: i64,
    ) -> Result<Vec<String>, StoreError> {
        for _ in 0..RECOUNT_TRIES {
            if parents.is_empty() {
                break;
            }
            // The snapshots first, then the counts: each write is conditional on its
            // snapshot, so any writer between the two (a batch moving the count by its forks)
            // makes it lose and we count again. Read the other way round, a count taken before
            // another fork appeared could agree with a snapshot taken after that fork was
            // counted into it, and the fork counted in neither would be lost for good
            // (`tests/batch.rs::a_recount_racing_batches_counts_every_fork`).
            let unread: Vec<String> = parents
                .iter()
                .filter(|p| !found.contains_key(*p))
                .cloned()
                .collect();
            let mut infos = self.v3.snapshots(c3::INFO, &unread).await?;
            let given: HashSet<String> = found.keys().cloned().collect();
            infos.extend(found.drain());
            // Two commands, not one `$or` aggregate: SecantusDB answers an `$or` by scanning
            // the collection (hundreds of ms at 5,000 vizzes, measured), a count by the index.
            let counts = self.v3.forks_counts(&parents).await?;
            let mut again = Vec::new();
            let mut wanted = Vec::new();
            for p in &parents {
                let Some(s) = infos.get(p).filter(|s| s.doc_type.is_some()) else {
                    continue;
                };
                let count = counts.get(p).copied().unwrap_or(0);
                if s.info_forks_count() != Some(count) {
                    wanted.push((p.clone(), s.info_with_forks_count(count)));
                } else if given.contains(p) {
                    // Already right in what a job read (a re-run): make sure it still is.
                    again.push(p.clone());
                }
            }
            let report = self
                .v3
                .sync_known(c3::INFO, &wanted, &infos, Policy::Update, ts)
                .await?;
            // A recount may overtake a batch's move of this count that stopped between its op
            // and its snapshot: that op is taken back.
            for (p, _) in wanted
                .iter()
                .filter(|(p, _)| !report.lost_races.contains(p))
            {
                self.v3.take_back_orphans(c3::INFO, p).await?;
            }
            parents = report.lost_races;
            parents.extend(again);
        }
        Ok(parents)
    }

    /// What stopped attempts of ours left. Commits appended before a stop (before the content
    /// op, the info or the ledger record) that the chain just written does not reach: taken
    /// back, or the viz's chain would fork (one read for all the vizzes that appended commits
    /// to a viz they read). Ops of ours a stopped writer left in a log (this job's earlier
    /// attempt, a batch's move of its count), overtaken now: taken back. A first migration
    /// that read V3 is a rerun: an attempt that stopped between a create op and its snapshot,
    /// while V2 moved on, left an op this job's create did not find (another body, another id).
    async fn take_back_stopped(&self, slots: &mut [Slot]) {
        let appended = |s: &Slot| {
            let interrupted = s.r.resync.as_ref().is_some_and(|d| d.interrupted);
            s.live()
                && s.r.content_ours()
                && (interrupted || (s.r.read && !s.r.t.commits.is_empty()))
        };
        let vizzes: Vec<String> = slots
            .iter()
            .filter(|s| appended(s))
            .map(|s| s.viz().to_string())
            .collect();
        match self.v3.commits_of_many(&vizzes).await {
            Ok(chains) => {
                for s in slots.iter_mut().filter(|s| appended(s)) {
                    let all = chains.get(s.viz()).map_or(&[][..], Vec::as_slice);
                    if let Err(e) = self
                        .drop_orphan_commits(s.viz(), &s.r.t.info.end, all)
                        .await
                    {
                        s.failed = Some(e);
                    }
                }
            }
            Err(e) => fail(slots, appended, &e),
        }
        // The parents' infos a stopped attempt of a fork moved (or recounted).
        let mut parents: Vec<String> = slots
            .iter()
            .filter(|s| s.live() && s.r.earlier)
            .filter_map(|s| Some(s.r.parent.as_ref()?.viz.clone()))
            .collect();
        parents.sort();
        parents.dedup();
        for parent in parents {
            if let Err(e) = self.v3.take_back_orphans(c3::INFO, &parent).await {
                let forks_of = |s: &Slot| s.r.parent.as_ref().is_some_and(|p| p.viz == parent);
                fail(slots, forks_of, &e);
            }
        }
        for s in slots.iter_mut().filter(|s| s.live() && s.r.recovering()) {
            let (viz, t) = (s.r.viz(), &s.r.t);
            let analytics = t
                .analytics
                .as_ref()
                .map(|a| (c3::ANALYTICS_EVENT, a.id.as_str()));
            for (coll, id) in [(c3::INFO, viz), (c3::CONTENT, viz)]
                .into_iter()
                .chain(analytics)
            {
                if let Err(e) = self.v3.take_back_orphans(coll, id).await {
                    s.failed = Some(v3_err(viz)(e));
                    break;
                }
            }
        }
    }

    /// The ledger records of the vizzes written (one command); the results in order.
    async fn record_written(&self, slots: Vec<Slot>) -> Vec<Result<Done, JobError>> {
        // A viz whose documents were not read had no record (see [`Ready::read`]).
        let unrecorded = slots
            .iter()
            .filter(|s| !s.r.read)
            .map(|s| s.viz().to_string())
            .collect();
        let ends = slots
            .into_iter()
            .map(|s| match s.failed {
                Some(e) => Err(e),
                None => Ok(s.finish()),
            })
            .collect();
        self.record_all(ends, &unrecorded).await
    }

    /// Record the jobs that ended (one command for all of them, two with `unrecorded` ones:
    /// see [`Ledger::record_many`](crate::ledger::Ledger::record_many); the only way a job's
    /// end reaches the ledger but a failure's, see [`Migrator::record_failure`]), in order: a
    /// record the ledger refused or could not take makes its job's result that error.
    pub(super) async fn record_all(
        &self,
        ends: Vec<Result<(Done, VizRecord), JobError>>,
        unrecorded: &HashSet<String>,
    ) -> Vec<Result<Done, JobError>> {
        let mut out = Vec::with_capacity(ends.len());
        let mut recs = Vec::new();
        for end in ends {
            out.push(end.map(|(done, rec)| {
                recs.push(rec);
                done
            }));
        }
        match self.ledger.record_many(&recs, unrecorded).await {
            Ok(refused) => {
                for (viz, message) in refused {
                    let at = out
                        .iter()
                        .position(|r| matches!(r, Ok(d) if d.viz == viz))
                        .expect("a refused record is one of ours");
                    let source = StoreError::Refused { code: 0, message };
                    out[at] = Err(JobError::V3 { viz, source });
                }
            }
            Err(e) => {
                for r in out.iter_mut() {
                    if let Ok(d) = r {
                        let err = ledger_err(&d.viz)(e.clone());
                        *r = Err(err);
                    }
                }
            }
        }
        out
    }

    /// [`Plan::AnalyticsOnly`](crate::outcome::Plan::AnalyticsOnly): V2's page-view delta
    /// merged into V3's record, nothing else, for each of `views` (one sync for all, then
    /// their records). Each merge is conditional on the version read in `known`: a V3 page
    /// view landing in between makes it a lost race, and the job runs again.
    pub(super) async fn merge_page_views(
        &self,
        views: Vec<PageViews<'_>>,
        known: &HashMap<String, Snapshot>,
    ) -> Vec<Result<Done, JobError>> {
        let mut ends: Vec<Result<(Done, VizRecord), JobError>> = Vec::new();
        let mut wanted = Vec::new();
        let mut owners: HashMap<String, usize> = HashMap::new();
        for v in views {
            let (end, merged) = page_views_merged(v, known);
            if let Some((id, data)) = merged {
                owners.insert(id.clone(), ends.len());
                wanted.push((id, data));
            }
            ends.push(end);
        }
        let synced = self
            .v3
            .sync_known(
                c3::ANALYTICS_EVENT,
                &wanted,
                known,
                Policy::Update,
                now_ms(),
            )
            .await;
        let raced: Vec<(usize, String)> = match synced {
            Ok(r) => r
                .lost_races
                .into_iter()
                .chain(r.existed)
                .filter_map(|id| Some((*owners.get(&id)?, id)))
                .collect(),
            Err(e) => {
                for &at in owners.values() {
                    if let Ok((d, _)) = &ends[at] {
                        let err = v3_err(&d.viz)(e.clone());
                        ends[at] = Err(err);
                    }
                }
                Vec::new()
            }
        };
        for (at, doc) in raced {
            if let Ok((d, _)) = &ends[at] {
                let viz = d.viz.clone();
                ends[at] = Err(JobError::Raced {
                    viz,
                    docs: vec![doc],
                });
            }
        }
        self.record_all(ends, &HashSet::new()).await
    }

    /// Delete the commits of `viz` (`all` of them) its chain no longer reaches from `end`
    /// (where its info now ends): appended by an attempt that stopped, then overtaken by a
    /// re-sync that appended elsewhere. Left, the chain would fork there (`commits_of` follows
    /// one branch at random, and a later fork could hang from a commit V3 never showed).
    /// Kept, all of them, when any other commit hangs from one (a V3 fork made while it was
    /// shown).
    async fn drop_orphan_commits(
        &self,
        viz: &str,
        end: &str,
        all: &[Commit],
    ) -> Result<(), JobError> {
        let parents: HashMap<&str, Option<&str>> = all
            .iter()
            .map(|c| (c.id.as_str(), c.parent.as_deref()))
            .collect();
        let mut reached = HashSet::new();
        let mut at = Some(end);
        while let Some(id) = at.filter(|id| reached.insert(*id)) {
            at = parents.get(id).copied().flatten();
        }
        let orphans: Vec<String> = all
            .iter()
            .filter(|c| !reached.contains(c.id.as_str()))
            .map(|c| c.id.clone())
            .collect();
        if orphans.is_empty() {
            return Ok(());
        }
        let children = self
            .v3
            .commits_with_parent(&orphans)
            .await
            .map_err(v3_err(viz))?;
        if children.iter().any(|c| !orphans.contains(&c.id)) {
            tracing::warn!(
                viz,
                orphans = orphans.len(),
                "commits of a stopped attempt have a child elsewhere; kept"
            );
            return Ok(());
        }
        tracing::info!(
            viz,
            orphans = orphans.len(),
            "taking back the commits of a stopped attempt"
        );
        self.v3.delete_commits(&orphans).await.map_err(v3_err(viz))
    }

    /// Sync `users` (V3 `user` docs: shared, their creates identical) that this worker has not
    /// synced as they are now, each once; remembers the ones it synced.
    pub(super) async fn sync_users<'u>(
        &self,
        users: impl IntoIterator<Item = &'u v3::User>,
        ts: i64,
    ) -> Result<SyncReport, StoreError> {
        let (mut wanted, mut prints) = (Vec::new(), Vec::new());
        let mut seen = HashSet::new();
        for u in users {
            if !seen.insert(u.id.as_str()) {
                continue;
            }
            let v = to_value(u);
            let f = ids::fingerprint(&v);
            if self.users_synced.get(&u.id).as_ref() != Some(&f) {
                wanted.push((u.id.clone(), v));
                prints.push(f);
            }
        }
        let report = self
            .v3
            .sync(
                c3::USER,
                &wanted,
                Policy::UpdateIfOurs {
                    v3_owned: &v3::USER_V3_OWNED,
                },
                ts,
            )
            .await?;
        for ((id, _), f) in wanted.into_iter().zip(prints) {
            if !report.lost_races.contains(&id) {
                let bytes = f.len();
                self.users_synced.insert(id, f, bytes);
            }
        }
        Ok(report)
    }

    /// Make the migrated docs of a per-viz set (upvotes, permissions) match V2: create new ones,
    /// delete migrated ones that left V2, never touch V3-native ones. Entries of a viz whose own
    /// documents were not read (see [`Ready::read`]) are created without reading.
    ///
    /// An entry V3 deleted (a tombstone) stays deleted (spec 3.4) unless the migration deleted
    /// it itself (V2 dropped it, then gave it again) or it is an upvote V2 gave after V3's
    /// removal.
    async fn sync_entries(
        &self,
        coll: &str,
        e: &Entries,
        ts: i64,
    ) -> Result<SyncReport, StoreError> {
        let existing = self.v3.snapshots(coll, &e.read).await?;
        let tombstones: Vec<&Snapshot> =
            existing.values().filter(|s| s.doc_type.is_none()).collect();
        let mut revive = HashSet::new();
        if !tombstones.is_empty() {
            let ours = self.v3.last_op_is_ours(coll, &tombstones).await?;
            for s in tombstones {
                let newer = coll == c3::UPVOTE
                    && e.given
                        .get(&s.id)
                        .zip(s.mtime)
                        .is_some_and(|(at, removed)| at * 1000 > removed);
                if ours.contains(&s.id) || newer {
                    revive.insert(s.id.clone());
                }
            }
        }
        let mut report = self
            .v3
            .sync_reviving(
                coll,
                &e.wanted,
                &existing,
                Policy::UpdateIfMigrated,
                &revive,
                ts,
            )
            .await?;
        if e.previous.is_empty() {
            return Ok(report);
        }
        let field = if coll == c3::UPVOTE {
            "viz"
        } else {
            "resource"
        };
        // On the indexed field alone (see `Store::counts_by`), the rest checked here.
        let selected = match e.previous.as_slice() {
            [one] => mongodb::bson::Bson::from(one.as_str()),
            many => mongodb::bson::Bson::from(mongodb::bson::doc! {"$in": many}),
        };
        let filter = mongodb::bson::doc! {field: selected};
        let migrated = |s: &Snapshot| {
            s.doc_type.is_some() && s.data.get("migratedFromV2") == Some(&Value::Bool(true))
        };
        for (id, s) in self.v3.find_snapshots(coll, filter).await? {
            if migrated(&s) && !e.given.contains_key(&id) {
                self.v3.delete(coll, &s, ts, &mut report).await?;
            }
        }
        Ok(report)
    }
}

/// How [`Migrator::write_many`] brings the parents' `forksCount` up to the forks it made
/// visible.
#[derive(Clone, Copy)]
pub(super) enum Counting<'a> {
    /// Each fork recounts its parent from V3 ([`Migrator::recount`]): a job alone.
    Recount,
    /// Each parent's count moves once by all its forks written, from its info as read before
    /// (`before`; see [`Migrator::move_counts`]): a batch.
    Move {
        before: &'a HashMap<String, Snapshot>,
    },
}

/// A viz whose only change is V2's page views.
pub(super) struct PageViews<'a> {
    pub viz: String,
    /// Its V3 page-view record's id.
    pub analytics_id: String,
    pub batch: Option<String>,
    pub attempts: i64,
    /// What the ledger says the migration last wrote.
    pub m: Migrated,
    /// V2's page-view record now.
    pub analytics: Option<&'a Value>,
    pub analytics_fingerprint: Option<String>,
}

/// One viz's page-view merge: its end and ledger record, and V3's page-view record merged
/// with V2's delta (none when V2 has no record), from V3's as `known` holds it.
#[allow(clippy::type_complexity)]
fn page_views_merged(
    mut v: PageViews<'_>,
    known: &HashMap<String, Snapshot>,
) -> (Result<(Done, VizRecord), JobError>, Option<(String, Value)>) {
    let rec = match v.analytics.map(crate::v2::parse_event_record).transpose() {
        Ok(rec) => rec,
        Err(source) => {
            let viz = v.viz.clone();
            return (Err(TranslateError::Malformed { viz, source }.into()), None);
        }
    };
    let mut merged = None;
    if let Some(rec) = rec {
        let v3 = known
            .get(&v.analytics_id)
            .filter(|s| s.doc_type.is_some())
            .and_then(|s| v3::AnalyticsEvent::from_payload(&s.data));
        let data = crate::analytics::merge_record(v3.as_ref(), &rec, v.m.analytics.as_ref());
        merged = Some((rec.id, to_value(&data)));
        v.m.analytics = Some(rec.intervals);
    }
    v.m.analytics_fingerprint = v.analytics_fingerprint;
    let done = Done {
        viz: v.viz,
        outcome: Outcome::Migrated,
        reason: Some("analytics merged".into()),
    };
    let rec = record_of(
        &done,
        None,
        v.batch.as_deref(),
        v.attempts,
        Some(v.m),
        Vec::new(),
    );
    (Ok((done, rec)), merged)
}

/// The upvotes or permissions of the vizzes written together.
#[derive(Default)]
struct Entries {
    /// Id and payload of every entry V2 has.
    wanted: Vec<(String, Value)>,
    /// The V2 entry's time (seconds), by id.
    given: HashMap<String, i64>,
    /// Entries of vizzes whose documents were read: their snapshots are read first.
    read: Vec<String>,
    /// Vizzes the migration wrote entries of before: the migrated ones V2 no longer has go.
    previous: Vec<String>,
}

/// A migration's end: its [`Done`], its ledger [`Migrated`] and the skipped entries' reasons.
pub(super) fn migrated_of(
    p: &Prepared,
    t: &Translation,
    fingerprint: String,
    analytics_fingerprint: Option<String>,
    v3_content_v: i64,
) -> (Done, Migrated, Vec<String>) {
    let viz = p.viz.as_str();
    let history = match &t.history {
        history::Mode::Replayed { base_v, ops } => format!(
            "replayed {ops} ops from v{base_v}, {} new commits",
            t.commits.len()
        ),
        history::Mode::Fallback { reason } => {
            format!("fallback ({reason}), {} new commits", t.commits.len())
        }
    };
    let migrated = Migrated {
        fingerprint,
        analytics_fingerprint,
        info_v: p.info_v as i64,
        content_v: p.content_v as i64,
        start: t.info.start.clone(),
        end: t.info.end.clone(),
        end_timestamp: t.info.updated,
        v3_content_v,
        file_ids: t.file_ids.clone(),
        analytics: t.analytics_v2.clone(),
        forked_from: t.info.forked_from.clone(),
        forked_from_is_backfilled: t.info.forked_from_is_backfilled,
        history: history.clone(),
        source: Some(p.source().fields()),
        info: Some(t.info.clone()),
    };
    let skipped: Vec<String> = t.skipped.iter().map(|s| s.reason.clone()).collect();
    for s in &skipped {
        tracing::warn!(viz, "{s}");
    }
    let reason = match (&t.history, skipped.len()) {
        (history::Mode::Fallback { .. }, _) => Some(history),
        (_, 0) => None,
        (_, n) => Some(format!(
            "{n} upvotes/collaborators skipped (user missing from V2, or no userId)"
        )),
    };
    let done = Done {
        viz: viz.to_string(),
        outcome: Outcome::Migrated,
        reason,
    };
    (done, migrated, skipped)
}

/// What the ledger keeps of `last` in a re-sync's record `m` (spec 3.4). Content V3 owns was
/// not written: the content's part of the record stays the last migration's. A conflict keeps,
/// for the fields that conflicted, the base they had (`base_info`), and the old V2 fingerprint
/// and inputs: every later catch-up plans the viz again and meets the conflict again, until V2
/// and V3 agree, while what was applied moves on.
fn keep_base(
    m: &mut Migrated,
    last: Option<&Migrated>,
    base_info: Option<&Value>,
    conflicts: &[String],
    content_ours: bool,
) {
    let Some(last) = last else { return };
    if !content_ours {
        m.content_v = last.content_v;
        m.start = last.start.clone();
        m.end = last.end.clone();
        m.end_timestamp = last.end_timestamp;
        m.v3_content_v = last.v3_content_v;
        m.file_ids = last.file_ids.clone();
        m.history = last.history.clone();
    }
    if conflicts.is_empty() {
        return;
    }
    m.fingerprint = last.fingerprint.clone();
    m.source = last.source.clone();
    let (Some(info), Some(base)) = (m.info.as_mut(), base_info) else {
        return;
    };
    let mut v = to_value(&*info);
    for f in conflicts {
        if let Some(was) = base.get(f) {
            v[f.as_str()] = was.clone();
        }
    }
    if let Ok(kept) = serde_json::from_value(v) {
        *info = kept;
    }
}
