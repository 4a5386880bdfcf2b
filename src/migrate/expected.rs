//! What a fresh migration of a viz would produce from V2 *as it is now*, hung from its parent
//! as V3 has it now ([`Migrator::expected_many`]), writing nothing: what `planner verify`
//! compares V3 with and what `worker preview` prints.
//!
//! It reads through the worker's batch stages, so verify checks the reads that run: V2 with
//! [`Reader::vizzes`](crate::v2::reader::Reader::vizzes) (a few `$in` queries for a whole
//! chunk, the same byte budget, over-budget vizzes read alone), users and page-view records in
//! one query each, the parents' V3 infos in one query and their chains through the worker's
//! chain cache, read for all parents at once. Then each viz is prepared and translated by the
//! same functions a job runs.

use super::batch::{wanted_parent, BATCH_READ_BYTES};
use super::{now_secs, parent_of, v2_err, v3_err, JobError, Migrator, ParentLink};
use crate::translate::{self, Context, ParentRequest, Prepared, Translation};
use crate::v2::V2Viz;
use crate::v3::collections as c3;
use crate::v3::store::Snapshot;
use crate::PRIMORDIAL_VIZ_ID;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};

impl Migrator {
    /// The translation of `viz` (see [`Migrator::expected_many`]).
    pub async fn expected(&self, viz: &str) -> Result<Translation, JobError> {
        self.expected_many(&[viz.to_string()])
            .await
            .pop()
            .expect("one result per viz")
    }

    /// The translation of each of `ids` from V2 as it is now, hung from its parent as V3 has
    /// it now, as a fresh migration would produce it; one result per id, in order. A parent not
    /// yet in V3 previews as the primordial viz. Reads only.
    pub async fn expected_many(&self, ids: &[String]) -> Vec<Result<Translation, JobError>> {
        let raw = match self.read_now(ids).await {
            Ok(raw) => raw,
            Err((viz, e)) => return ids.iter().map(|_| Err(v2_err(&viz)(e.clone()))).collect(),
        };
        let prepared: Vec<Result<Prepared, JobError>> = ids
            .iter()
            .map(|viz| {
                let raw = raw
                    .get(viz)
                    .ok_or_else(|| JobError::NotFound { viz: viz.clone() })?;
                Ok(translate::prepare(raw, &self.cfg)?)
            })
            .collect();
        drop(raw);
        let ready: Vec<&Prepared> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
        let mut user_ids: Vec<String> = ready.iter().flat_map(|p| p.user_ids.clone()).collect();
        user_ids.sort();
        user_ids.dedup();
        let event_ids: Vec<String> = ready.iter().map(|p| p.analytics_id.clone()).collect();
        let (users, events) =
            match tokio::try_join!(self.v2.users(&user_ids), self.v2.event_records(&event_ids)) {
                Ok(read) => read,
                Err(e) => return fail_all(prepared, |viz| v2_err(viz)(e.clone())),
            };
        // The parents' infos in one query, their chains (those this worker has not cached at
        // their info's end) in another.
        // Where a fork whose parent cannot be used hangs: the primordial viz.
        let mut parents: BTreeSet<String> = ready.iter().filter_map(|p| wanted(p)).collect();
        if !parents.is_empty() {
            parents.insert(PRIMORDIAL_VIZ_ID.to_string());
        }
        let parents: Vec<String> = parents.into_iter().collect();
        // A failure is left to the per-viz reads of `translate_now` (which name their viz).
        let infos = match self.v3.snapshots(c3::INFO, &parents).await {
            Ok(infos) => infos,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the parents' infos at once");
                HashMap::new()
            }
        };
        self.prefetch_chains(&parents, &infos).await;
        let mut out = Vec::with_capacity(ids.len());
        for p in prepared {
            out.push(match p {
                Ok(p) => self.translate_now(&p, &users, &events, &infos).await,
                Err(e) => Err(e),
            });
        }
        out
    }

    /// The V2 documents of `ids` as they are now: the batch read, and the vizzes past its
    /// budget read alone. `Err((viz, e))`: a read failed (naming the viz it was for, or the
    /// first of the batch).
    async fn read_now(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, V2Viz>, (String, mongodb::error::Error)> {
        let first = || ids.first().cloned().unwrap_or_default();
        let mut read = self
            .v2
            .vizzes(ids, BATCH_READ_BYTES)
            .await
            .map_err(|e| (first(), e))?;
        for viz in std::mem::take(&mut read.deferred) {
            if let Some(raw) = self.v2.viz(&viz).await.map_err(|e| (viz.clone(), e))? {
                read.vizzes.insert(viz, raw);
            }
        }
        Ok(read.vizzes)
    }

    /// Hang `p` from its parent as V3 has it now (or from the primordial viz) and translate it.
    async fn translate_now(
        &self,
        p: &Prepared,
        users: &HashMap<String, Value>,
        events: &HashMap<String, Value>,
        infos: &HashMap<String, Snapshot>,
    ) -> Result<Translation, JobError> {
        let viz = p.viz.as_str();
        let mut link = None;
        for candidate in [wanted(p), wanted(p).map(|_| PRIMORDIAL_VIZ_ID.to_string())]
            .into_iter()
            .flatten()
        {
            let commits = match infos.get(&candidate).filter(|s| s.doc_type.is_some()) {
                Some(info) => self.chain_of(viz, &candidate, info.info_end()).await?,
                // Commits without a visible info: a parent stopped half-way.
                None => {
                    std::sync::Arc::new(self.v3.commits_of(&candidate).await.map_err(v3_err(viz))?)
                }
            };
            if let Some(l) = self.fork_link(viz, p.created, &candidate, &commits).await? {
                link = Some(ParentLink {
                    backfilled: candidate != p.info.forked_from.as_deref().unwrap_or_default()
                        || p.info.fork_from_backfilled == Some(true),
                    ..l
                });
                break;
            }
        }
        if p.parent != ParentRequest::Root && link.is_none() {
            return Err(JobError::Parent {
                viz: viz.into(),
                parent: PRIMORDIAL_VIZ_ID.into(),
                reason: "no parent migrated to V3 yet (migrate the primordial viz first)".into(),
            });
        }
        let ctx = Context {
            parent: parent_of(link.as_ref()),
            users,
            analytics: events.get(&p.analytics_id),
            v3_analytics: None,
            previous: None,
            deleted_users: &translate::NO_DELETED_USERS,
            now: now_secs(),
        };
        Ok(translate::translate(p, &ctx, &self.cfg)?)
    }
}

/// The parent `p` asks for: V2's, or the primordial viz; `None` for a root.
fn wanted(p: &Prepared) -> Option<String> {
    wanted_parent(p).map(|(parent, _)| parent)
}

/// Every prepared viz failed by `e`; the others keep their own error.
fn fail_all(
    prepared: Vec<Result<Prepared, JobError>>,
    e: impl Fn(&str) -> JobError,
) -> Vec<Result<Translation, JobError>> {
    prepared
        .into_iter()
        .map(|p| Err(p.map_or_else(|err| err, |p| e(&p.viz))))
        .collect()
}
