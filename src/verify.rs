//! `planner verify`: proves a migration by re-deriving, for every V2 viz in scope, the V3 state a
//! fresh migration would produce from V2 *as it is now*, and comparing it with what V3 holds,
//! the way the re-sync reads V3: **what V3's users did is V3's** (spec 3.4), and an act of
//! V3's that the migration undid is a mismatch.
//!
//! What is compared, per category (a mismatch names the viz and the category):
//! - `not-migrated`: the ledger has no `migrated`/`unchanged` outcome for a viz that translates
//!   (and V3 did not delete it or its owner);
//! - `missing`: the ledger says migrated but V3 lacks its `info` or `content` doc (a tombstone
//!   the migration itself made counts as missing; one V3 made is `deleted-in-v3`, below);
//! - `content`: title, height and the files in display order (name and text). File *ids* are not
//!   compared: they are internal to V3 and a re-synced viz legitimately keeps the ids it had.
//!   Not compared when V3 edited the content since the migration's last op (an op in its log
//!   after our last that is not ours): the content is then V3's (counted in `v3Owned.content`);
//! - `info`: owner, title, fork parent, created / updated times, visibility, `migratedFromV2`.
//!   A field whose V3 value differs from V2's is **V3's**, not a mismatch (counted in
//!   `v3Owned.<field>`), when V3 changed it: it differs from what the migration last wrote (the
//!   ledger's `migrated.info`, the re-sync's three-way base) or, for records without that base,
//!   the last op that changed it is V3's. A value an op of ours wrote last is never V3's.
//!   Fields the translation does not produce (`trashed`, whatever V3 adds) are never compared;
//! - `history`: the commit chain (across fork parents) replays with json1 from `{}` to exactly the
//!   `content` doc, and `info.end` is the chain's last commit. When the content is V3's, V3
//!   commits its edits on its own schedule (content may be ahead of `info.end`, and V3's commits
//!   may follow ours): then `info.end` must be one of the viz's commits and the chain up to it
//!   must replay, nothing more;
//! - `info` counts: `forksCount` and `upvotesCount` equal what V3 holds (its `info` docs forked
//!   from the viz, its live upvotes);
//! - `analytics`: the page-view record holds exactly V2's counts in every interval when V3
//!   counted no views of its own (no op in its log but the migration's), and never fewer than V2
//!   counted when it did; the V2 record it says it merged (`v2Merged`) is V2's now;
//! - `envelope`: info and content are ShareDB snapshots as sharedb-mongo writes them: `_type`
//!   "p", `_m.ctime` kept, `_o` naming the op of that doc that made its current version;
//! - `users`, `upvotes`, `permissions`: every doc the translation would write exists (V3 may
//!   hold more: V3-native upvotes and permissions are never touched), except docs V3 deleted
//!   (a tombstone whose `del` is not ours: never re-created) and entries of users V3 deleted.
//!   An upvote V3 removed that V2 gave again later (V2 timestamp newer than the tombstone's
//!   `_m.mtime`) must be back;
//! - `undone`: from the op logs of the viz's info, content, upvote and permission docs and of
//!   the users it references (each user reported once, on the first viz): an op of ours that
//!   re-creates a doc after V3's `del` (except an upvote or collaborator V2 gave again after the
//!   removal), changes a top-level field V3 changed since our previous op (`forksCount`,
//!   `upvotesCount`, `migratedTimestamp` aside: recounted or ours), or deletes a doc V3 created
//!   or changed. Info, upvotes and permissions are judged field by field and by value; content
//!   and users as a whole (any V3 op makes them V3's), see [`crate::v3::oplog`];
//! - `oplog`: those logs are what sharedb-mongo leaves: one op per version `0.._v-1`, each linked
//!   (`o`) to the one before, the snapshot's `_o` the op at `_v-1`; no op of ours that no
//!   snapshot links (orphans, ours at `v >= _v` included; V3's own orphans are sharedb-mongo's
//!   business); no op of ours that changes nothing (`op: null`, empty, or only
//!   `migratedTimestamp`).
//!
//! Inputs that a migration rightly does not migrate are **expected outcomes**, not mismatches:
//! skipped inputs (tombstones, datasets, partial docs) whose ledger says `skipped`, dead-letter
//! inputs (missing content, bad op log…) whose ledger says `failed`, `conflict`s (edited in V3
//! and V2, left for a human), `deleted-in-v3` (info or content a tombstone V3 made; never
//! re-created, whatever the ledger says yet) and `owner-deleted-in-v3` (the owner's V3 user doc
//! a tombstone V3 made). Their op logs are still checked (`undone`, `oplog`): a viz V3 deleted
//! whose doc the migration re-created is `undone`, not an expected outcome. A viz skipped in V2
//! that V3 still has (deleted in V2 after migration) is reported as `deleted-in-v2` and never
//! deleted (spec 3.4); it is a notice, not a mismatch. Verify only reads; it counts as
//! "compared" only vizzes whose V3 state it actually compared, so a run that compared nothing
//! can be refused by the caller.
//!
//! Cost: vizzes are verified in chunks of 100; per chunk, besides the V2 reads of
//! [`Migrator::expected_many`], V3 is read with one query per collection for all of the chunk:
//! snapshots (info, content, users, upvotes, permissions, analytics), counts (forks, upvotes),
//! commits, analytics foreign ops, two envelope checks, and five op-log aggregates (info,
//! content, user, upvote, permission; `$in` over the indexed `d`, projected: for content only
//! the `op` bodies of our own edits travel, never a `create`'s whole content).

