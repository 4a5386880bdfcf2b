//! The ledger: what the migration itself remembers, kept in the V3 database (never in V2).
//!
//! - `migrationviz`: one doc per viz — its last outcome and reason, attempts, batch (of the last
//!   job; `batches` lists every batch one of whose jobs on the viz ended), and, once
//!   migrated, what re-sync needs: V2 fingerprints, V3 start/end commits, the V3 content version
//!   we left, the file-id map aligned with V2's files array, the V2 analytics record last merged.
//! - `migrationbatch`: one doc per planner run, id derived from its parameters.
//! - `migrationstate`: cursors — the `--since-last` high-water mark and the `--next-batch` cursor.

use crate::outcome::Outcome;
use crate::translate::SourceFields;
use crate::v2::Intervals;
use crate::v3::store::{write_command, write_errors, DUPLICATE_KEY};
use futures_util::TryStreamExt;
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::options::{ReplaceOptions, UpdateOptions};
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

pub const VIZ: &str = "migrationviz";
pub const BATCH: &str = "migrationbatch";
pub const STATE: &str = "migrationstate";
/// `migrationviz` field: every batch one of whose jobs on the viz ended (see [`Ledger::record`]).
const BATCHES: &str = "batches";

/// What the last successful migration of a viz left in V3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Migrated {
    pub fingerprint: String,
    pub analytics_fingerprint: Option<String>,
    pub info_v: i64,
    pub content_v: i64,
    pub start: String,
    pub end: String,
    pub end_timestamp: i64,
    /// `_v` of the V3 content snapshot after our write: anything else later is a V3 edit.
    pub v3_content_v: i64,
    pub file_ids: Vec<String>,
    pub analytics: Option<Intervals>,
    pub forked_from: Option<String>,
    pub forked_from_is_backfilled: Option<bool>,
    pub history: String,
    /// The V2 inputs of this migration field by field (absent in records written before it
    /// existed: change detection then compares `fingerprint` alone). See
    /// [`crate::translate::SourceFields`].
    #[serde(default)]
    pub source: Option<SourceFields>,
    /// The Info payload this migration wrote (its counts aside): the base of the next re-sync's
    /// three-way merge (spec 3.4). A field V3 holds differently from here is V3's. Absent in
    /// records written before it existed: the re-sync then replays V3's info op log up to the
    /// migration's last op.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<crate::v3::Info>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VizRecord {
    #[serde(rename = "_id")]
    pub viz: String,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub error_kind: Option<String>,
    pub batch: Option<String>,
    pub attempts: i64,
    /// Unix seconds of the last job on this viz.
    pub time: i64,
    pub migrated: Option<Migrated>,
    /// Upvotes/permissions skipped because their user is missing from V2.
    #[serde(default)]
    pub skipped_entries: Vec<String>,
}

/// The V2 inputs a viz's last migration read, as [`Ledger::recorded_sources`] returns them.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedSource {
    pub viz: String,
    pub fingerprint: String,
    /// Absent in records written before the ledger kept it.
    pub source: Option<SourceFields>,
    /// `all.all` of the V2 page-view record last merged (`None`: none was).
    pub page_views: Option<f64>,
}

/// One row of [`Ledger::outcome_counts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeCount {
    /// `None`: the overall count (each viz once); `Some`: that batch's.
    pub batch: Option<String>,
    pub outcome: String,
    pub n: i64,
    pub recent: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Batch {
    #[serde(rename = "_id")]
    pub id: String,
    pub mode: String,
    pub params: serde_json::Value,
    pub planned: i64,
    pub published: i64,
    /// `publishing` until every job is confirmed by the broker, then `published`.
    pub status: String,
    pub created: i64,
    pub published_at: Option<i64>,
}

#[derive(Clone)]
pub struct Ledger {
    db: Database,
}

fn encode<T: Serialize>(v: &T) -> mongodb::error::Result<Document> {
    bson::to_document(v).map_err(|e| mongodb::error::Error::custom(e.to_string()))
}

fn decode<T: for<'de> Deserialize<'de>>(d: Document) -> Option<T> {
    // Through JSON so numbers stored as int32/int64/double all read back.
    serde_json::from_value(bson::Bson::Document(d).into_relaxed_extjson()).ok()
}

