//! `planner verify`: proves a migration by re-deriving, for every V2 viz in scope, the V3 state a
//! fresh migration would produce from V2 *as it is now*, and comparing it with what V3 holds.
//!
//! What is compared, per category (a mismatch names the viz and the category):
//! - `not-migrated`: the ledger has no `migrated`/`unchanged` outcome for a viz that translates;
//! - `missing`: the ledger says migrated but V3 lacks its `info` or `content` doc;
//! - `content`: title, height and the files in display order (name and text). File *ids* are not
//!   compared: they are internal to V3 and a re-synced viz legitimately keeps the ids it had;
//! - `info`: owner, title, fork parent, created / updated times, visibility, `migratedFromV2`;
//! - `history`: the commit chain (across fork parents) replays with json1 from `{}` to exactly the
//!   `content` doc, and `info.end` is the chain's last commit;
//! - `info` counts: `forksCount` and `upvotesCount` equal what V3 holds (its `info` docs forked
//!   from the viz, its live upvotes);
//! - `analytics`: the page-view record holds exactly V2's counts in every interval when V3
//!   counted no views of its own (no op in its log but the migration's), and never fewer than V2
//!   counted when it did; the V2 record it says it merged (`v2Merged`) is V2's now;
//! - `envelope`: info and content are ShareDB snapshots as sharedb-mongo writes them: `_type`
//!   "p", `_m.ctime` kept, `_o` naming the op of that doc that made its current version;
//! - `users`, `upvotes`, `permissions`: every doc the translation would write exists (V3 may
//!   hold more: V3-native upvotes and permissions are never touched).
//!
//! Inputs that a migration rightly does not migrate are **expected outcomes**, not mismatches:
//! skipped inputs (tombstones, datasets, partial docs) whose ledger says `skipped`, dead-letter
//! inputs (missing content, bad op log…) whose ledger says `failed`, and `conflict`s (edited in V3,
//! left for a human). A viz skipped in V2 that V3 still has (deleted in V2 after migration) is
//! reported as `deleted-in-v2` and never deleted (spec 3.4); it is a notice, not a mismatch.
//! Verify only reads; it counts as "compared" only vizzes whose V3 state it actually compared,
//! so a run that compared nothing can be refused by the caller.

use crate::ledger::VizRecord;
use crate::migrate::{JobError, Migrator};
use crate::planner::window_filter;
use crate::translate::Translation;
use crate::v3::collections as c3;
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
    /// Expected non-migrations by outcome (`skipped`, `failed`, `conflict`).
    pub expected_outcomes: BTreeMap<String, u64>,
    pub mismatches: Vec<Mismatch>,
    /// Mismatch counts by category.
    pub by_category: BTreeMap<String, u64>,
    /// Vizzes V2 no longer migrates that V3 still holds (reported, never deleted).
    pub deleted_in_v2: Vec<String>,
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

    /// Human summary; its last line is `verified <N> vizzes, <M> mismatches` (spec 4.4).
    pub fn render(&self) -> String {
        let mut out = format!("in scope: {} V2 vizzes\n", self.in_scope);
        for (outcome, n) in &self.expected_outcomes {
            out += &format!("expected {outcome}: {n} (not compared)\n");
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
    for (i, chunk) in ids.chunks(CHUNK).enumerate() {
        let records = m
            .ledger
            .get_many(chunk)
            .await
            .map_err(VerifyError::Ledger)?;
        let expected = m.expected_many(chunk).await;
        let held = Held::read(m, chunk, &expected).await?;
        for (j, (viz, t)) in chunk.iter().zip(expected).enumerate() {
            check(m, viz, records.get(viz), t, &held, &mut report).await?;
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
    /// Live docs among those the translations would write, by collection.
    live: HashMap<&'static str, HashSet<String>>,
    analytics: HashMap<String, Snapshot>,
    /// V3's own ops in each analytics doc's log.
    own_views: HashMap<String, i64>,
    /// Envelope problems by collection and doc id.
    envelopes: HashMap<&'static str, HashMap<String, String>>,
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
        let mut live = HashMap::new();
        for (collection, ids) in [
            (c3::USER, ids_of(&t, |t| t.users.iter().map(|u| &u.id))),
            (c3::UPVOTE, ids_of(&t, |t| t.upvotes.iter().map(|u| &u.id))),
            (
                c3::PERMISSION,
                ids_of(&t, |t| t.permissions.iter().map(|p| &p.id)),
            ),
        ] {
            let found = m.v3.snapshots(collection, &ids).await.map_err(at())?;
            let ids = found.into_values().filter(|s| s.doc_type.is_some());
            live.insert(collection, ids.map(|s| s.id).collect());
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
            live,
            analytics,
            own_views,
            envelopes,
        })
    }

    /// The ids of `ids` that V3 does not hold live in `collection`.
    fn missing<'a>(&self, collection: &str, ids: impl Iterator<Item = &'a String>) -> Vec<&'a str> {
        let live = self.live.get(collection);
        ids.filter(|id| live.is_none_or(|l| !l.contains(*id)))
            .map(String::as_str)
            .collect()
    }
}