use crate::ledger::VizRecord;
use crate::migrate::{JobError, Migrator};
use crate::outcome::{DELETED_IN_V3, OWNER_DELETED_IN_V3};
use crate::translate::Translation;
use crate::v2::reader::window_filter;
use crate::v3::collections as c3;
use crate::v3::oplog::{self, Analysis, Bodies, Granularity, Head, LoggedOp, Rules};
use crate::v3::store::Snapshot;
use crate::v3::Commit;
use crate::v3::ContentView;
use crate::{v3, Disposition, Outcome};
use mongodb::bson::{doc, Bson, Document};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Which V2 vizzes to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Created, updated or upvoted in `[from, to)`, as the planner selects them.
    Window {
        from: i64,
        to: i64,
    },
    All,
    /// Exactly these V2 vizzes (`--viz`, `documentInfo` ids; duplicates count once). Every id
    /// must be in V2, or nothing is verified ([`VerifyError::UnknownVizzes`]).
    Vizzes(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub viz: String,
    pub category: &'static str,
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// V2 vizzes in scope.
    pub in_scope: u64,
    /// Vizzes whose V3 state was compared.
    pub compared: u64,
    /// Expected non-migrations by outcome (`skipped`, `failed`, `conflict`, `deleted-in-v3`,
    /// `owner-deleted-in-v3`).
    pub expected_outcomes: BTreeMap<String, u64>,
    pub mismatches: Vec<Mismatch>,
    /// Mismatch counts by category.
    pub by_category: BTreeMap<String, u64>,
    /// Vizzes V2 no longer migrates that V3 still holds (reported, never deleted).
    pub deleted_in_v2: Vec<String>,
    /// Differences from what V2 says that are V3's to keep (spec 3.4), by field (`content`: a
    /// content V3 edited since the migration): not mismatches.
    pub v3_owned: BTreeMap<String, u64>,
}

impl Report {
    fn mismatch(&mut self, viz: &str, category: &'static str, detail: impl Into<String>) {
        *self.by_category.entry(category.to_string()).or_default() += 1;
        self.mismatches.push(Mismatch {
            viz: viz.to_string(),
            category,
            detail: detail.into(),
        });
    }