impl Ledger {
    pub fn new(db: Database) -> Self {
        Ledger { db }
    }

    fn vizzes(&self) -> Collection<Document> {
        self.db.collection(VIZ)
    }

    pub async fn get(&self, viz: &str) -> mongodb::error::Result<Option<VizRecord>> {
        Ok(self
            .vizzes()
            .find_one(doc! {"_id": viz})
            .await?
            .and_then(decode))
    }

    pub async fn get_many(
        &self,
        ids: &[String],
    ) -> mongodb::error::Result<HashMap<String, VizRecord>> {
        let docs: Vec<Document> = self
            .vizzes()
            .find(doc! {"_id": {"$in": ids}})
            .await?
            .try_collect()
            .await?;
        Ok(docs
            .into_iter()
            .filter_map(decode::<VizRecord>)
            .map(|r| (r.viz.clone(), r))
            .collect())
    }

    /// Record the outcome of a job (one upsert). `attempts` counts jobs on this viz.
    ///
    /// Besides the record itself (`$set`: the whole [`VizRecord`]), the job's batch joins the
    /// viz's `batches` (a set: a redelivered job adds nothing). `batch` names only the last job's
    /// batch, so a viz re-planned by a later batch would otherwise look pending forever in the
    /// earlier one (`planner status`, `planner report --batch`). The set grows by one per
    /// re-plan of the viz (a daily cron re-plans only edited vizzes): small.
    pub async fn record(&self, rec: &VizRecord) -> mongodb::error::Result<()> {
        self.vizzes()
            .update_one(doc! {"_id": &rec.viz}, Self::update_of(rec)?)
            .with_options(UpdateOptions::builder().upsert(true).build())
            .await?;
        Ok(())
    }

    /// The upsert [`Ledger::record`] makes for `rec`.
    fn update_of(rec: &VizRecord) -> mongodb::error::Result<Document> {
        let mut fields = encode(rec)?;
        // `_id` comes from the filter on an upsert; `$set` leaves it alone.
        fields.remove("_id");
        let mut update = doc! {"$set": fields};
        if let Some(batch) = &rec.batch {
            update.insert("$addToSet", doc! {BATCHES: batch});
        }
        Ok(update)
    }

    /// Record several outcomes: one unordered `insert` of the records of `unrecorded` vizzes
    /// (the caller read no record of them: a batch's fresh vizzes), one unordered `update` of
    /// the upserts [`Ledger::record`] makes for the others and for any of `unrecorded` another
    /// writer recorded meanwhile (a duplicate key). An insert makes the document the upsert
    /// would (the record, then `batches`) at half the server's cost: no lookup before it.
    /// Returns the vizzes whose record the server refused (a per-document write error), each
    /// with its reason; a failed command fails them all, and so does a `writeConcernError`
    /// (the records are written but not known to be durable: the jobs must not be acked on it).
    pub async fn record_many(
        &self,
        recs: &[VizRecord],
        unrecorded: &HashSet<String>,
    ) -> mongodb::error::Result<Vec<(String, String)>> {
        let (new, mut known): (Vec<&VizRecord>, Vec<&VizRecord>) =
            recs.iter().partition(|r| unrecorded.contains(&r.viz));
        let mut refused = Vec::new();
        if !new.is_empty() {
            let docs = new
                .iter()
                .map(|r| Self::created_of(r))
                .collect::<mongodb::error::Result<Vec<Document>>>()?;
            let reply = write_command(
                &self.db,
                doc! {"insert": VIZ, "documents": docs, "ordered": false},
            )
            .await?;
            for (at, code, msg) in write_errors(&reply) {
                let Some(r) = new.get(at) else { continue };
                if code == DUPLICATE_KEY {
                    known.push(r);
                } else {
                    refused.push((r.viz.clone(), msg));
                }
            }
        }
        if known.is_empty() {
            return Ok(refused);
        }
        let updates = known
            .iter()
            .map(|r| Ok(doc! {"q": {"_id": &r.viz}, "u": Self::update_of(r)?, "upsert": true}))
            .collect::<mongodb::error::Result<Vec<Document>>>()?;
        let reply = write_command(
            &self.db,
            doc! {"update": VIZ, "updates": updates, "ordered": false},
        )
        .await?;
        for (at, _, msg) in write_errors(&reply) {
            if let Some(r) = known.get(at) {
                refused.push((r.viz.clone(), msg));
            }
        }
        Ok(refused)
    }