/// The ids `of` each translation, sorted, once each.
fn ids_of<'t, I: Iterator<Item = &'t String>>(
    t: &[&'t Translation],
    of: impl Fn(&'t Translation) -> I,
) -> Vec<String> {
    let set: BTreeSet<&String> = t.iter().flat_map(|t| of(t)).collect();
    set.into_iter().cloned().collect()
}

async fn check(
    m: &Migrator,
    viz: &str,
    rec: Option<&VizRecord>,
    expected: Result<Translation, JobError>,
    held: &Held,
    report: &mut Report,
) -> Result<(), VerifyError> {
    let outcome = rec.map(|r| r.outcome);
    let t = match expected {
        Ok(t) => t,
        Err(e) if outcome.is_none() && e.disposition() != Disposition::Retry => {
            // Never ran: whatever it would end in, the run did not cover it.
            report.compared += 1;
            report.mismatch(
                viz,
                "not-migrated",
                format!("never ran (it would end: {e})"),
            );
            return Ok(());
        }
        Err(e) => {
            match e.disposition() {
                Disposition::Retry => return Err(VerifyError::Job(e)),
                Disposition::Skip => {
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
            return Ok(());
        }
    };
    match outcome {
        Some(Outcome::Conflict) => {
            report.expected("conflict");
            return Ok(());
        }
        Some(Outcome::Migrated | Outcome::Unchanged) => {}
        other => {
            report.compared += 1;
            report.mismatch(
                viz,
                "not-migrated",
                format!("translates, ledger says {}", said(other)),
            );
            return Ok(());
        }
    }
    report.compared += 1;
    let (Some(info), Some(content)) = (
        held.info.get(viz).filter(|s| s.doc_type.is_some()),
        held.content.get(viz).filter(|s| s.doc_type.is_some()),
    ) else {
        report.mismatch(viz, "missing", "V3 info or content doc absent");
        return Ok(());
    };

    let want = ContentView::of(&t.content);
    let have = ContentView::of(&content.data);
    if let Some(difference) = want.first_difference(&have) {
        report.mismatch(viz, "content", difference);
    }

    for difference in t.info.differences_from(&info.data) {
        report.mismatch(viz, "info", difference);
    }
    // The counts are V3's own (spec 2.2): what V3 holds now, V3-native forks and upvotes included.
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

    match chain_content(m, viz, held.chains.get(viz)).await? {
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
                            .first_difference(&have)
                            .unwrap_or_else(|| "differs".into())
                    ),
                );
            }
        }
    }

    for (collection, ids, category) in [
        (
            c3::USER,
            t.users.iter().map(|u| &u.id).collect::<Vec<_>>(),
            "users",
        ),
        (
            c3::UPVOTE,
            t.upvotes.iter().map(|u| &u.id).collect(),
            "upvotes",
        ),
        (
            c3::PERMISSION,
            t.permissions.iter().map(|p| &p.id).collect(),
            "permissions",
        ),
    ] {
        let missing = held.missing(collection, ids.into_iter());
        if !missing.is_empty() {
            report.mismatch(
                viz,
                category,
                format!("{collection} docs missing: {}", missing.join(", ")),
            );
        }
    }
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
}