    fn expected(&mut self, outcome: &str) {
        *self
            .expected_outcomes
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    fn owned(&mut self, field: &str) {
        *self.v3_owned.entry(field.to_string()).or_default() += 1;
    }

    /// Human summary; its last line is `verified <N> vizzes, <M> mismatches` (spec 4.4).
    pub fn render(&self) -> String {
        let mut out = format!("in scope: {} V2 vizzes\n", self.in_scope);
        for (outcome, n) in &self.expected_outcomes {
            out += &format!("expected {outcome}: {n} (not compared)\n");
        }
        for (field, n) in &self.v3_owned {
            out += &format!("V3's own {field}: {n} (V3's users changed it; kept)\n");
        }
        if !self.deleted_in_v2.is_empty() {
            out += &format!(
                "deleted in V2 but present in V3 (left alone): {}\n",
                self.deleted_in_v2.join(", ")
            );
        }
        for (category, n) in &self.by_category {
            out += &format!("mismatch {category}: {n}\n");
            for m in self.mismatches.iter().filter(|m| m.category == category) {
                out += &format!("  {}: {}\n", m.viz, m.detail);
            }
        }
        out += &format!(
            "verified {} vizzes, {} mismatches",
            self.compared,
            self.mismatches.len()
        );
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("reading V2: {0}")]
    V2(mongodb::error::Error),
    #[error("reading the ledger: {0}")]
    Ledger(mongodb::error::Error),
    /// A transient failure while deriving or reading one viz: the verification is incomplete.
    #[error("{0}")]
    Job(JobError),
    /// `--viz` ids that V2's `documentInfo` does not have (a typo, most likely).
    #[error("not in V2 documentInfo: {}; nothing verified", .0.join(", "))]
    UnknownVizzes(Vec<String>),
}

/// Verify every V2 viz in `scope`. `progress(done, total)` is called after each viz.
pub async fn verify(
    m: &Migrator,
    scope: Scope,
    mut progress: impl FnMut(u64, u64),
) -> Result<Report, VerifyError> {
    let filter = match &scope {
        Scope::Window { from, to } => window_filter(*from, *to),
        Scope::All => Document::new(),
        Scope::Vizzes(ids) => doc! {"_id": {"$in": ids}},
    };
    let infos =
        m.v2.scan_infos(filter, None)
            .await
            .map_err(VerifyError::V2)?;
    let ids: Vec<String> = infos
        .iter()
        .filter_map(|d| match d.get("_id")? {
            Bson::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        })
        .collect();
    if let Scope::Vizzes(asked) = &scope {
        let mut unknown: Vec<String> = asked.iter().filter(|a| !ids.contains(a)).cloned().collect();
        unknown.sort();
        unknown.dedup();
        if !unknown.is_empty() {
            return Err(VerifyError::UnknownVizzes(unknown));
        }
    }
    let mut report = Report {
        in_scope: ids.len() as u64,
        ..Report::default()
    };
    let total = ids.len() as u64;
    // Users are shared by vizzes: each one's op log is reported once, on the first viz.
    let mut seen_users = HashSet::new();
    for (i, chunk) in ids.chunks(CHUNK).enumerate() {
        let records = m
            .ledger
            .get_many(chunk)
            .await
            .map_err(VerifyError::Ledger)?;
        let expected = m.expected_many(chunk).await;
        let held = Held::read(m, chunk, &expected).await?;
        for (j, (viz, t)) in chunk.iter().zip(expected).enumerate() {
            check(
                m,
                viz,
                records.get(viz),
                t,
                &held,
                &mut seen_users,
                &mut report,
            )
            .await?;
            progress((i * CHUNK + j + 1) as u64, total);
        }
    }
    Ok(report)
}

/// Vizzes verified together: their V2 documents, and what V3 holds for them, read in a few
/// queries per collection for all of them.
const CHUNK: usize = 100;

/// What V3 holds for a chunk of vizzes, read at once: a few queries per chunk, not per viz.
struct Held {
    info: HashMap<String, Snapshot>,
    content: HashMap<String, Snapshot>,
    forks: HashMap<String, i64>,
    upvotes: HashMap<String, i64>,
    /// Each viz's own commits, in chain order.
    chains: HashMap<String, Vec<Commit>>,
    /// The user, upvote and permission docs the translations would write, live or not, by
    /// collection.
    docs: HashMap<&'static str, HashMap<String, Snapshot>>,
    /// The op logs of the info, content, user, upvote and permission docs, by collection.
    logs: HashMap<&'static str, HashMap<String, Vec<LoggedOp>>>,
    analytics: HashMap<String, Snapshot>,
    /// V3's own ops in each analytics doc's log.
    own_views: HashMap<String, i64>,
    /// Envelope problems by collection and doc id.
    envelopes: HashMap<&'static str, HashMap<String, String>>,
}

/// How V3's ops own each collection's docs (see [`oplog`]): info, upvotes and permissions field
/// by field (their logs are small and read whole); content and users as a whole (any V3 edit
/// makes them V3's). An upvote or collaborator V2 gave again after V3 removed it may come back.
fn rules(collection: &str) -> Rules {
    let granularity = match collection {
        c3::CONTENT | c3::USER => Granularity::Doc,
        _ => Granularity::Field,
    };
    Rules {
        granularity,
        revive_when_newer: matches!(collection, c3::UPVOTE | c3::PERMISSION),
    }
}

impl Held {
    async fn read(
        m: &Migrator,
        chunk: &[String],
        expected: &[Result<Translation, JobError>],
    ) -> Result<Held, VerifyError> {
        // Errors name the chunk's first viz: the read was for all of them.
        let first = chunk.first().map_or("", String::as_str);
        let at = || store(first);
        let t: Vec<&Translation> = expected.iter().filter_map(|t| t.as_ref().ok()).collect();
        let info = m.v3.snapshots(c3::INFO, chunk).await.map_err(at())?;
        let content = m.v3.snapshots(c3::CONTENT, chunk).await.map_err(at())?;
        let forks = m.v3.forks_counts(chunk).await.map_err(at())?;
        let upvotes = m.v3.upvotes_counts(chunk).await.map_err(at())?;
        let chains = m.v3.commits_of_many(chunk).await.map_err(at())?;
        let mut docs = HashMap::new();
        let mut logs = HashMap::new();
        for (collection, bodies) in [(c3::INFO, Bodies::All), (c3::CONTENT, Bodies::OursEdits)] {
            let read =
                m.v3.op_logs(collection, chunk, bodies)
                    .await
                    .map_err(at())?;
            logs.insert(collection, read);
        }
        for (collection, ids) in [
            (c3::USER, ids_of(&t, |t| t.users.iter().map(|u| &u.id))),
            (c3::UPVOTE, ids_of(&t, |t| t.upvotes.iter().map(|u| &u.id))),
            (
                c3::PERMISSION,
                ids_of(&t, |t| t.permissions.iter().map(|p| &p.id)),
            ),
        ] {
            let found = m.v3.snapshots(collection, &ids).await.map_err(at())?;
            docs.insert(collection, found);
            let read =
                m.v3.op_logs(collection, &ids, Bodies::All)
                    .await
                    .map_err(at())?;
            logs.insert(collection, read);
        }
        let analytics_ids = ids_of(&t, |t| t.analytics.iter().map(|a| &a.id));
        let analytics =
            m.v3.snapshots(c3::ANALYTICS_EVENT, &analytics_ids)
                .await
                .map_err(at())?;
        let own_views =
            m.v3.foreign_ops_many(c3::ANALYTICS_EVENT, &analytics_ids)
                .await
                .map_err(at())?;
        let mut envelopes = HashMap::new();
        for (collection, snaps) in [(c3::INFO, &info), (c3::CONTENT, &content)] {
            let live = snaps.values().filter(|s| s.doc_type.is_some());
            let problems =
                m.v3.envelope_problems(collection, live)
                    .await
                    .map_err(at())?;
            envelopes.insert(collection, problems);
        }
        Ok(Held {
            info,
            content,
            forks,
            upvotes,
            chains,
            docs,
            logs,
            analytics,
            own_views,
            envelopes,
        })
    }