    /// The document [`Ledger::update_of`]'s upsert creates when there is none: `_id`, then the
    /// record's fields and `batches` in the order the server applies an update's fields to a
    /// new document (by name, as MongoDB since 5.0 and SecantusDB do).
    fn created_of(rec: &VizRecord) -> mongodb::error::Result<Document> {
        let mut fields: Vec<(String, Bson)> = encode(rec)?
            .into_iter()
            .filter(|(k, _)| k != "_id")
            .collect();
        if let Some(batch) = &rec.batch {
            fields.push((
                BATCHES.to_string(),
                Bson::Array(vec![batch.as_str().into()]),
            ));
        }
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        let mut d = doc! {"_id": &rec.viz};
        d.extend(fields);
        Ok(d)
    }

    /// The `migrationviz` query for "a job of `batch` ended on this viz" (records written
    /// before `batches` existed name it in `batch` only).
    pub fn in_batch(batch: &str) -> Document {
        doc! {"$or": [{BATCHES: batch}, {"batch": batch}]}
    }

    /// Every record (for status and verify). Small: one doc per viz.
    pub async fn all(&self) -> mongodb::error::Result<Vec<VizRecord>> {
        let docs: Vec<Document> = self.vizzes().find(doc! {}).await?.try_collect().await?;
        Ok(docs.into_iter().filter_map(decode).collect())
    }

    /// The records matching `filter` (a query on `migrationviz` fields), oldest job first, then
    /// by viz id: `planner report` filters in the database, not after reading everything.
    pub async fn find(&self, filter: Document) -> mongodb::error::Result<Vec<VizRecord>> {
        let docs: Vec<Document> = self
            .vizzes()
            .find(filter)
            .sort(doc! {"time": 1, "_id": 1})
            .await?
            .try_collect()
            .await?;
        Ok(docs.into_iter().filter_map(decode).collect())
    }

    /// How many vizzes the ledger last left with each of `kinds` as their error kind (one
    /// aggregate): what `planner status` shows of the acts of V3's users the fleet kept
    /// (`deleted_in_v3`, `owner_deleted_in_v3`, `conflict`).
    pub async fn kind_counts(
        &self,
        kinds: &[&str],
    ) -> mongodb::error::Result<std::collections::BTreeMap<String, i64>> {
        let pipeline = vec![
            doc! {"$match": {"errorKind": {"$in": kinds}}},
            doc! {"$group": {"_id": "$errorKind", "n": {"$sum": 1}}},
        ];
        let docs: Vec<Document> = self
            .vizzes()
            .aggregate(pipeline)
            .await?
            .try_collect()
            .await?;
        Ok(docs
            .iter()
            .filter_map(|d| {
                let n = crate::v3::store::bson_i64(d.get("n"))?;
                Some((d.get_str("_id").ok()?.to_string(), n))
            })
            .collect())
    }

    /// Outcome counts: overall (`batch: None`, each viz once, by its last outcome) and per
    /// batch (each viz in every batch one of whose jobs on it ended, by its last outcome), and
    /// how many ended at or after `since` (Unix seconds; overall rows only). Two aggregations in
    /// the database: `planner status` stays cheap with 100,000 records and `--watch`.
    pub async fn outcome_counts(&self, since: i64) -> mongodb::error::Result<Vec<OutcomeCount>> {
        let overall = [doc! {"$group": {
            "_id": {"outcome": "$outcome"},
            "n": {"$sum": 1},
            "recent": {"$sum": {"$cond": [{"$gte": ["$time", since]}, 1, 0]}},
        }}];
        let per_batch = [
            doc! {"$project": {
                "outcome": 1,
                BATCHES: {"$ifNull": [format!("${BATCHES}"), ["$batch"]]},
            }},
            doc! {"$unwind": format!("${BATCHES}")},
            doc! {"$group": {
                "_id": {"batch": format!("${BATCHES}"), "outcome": "$outcome"},
                "n": {"$sum": 1},
            }},
        ];
        let mut rows = Vec::new();
        for (pipeline, by_batch) in [(&overall[..], false), (&per_batch[..], true)] {
            let docs: Vec<Document> = self
                .vizzes()
                .aggregate(pipeline.to_vec())
                .await?
                .try_collect()
                .await?;
            rows.extend(docs.into_iter().filter_map(|d| {
                let key = d.get_document("_id").ok()?;
                let int = |k: &str| crate::v3::store::bson_i64(d.get(k)).unwrap_or(0);
                let batch = if by_batch {
                    // A record without any batch (a job published by hand) is only counted overall.
                    Some(key.get_str("batch").ok()?.to_string())
                } else {
                    None
                };
                Some(OutcomeCount {
                    batch,
                    outcome: key.get_str("outcome").ok()?.to_string(),
                    n: int("n"),
                    recent: int("recent"),
                })
            }));
        }
        Ok(rows)
    }