    fn snapshot(&self, collection: &str, id: &str) -> Option<&Snapshot> {
        match collection {
            c3::INFO => self.info.get(id),
            c3::CONTENT => self.content.get(id),
            _ => self.docs.get(collection)?.get(id),
        }
    }

    /// What the op log of `collection/id` says ([`oplog::analyze`]); `None` when V3 has
    /// neither the doc nor any op of it. Ops without a snapshot are all orphans.
    fn analysis(&self, collection: &str, id: &str) -> Option<Analysis> {
        let snapshot = self.snapshot(collection, id);
        let ops = self
            .logs
            .get(collection)
            .and_then(|l| l.get(id))
            .map_or(&[][..], Vec::as_slice);
        if snapshot.is_none() && ops.is_empty() {
            return None;
        }
        let head = snapshot.map_or(
            Head {
                version: 0,
                last_op: None,
                live: false,
            },
            Head::of,
        );
        Some(oplog::analyze(&head, ops, rules(collection)))
    }

    /// When `collection/id` is a tombstone V3 deleted (its `del` op is not ours): the time of
    /// the removal (ms: the tombstone's `_m.mtime`, else the `del` op's), if known. A
    /// tombstone without a log says nothing of who deleted it: V3 (the migration keeps its
    /// logs).
    fn deleted_by_v3(&self, collection: &str, id: &str) -> Option<Option<i64>> {
        let s = self.snapshot(collection, id)?;
        if s.doc_type.is_some() {
            return None;
        }
        let has_log = self
            .logs
            .get(collection)
            .is_some_and(|l| l.get(id).is_some_and(|ops| !ops.is_empty()));
        if !has_log {
            return Some(s.mtime);
        }
        let deleted = self.analysis(collection, id)?.deleted_by_v3?;
        Some(s.mtime.or(deleted))
    }