    pub async fn batch(&self, id: &str) -> mongodb::error::Result<Option<Batch>> {
        Ok(self
            .db
            .collection::<Document>(BATCH)
            .find_one(doc! {"_id": id})
            .await?
            .and_then(decode))
    }

    pub async fn batches(&self) -> mongodb::error::Result<Vec<Batch>> {
        let docs: Vec<Document> = self
            .db
            .collection::<Document>(BATCH)
            .find(doc! {})
            .sort(doc! {"created": 1})
            .await?
            .try_collect()
            .await?;
        Ok(docs.into_iter().filter_map(decode).collect())
    }

    /// What change detection compares V2 with: for every viz whose last job left it migrated
    /// (not skipped), the V2 inputs of its last migration. One scan of `migrationviz`,
    /// projected to those fields (V3's work, not V2's).
    pub async fn recorded_sources(&self) -> mongodb::error::Result<Vec<RecordedSource>> {
        #[derive(Deserialize)]
        struct Row {
            #[serde(rename = "_id")]
            viz: String,
            outcome: Outcome,
            migrated: Option<RowMigrated>,
        }
        #[derive(Deserialize)]
        struct RowMigrated {
            fingerprint: String,
            #[serde(default)]
            source: Option<SourceFields>,
            #[serde(default)]
            analytics: Option<Intervals>,
        }
        let projection = doc! {
            "outcome": 1, "migrated.fingerprint": 1, "migrated.source": 1,
            "migrated.analytics.all": 1,
        };
        let docs: Vec<Document> = self
            .vizzes()
            .find(doc! {})
            .projection(projection)
            .batch_size(5000)
            .await?
            .try_collect()
            .await?;
        Ok(docs
            .into_iter()
            .filter_map(decode::<Row>)
            .filter(|r| r.outcome != Outcome::Skipped)
            .filter_map(|r| {
                let m = r.migrated?;
                let page_views = m
                    .analytics
                    .as_ref()
                    .and_then(|a| a.get("all")?.get("all")?.as_f64());
                Some(RecordedSource {
                    viz: r.viz,
                    fingerprint: m.fingerprint,
                    source: m.source,
                    page_views,
                })
            })
            .collect())
    }

    pub async fn put_batch(&self, b: &Batch) -> mongodb::error::Result<()> {
        let opts = ReplaceOptions::builder().upsert(true).build();
        self.db
            .collection::<Document>(BATCH)
            .replace_one(doc! {"_id": &b.id}, encode(b)?)
            .with_options(opts)
            .await?;
        Ok(())
    }

    /// A named cursor in `migrationstate`.
    pub async fn state(&self, key: &str) -> mongodb::error::Result<Option<serde_json::Value>> {
        let d = self
            .db
            .collection::<Document>(STATE)
            .find_one(doc! {"_id": key})
            .await?;
        Ok(d.and_then(|mut d| d.remove("value"))
            .map(|b| b.into_relaxed_extjson()))
    }

    pub async fn set_state(
        &self,
        key: &str,
        value: &serde_json::Value,
    ) -> mongodb::error::Result<()> {
        let opts = ReplaceOptions::builder().upsert(true).build();
        let value =
            bson::to_bson(value).map_err(|e| mongodb::error::Error::custom(e.to_string()))?;
        self.db
            .collection::<Document>(STATE)
            .replace_one(doc! {"_id": key}, doc! {"_id": key, "value": value})
            .with_options(opts)
            .await?;
        Ok(())
    }
}