    /// Whether V3 holds `collection/id` live.
    fn live(&self, collection: &str, id: &str) -> bool {
        self.snapshot(collection, id)
            .is_some_and(|s| s.doc_type.is_some())
    }
}

/// Report what the op log of `collection/id` shows for `viz` (`undone` acts, `oplog`
/// problems); true when an act was undone.
fn report_log(report: &mut Report, viz: &str, collection: &str, id: &str, a: &Analysis) -> bool {
    for u in &a.undone {
        report.mismatch(viz, "undone", format!("{collection}/{id}: {u}"));
    }
    // Info's and content's `_o` is the envelope check's.
    let head = a
        .head_problem
        .as_ref()
        .filter(|_| collection != c3::INFO && collection != c3::CONTENT);
    for h in head.into_iter().chain(&a.hygiene) {
        report.mismatch(viz, "oplog", format!("{collection}/{id}: {h}"));
    }
    !a.undone.is_empty()
}

/// The ids `of` each translation, sorted, once each.
fn ids_of<'t, I: Iterator<Item = &'t String>>(
    t: &[&'t Translation],
    of: impl Fn(&'t Translation) -> I,
) -> Vec<String> {
    let set: BTreeSet<&String> = t.iter().flat_map(|t| of(t)).collect();
    set.into_iter().cloned().collect()
}

/// Whether two payload values are the same, numbers by value (V3 may store 500 as 500.0).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Verify one viz: its expected outcome or its V3 state, reported in `report`.
#[allow(clippy::too_many_arguments)]
async fn check(
    m: &Migrator,
    viz: &str,
    rec: Option<&VizRecord>,
    expected: Result<Translation, JobError>,
    held: &Held,
    seen_users: &mut HashSet<String>,
    report: &mut Report,
) -> Result<(), VerifyError> {
    let outcome = rec.map(|r| r.outcome);
    let Some(t) = translation(viz, outcome, expected, held, report)? else {
        return Ok(());
    };
    let standing = Standing::of(viz, rec, &t, held);
    if !standing.ran && !standing.deleted && !standing.owner_deleted && !standing.skipped_for_v3 {
        report.compared += 1;
        report.mismatch(
            viz,
            "not-migrated",
            format!("translates, ledger says {}", said(outcome)),
        );
        return Ok(());
    }
    // The logs are checked before anything else: a viz V3 deleted whose doc the migration
    // re-created is `undone`, not an expected outcome.
    let logs = Logs::report(viz, &t, held, seen_users, report);
    if !to_compare(viz, rec, &standing, &logs, report) {
        return Ok(());
    }
    report.compared += 1;
    let (Some(info), Some(content)) = (
        held.info.get(viz).filter(|s| s.doc_type.is_some()),
        held.content.get(viz).filter(|s| s.doc_type.is_some()),
    ) else {
        report.mismatch(viz, "missing", "V3 info or content doc absent");
        return Ok(());
    };
    let (v3_content, have) = compare_content(viz, &t, content, logs.content.as_ref(), report);
    compare_info(viz, &t, rec, info, logs.info.as_ref(), report);
    compare_counts(viz, info, held, report);
    compare_history(m, viz, held, info, content, &have, v3_content, report).await?;
    compare_docs(viz, &t, held, report);
    if let Some(a) = &t.analytics {
        if let Some(problem) = analytics_problem(a, held) {
            report.mismatch(viz, "analytics", problem);
        }
    }
    for collection in [c3::INFO, c3::CONTENT] {
        if let Some(problem) = held.envelopes.get(collection).and_then(|p| p.get(viz)) {
            report.mismatch(viz, "envelope", format!("{collection}: {problem}"));
        }
    }
    Ok(())
}

/// The translation to compare V3 with, or `None` when the viz does not translate and its
/// outcome is reported already: expected (skipped, failed) or a mismatch (the ledger says
/// otherwise, or it never ran). A transient failure stops the verification: it is incomplete.
fn translation(
    viz: &str,
    outcome: Option<Outcome>,
    expected: Result<Translation, JobError>,
    held: &Held,
    report: &mut Report,
) -> Result<Option<Translation>, VerifyError> {
    let e = match expected {
        Ok(t) => return Ok(Some(t)),
        Err(e) => e,
    };
    if outcome.is_none() && e.disposition() != Disposition::Retry {
        // Never ran: whatever it would end in, the run did not cover it.
        report.compared += 1;
        report.mismatch(
            viz,
            "not-migrated",
            format!("never ran (it would end: {e})"),
        );
        return Ok(None);
    }
    match e.disposition() {
        Disposition::Retry => return Err(VerifyError::Job(e)),
        Disposition::Skip => {
            // Deleted in V2 after migration: V3 keeps it (spec 3.4), a notice.
            if held.info.get(viz).is_some_and(|s| s.doc_type.is_some()) {
                report.deleted_in_v2.push(viz.to_string());
            }
            if outcome == Some(Outcome::Skipped) || outcome == Some(Outcome::Migrated) {
                report.expected("skipped");
            } else {
                report.mismatch(
                    viz,
                    "outcome",
                    format!("expected skipped ({e}), ledger says {}", said(outcome)),
                );
            }
        }
        Disposition::DeadLetter => {
            if outcome == Some(Outcome::Failed) {
                report.expected("failed");
            } else {
                report.mismatch(
                    viz,
                    "outcome",
                    format!("expected failed ({e}), ledger says {}", said(outcome)),
                );
            }
        }
    }
    Ok(None)
}

/// Where a viz that translates stands: what the ledger says of it and what V3 deleted.
struct Standing {
    /// Deleted in V3 (its info or content): an act of V3's users, never re-created.
    deleted: bool,
    /// Its owner's V3 account deleted: likewise.
    owner_deleted: bool,
    /// The migration ran it (migrated, unchanged, or left as a conflict).
    ran: bool,
    /// Skipped for a deletion in V3 (its logs tell whether the migration undid it since).
    skipped_for_v3: bool,
}

impl Standing {
    fn of(viz: &str, rec: Option<&VizRecord>, t: &Translation, held: &Held) -> Standing {
        let outcome = rec.map(|r| r.outcome);
        Standing {
            deleted: [c3::INFO, c3::CONTENT]
                .iter()
                .any(|c| held.deleted_by_v3(c, viz).is_some()),
            owner_deleted: held.deleted_by_v3(c3::USER, &t.info.owner).is_some(),
            ran: matches!(
                outcome,
                Some(Outcome::Migrated | Outcome::Unchanged | Outcome::Conflict)
            ),
            skipped_for_v3: outcome == Some(Outcome::Skipped)
                && rec
                    .and_then(|r| r.reason.as_deref())
                    .is_some_and(|r| r == DELETED_IN_V3 || r == OWNER_DELETED_IN_V3),
        }
    }
}

/// What the op logs of the docs a viz's migration writes say, once reported.
struct Logs {
    info: Option<Analysis>,
    content: Option<Analysis>,
    /// An act of V3's undone on the viz's own docs (info, content).
    viz_undone: bool,
    /// An act of V3's undone on any doc of the viz.
    undone: bool,
}

impl Logs {
    /// Analyze and report the op logs of every doc the viz's migration writes: no act of V3's
    /// undone, no stray op. Users are shared by vizzes: each is reported once, on the first
    /// viz (`seen_users`).
    fn report(
        viz: &str,
        t: &Translation,
        held: &Held,
        seen_users: &mut HashSet<String>,
        report: &mut Report,
    ) -> Logs {
        let info = held.analysis(c3::INFO, viz);
        let content = held.analysis(c3::CONTENT, viz);
        let mut viz_undone = false;
        for (collection, a) in [(c3::INFO, &info), (c3::CONTENT, &content)] {
            if let Some(a) = a {
                viz_undone |= report_log(report, viz, collection, viz, a);
            }
        }
        let mut undone = viz_undone;
        for (collection, ids) in [
            (
                c3::UPVOTE,
                t.upvotes.iter().map(|u| &u.id).collect::<Vec<_>>(),
            ),
            (
                c3::PERMISSION,
                t.permissions.iter().map(|p| &p.id).collect(),
            ),
            (
                c3::USER,
                t.users
                    .iter()
                    .map(|u| &u.id)
                    .filter(|u| seen_users.insert(u.to_string()))
                    .collect(),
            ),
        ] {
            for id in ids {
                if let Some(a) = held.analysis(collection, id) {
                    undone |= report_log(report, viz, collection, id, &a);
                }
            }
        }
        Logs {
            info,
            content,
            viz_undone,
            undone,
        }
    }
}

/// Whether the viz's V3 state is to be compared; when not, its expected outcome (deleted in
/// V3, owner deleted, conflict) or the mismatch (the ledger says V3 deleted it, V3 holds it
/// live) is reported.
fn to_compare(
    viz: &str,
    rec: Option<&VizRecord>,
    standing: &Standing,
    logs: &Logs,
    report: &mut Report,
) -> bool {
    let outcome = rec.map(|r| r.outcome);
    if standing.deleted {
        // A deletion the migration undid on the other doc (info or content re-created) is
        // `undone`, not a deletion V3 still shows.
        if !logs.viz_undone {
            report.expected("deleted-in-v3");
        }
        return false;
    }
    if standing.owner_deleted {
        report.expected("owner-deleted-in-v3");
        return false;
    }
    if !standing.ran {
        // The ledger says V3 deleted it, and V3 holds it live: undone (reported already), or
        // something else brought it back.
        if !logs.undone {
            report.compared += 1;
            report.mismatch(
                viz,
                "not-migrated",
                format!(
                    "ledger says {} ({}), V3 holds it live",
                    said(outcome),
                    rec.and_then(|r| r.reason.as_deref()).unwrap_or_default()
                ),
            );
        }
        return false;
    }
    if outcome == Some(Outcome::Conflict) {
        report.expected("conflict");
        return false;
    }
    true
}

/// Compare V3's content with the translation's, unless V3 edited it since the migration's
/// last op: then the content is V3's (spec 3.4). Returns whether it is V3's, and V3's content
/// as compared (the history check reports against it).
fn compare_content(
    viz: &str,
    t: &Translation,
    content: &Snapshot,
    content_log: Option<&Analysis>,
    report: &mut Report,
) -> (bool, ContentView) {
    let v3_content = content_log.is_some_and(|a| a.v3_since_ours);
    let have = ContentView::of(&content.data);
    if v3_content {
        report.owned("content");
    } else {
        let want = ContentView::of(&t.content);
        if let Some(difference) = want.first_difference(&have) {
            report.mismatch(viz, "content", difference);
        }
    }
    (v3_content, have)
}

/// Compare the info fields the translation produces. A field V3 changed is V3's: it differs
/// from what the migration last wrote (the ledger's base), or, without a base in the ledger,
/// V3's op changed it last. A value an op of ours wrote last is never V3's, whatever the base
/// says.
fn compare_info(
    viz: &str,
    t: &Translation,
    rec: Option<&VizRecord>,
    info: &Snapshot,
    info_log: Option<&Analysis>,
    report: &mut Report,
) {
    let want = serde_json::to_value(&t.info).expect("Info serializes");
    let base = rec
        .and_then(|r| r.migrated.as_ref())
        .and_then(|m| m.info.as_ref())
        .map(|i| serde_json::to_value(i).expect("Info serializes"));
    for field in v3::INFO_COMPARED {
        let (w, h) = (&want[field], &info.data[field]);
        if same_value(w, h) {
            continue;
        }
        let last = info_log.and_then(|a| a.last_change.of(field));
        let v3s = match (&base, last) {
            (_, Some((true, _))) => false,
            (Some(base), _) => !same_value(&base[field], h),
            (None, last) => last.is_some(),
        };
        if v3s {
            report.owned(field);
        } else {
            report.mismatch(viz, "info", format!("{field}: expected {w}, V3 has {h}"));
        }
    }
}

/// The counts are V3's own (spec 2.2): info's must be what V3 holds now, V3-native forks and
/// upvotes included.
fn compare_counts(viz: &str, info: &Snapshot, held: &Held, report: &mut Report) {
    let counts = [
        (
            "forksCount",
            info.info_forks_count(),
            held.forks.get(viz).copied().unwrap_or(0),
        ),
        (
            "upvotesCount",
            info.info_upvotes_count(),
            held.upvotes.get(viz).copied().unwrap_or(0),
        ),
    ];
    for (field, says, n) in counts {
        if says != Some(n) {
            let says = says.map_or_else(|| "nothing".to_string(), |s| s.to_string());
            report.mismatch(
                viz,
                "info",
                format!("{field}: V3 holds {n}, info says {says}"),
            );
        }
    }
}

/// Check the commit chain: it replays to exactly the content and ends at `info.end`; when the
/// content is V3's (`v3_content`), V3 commits it on its own schedule (it may not have yet), so
/// only the chain up to `info.end` must replay, nothing more. `have`: V3's content as compared.
#[allow(clippy::too_many_arguments)]
async fn compare_history(
    m: &Migrator,
    viz: &str,
    held: &Held,
    info: &Snapshot,
    content: &Snapshot,
    have: &ContentView,
    v3_content: bool,
    report: &mut Report,
) -> Result<(), VerifyError> {
    let own = held.chains.get(viz);
    if v3_content {
        if let Some(problem) = chain_to_end(m, viz, own, info.info_end()).await? {
            report.mismatch(viz, "history", problem);
        }
        return Ok(());
    }
    match chain_content(m, viz, own).await? {
        Err(reason) => report.mismatch(viz, "history", reason),
        Ok((end, replayed)) => {
            if info.info_end() != Some(end.as_str()) {
                report.mismatch(
                    viz,
                    "history",
                    format!(
                        "info.end {} is not the chain end {end}",
                        info.info_end().unwrap_or("(none)")
                    ),
                );
            }
            if replayed != content.data {
                report.mismatch(
                    viz,
                    "history",
                    format!(
                        "commit chain replays to something else than content: {}",
                        ContentView::of(&replayed)
                            .first_difference(have)
                            .unwrap_or_else(|| "differs".into())
                    ),
                );
            }
        }
    }
    Ok(())
}

/// Every user, upvote and permission doc the translation would write exists, except those V3
/// deleted (an upvote V2 gave again after V3's removal comes back) and those of users V3
/// deleted.
fn compare_docs(viz: &str, t: &Translation, held: &Held, report: &mut Report) {
    let user_deleted = |user: &str| held.deleted_by_v3(c3::USER, user).is_some();
    let gone = |collection: &str, id: &str, user: &str, v2_time: Option<i64>| {
        if held.live(collection, id) || user_deleted(user) {
            return false;
        }
        match held.deleted_by_v3(collection, id) {
            None => true,
            Some(removed) => {
                collection == c3::UPVOTE
                    && matches!((v2_time, removed), (Some(t), Some(r)) if t * 1000 > r)
            }
        }
    };
    let missing_users: Vec<&str> = t
        .users
        .iter()
        .filter(|u| gone(c3::USER, &u.id, &u.id, None))
        .map(|u| u.id.as_str())
        .collect();
    let missing_upvotes: Vec<&str> = t
        .upvotes
        .iter()
        .filter(|u| gone(c3::UPVOTE, &u.id, &u.user, Some(u.timestamp)))
        .map(|u| u.id.as_str())
        .collect();
    let missing_permissions: Vec<&str> = t
        .permissions
        .iter()
        .filter(|p| gone(c3::PERMISSION, &p.id, &p.user, None))
        .map(|p| p.id.as_str())
        .collect();
    for (collection, missing, category) in [
        (c3::USER, missing_users, "users"),
        (c3::UPVOTE, missing_upvotes, "upvotes"),
        (c3::PERMISSION, missing_permissions, "permissions"),
    ] {
        if !missing.is_empty() {
            report.mismatch(
                viz,
                category,
                format!("{collection} docs missing: {}", missing.join(", ")),
            );
        }
    }
}

/// What is wrong with V3's page-view record of a viz, compared with V2's now (`want`: V2's
/// record merged into nothing). V3 must have merged exactly that record (`v2Merged`); when V3
/// counted no views of its own (no op in the doc's log but ours), its counts equal V2's in every
/// interval; otherwise no bucket V2 has may hold fewer views than V2 counted.
fn analytics_problem(want: &v3::AnalyticsEvent, held: &Held) -> Option<String> {
    let Some(have) = held
        .analytics
        .get(&want.id)
        .filter(|s| s.doc_type.is_some())
        .and_then(|s| v3::AnalyticsEvent::from_payload(&s.data))
    else {
        return Some(format!("{} missing", want.id));
    };
    if have.v2_merged.is_some() && have.v2_merged != want.v2_merged {
        return Some(format!(
            "{}: the V2 record merged is not V2's record now",
            want.id
        ));
    }
    let own_views = held.own_views.get(&want.id).copied().unwrap_or(0);
    for (interval, buckets) in &want.intervals {
        let have_buckets = have.intervals.get(interval).and_then(Value::as_object);
        for (key, n) in buckets.as_object().into_iter().flatten() {
            let got = have_buckets.and_then(|b| b.get(key));
            let (n, g) = (n.as_f64().unwrap_or(0.0), got.and_then(Value::as_f64));
            let wrong = match g {
                None => true,
                Some(g) if own_views == 0 => g != n,
                Some(g) => g < n,
            };
            if wrong {
                return Some(format!(
                    "{}: {interval} {key}: V2 counted {n}, V3 has {}",
                    want.id,
                    got.map_or("nothing".to_string(), Value::to_string)
                ));
            }
        }
    }
    if own_views == 0 && have.intervals != want.intervals {
        return Some(format!(
            "{}: V3 has buckets V2 does not (and counted no views itself)",
            want.id
        ));
    }
    None
}

fn said(outcome: Option<Outcome>) -> &'static str {
    outcome.map_or("nothing (never ran)", Outcome::as_str)
}

fn store(viz: &str) -> impl FnOnce(crate::v3::store::StoreError) -> VerifyError + '_ {
    move |source| {
        VerifyError::Job(JobError::V3 {
            viz: viz.to_string(),
            source,
        })
    }
}

/// The viz's commit chain, with its fork ancestors however deep, replayed with json1:
/// `(end commit, content)`, or why it cannot be replayed. The worker's replay
/// ([`Migrator::replayed_content`]): ancestors this verify run already replayed are taken from
/// its cache (commits are immutable), so a deep chain costs one level per viz, not its depth.
async fn chain_content(
    m: &Migrator,
    viz: &str,
    own: Option<&Vec<Commit>>,
) -> Result<Result<(String, Value), String>, VerifyError> {
    let own = own.map_or(&[][..], Vec::as_slice);
    let Some(end) = own.last() else {
        return Ok(Err("no commits".into()));
    };
    match m.replayed_content(viz, end, own).await {
        Ok(content) => Ok(Ok((end.id.clone(), (*content).clone()))),
        Err(JobError::Chain { commit, reason, .. }) => {
            Ok(Err(format!("chain does not replay at {commit}: {reason}")))
        }
        Err(e) => Err(VerifyError::Job(e)),
    }
}

/// Why the viz's chain up to `end` (info.end) does not replay, if it does not: `end` must be one
/// of the viz's commits and the chain to it must replay with json1.
async fn chain_to_end(
    m: &Migrator,
    viz: &str,
    own: Option<&Vec<Commit>>,
    end: Option<&str>,
) -> Result<Option<String>, VerifyError> {
    let own = own.map_or(&[][..], Vec::as_slice);
    let Some(at) = own.iter().position(|c| Some(c.id.as_str()) == end) else {
        return Ok(Some(format!(
            "info.end {} is not one of the viz's commits",
            end.unwrap_or("(none)")
        )));
    };
    match m.replayed_content(viz, &own[at], &own[..=at]).await {
        Ok(_) => Ok(None),
        Err(JobError::Chain { commit, reason, .. }) => {
            Ok(Some(format!("chain does not replay at {commit}: {reason}")))
        }
        Err(e) => Err(VerifyError::Job(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_ends_with_the_contract_line() {
        let mut r = Report {
            compared: 3,
            ..Report::default()
        };
        r.mismatch("v1", "content", "text of \"a\" differs");
        let text = r.render();
        assert!(text.ends_with("verified 3 vizzes, 1 mismatches"), "{text}");
        assert!(text.contains("mismatch content: 1\n  v1: text of \"a\" differs"));
        assert_eq!(r.by_category["content"], 1);
    }

    #[test]
    fn report_shows_what_v3_owns_and_v3_deletions() {
        let mut r = Report {
            compared: 2,
            ..Report::default()
        };
        r.expected("deleted-in-v3");
        r.owned("title");
        r.owned("title");
        r.mismatch("v1", "undone", "info/v1: op v3 of ours overwrites title");
        let text = r.render();
        assert!(
            text.contains("expected deleted-in-v3: 1 (not compared)\n"),
            "{text}"
        );
        assert!(
            text.contains("V3's own title: 2 (V3's users changed it; kept)\n"),
            "{text}"
        );
        assert!(
            text.contains("mismatch undone: 1\n  v1: info/v1: op v3"),
            "{text}"
        );
        assert!(text.ends_with("verified 2 vizzes, 1 mismatches"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["v3Owned"]["title"], 2);
        assert_eq!(json["expectedOutcomes"]["deleted-in-v3"], 1);
    }

    #[test]
    fn collections_are_owned_by_field_or_whole() {
        assert_eq!(rules(c3::INFO).granularity, Granularity::Field);
        assert_eq!(rules(c3::CONTENT).granularity, Granularity::Doc);
        assert_eq!(rules(c3::USER).granularity, Granularity::Doc);
        assert!(rules(c3::UPVOTE).revive_when_newer && rules(c3::PERMISSION).revive_when_newer);
        assert!(!rules(c3::INFO).revive_when_newer && !rules(c3::CONTENT).revive_when_newer);
    }
}
