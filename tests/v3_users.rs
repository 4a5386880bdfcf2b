//! V3 owns what its users did (spec 3.4, issue 27). After a first migration, V3's users act on
//! migrated vizzes through V3's own stack (real ShareDB + sharedb-mongo, json1 as "p":
//! `tests/js/sharedb-v3-acts.js`): they delete, trash, make private, rename, edit content, remove
//! a collaborator, withdraw an upvote, upvote, fork and delete an account. V2 changes the same
//! vizzes and others at the same time, with two true conflicts (a title renamed on both sides, a
//! content edited on both sides). Then the daily catch-up re-syncs every viz (the job path of
//! `planner plan --all --force`: [`Migrator::migrate`] per viz):
//! - cleanly (phase A), then once more (a rerun changes nothing); on a copy of its result the old
//!   merge is put back (each act of V3's undone by writes of ours) and `verify` must report
//!   every one;
//! - stopped between every pair of its writes (phase B): each viz's job, from the state the
//!   catch-up reached before it, stopped after its n-th write for every n and run again (by a
//!   new pod or the same process), must end as the clean job did (never `conflict` where a clean
//!   run says `migrated`), with V3 equal to the clean run's and op logs clean;
//! - by real worker processes, one killed with SIGKILL mid-run (phase C).
//!
//! Each phase checks: nothing of V3's is undone, V2's changes land wherever V3 did not act, no
//! viz V3 never touched ends `conflict`, counts equal what V3 holds, op logs are clean (versions
//! 0.._v-1 linked by `o`, `_o` the newest, no op of ours that changes nothing or only
//! `migratedTimestamp`), no commit has two children in one viz, content is the replay of
//! `info.end` (where V3 has no uncommitted edit), `verify` finds no mismatch and V2 is never
//! written. Every problem of every phase is collected and the test fails once, listing them all
//! (each line names the phase, the viz and its role in the scenario).
//!
//! Choices where the contract leaves room: V3's DeleteViz also takes one off the parent's
//! `forksCount` (vizhub-core's `decrementForksCount`), so every count can be required to equal
//! what V3 holds; a collaborator's V2 entry has no time of its own (its permission takes the
//! viz's `lastUpdatedTimestamp`), so the viz whose collaborator V3 removed is changed in V2 only
//! by an upvote, which moves no timestamp; a viz whose owner's account is gone is left exactly
//! as V3 has it; the deleted account's V2 entries added since are skipped and listed in the
//! ledger's skipped entries; a job run again after a clean run ends as before or `unchanged`.

mod common;
#[path = "common/env.rs"]
mod env;

use env::{docs, node, TestEnv};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use mongodb::{Client, Database};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use vizhub_migrate::migrate::{Done, JobError, Migrator};
use vizhub_migrate::planner::Selection;
use vizhub_migrate::verify::{self, Scope};
use vizhub_migrate::{Disposition, Outcome, PRIMORDIAL_VIZ_ID};

const LOADING_CSV: &str = "3fd333e335fe4ecb9ee0c819802443b7";
const PENGUIN: &str = "a56e821963b849b897dd51db26067db9";
const DANGLING: &str = "366c38ba5ebc4631b4bd936f3b709744";
/// The primordial viz's one collaborator in V2.
const COLLABORATOR: &str = "13540669";
/// One of the dangling-parent fixture's V2 upvoters (2019).
const DANGLING_UPVOTER: &str = "7992072";
/// Penguin's owner: a migrated user who upvotes in V3.
const V3_UPVOTER: &str = "676445";

/// Users of the synthetic vizzes: owners, upvoters (the first migration's), a collaborator, an
/// upvoter V2 adds during the catch-up and the account V3 deletes.
const ALICE: &str = "900001";
const BOB: &str = "900002";
const UPVOTER_A: &str = "900003";
const UPVOTER_B: &str = "900004";
const EDITOR: &str = "900005";
const NEW_UPVOTER: &str = "900006";
const GONE: &str = "900009";

const SYNTHETIC: usize = 20;
// The synthetic vizzes' roles (index into `viz`).
const DELETED_EDITED: usize = 0;
const DELETED_RENAMED: usize = 1;
const TRASHED: usize = 2;
const PRIVATE: usize = 3;
const RETITLED: usize = 4;
const TITLE_BOTH: usize = 5;
const CONTENT_BOTH: usize = 6;
const COLLABORATOR_REMOVED: usize = 7;
const UPVOTE_WITHDRAWN: usize = 8;
const V3_UPVOTED: usize = 9;
const FORKED_IN_V3: usize = 10;
const OWNER_GONE: usize = 11;
const UPVOTED_BY_GONE: usize = 12;
const COLLABORATOR_GONE: usize = 13;
const V2_EDITED: usize = 14;
const V2_UPVOTED: usize = 15;
const PRIVATE_V3_ONLY: usize = 16;
const EDITED_V3_ONLY: usize = 17;
// 18, 19: touched by neither.

const V3_RETITLE: &str = "Retitled in V3";
const V3_TITLE: &str = "Title from V3";
const V2_TITLE: &str = "Title from V2";
const V2_EDITED_TITLE: &str = "Edited in V2";
const PENGUIN_TITLE: &str = "Penguin renamed in V2";
const V2_INSERT: &str = "<!-- edited in V2 -->\n";
const V3_INSERT: &str = "/* edited in V3 */\n";

const OURS: &str = "vizhub-migrate";

fn viz(i: usize) -> String {
    format!("acce55ed{i:024x}")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// What a viz is in this scenario, for messages.
fn role(id: &str) -> String {
    let roles: &[(usize, &str)] = &[
        (DELETED_EDITED, "deleted in V3, edited and upvoted in V2"),
        (DELETED_RENAMED, "deleted in V3, renamed in V2"),
        (TRASHED, "trashed in V3, edited and upvoted in V2"),
        (PRIVATE, "made private in V3, edited and upvoted in V2"),
        (RETITLED, "retitled in V3, edited and upvoted in V2"),
        (TITLE_BOTH, "retitled in V3 and in V2 (+ a V2 upvote)"),
        (CONTENT_BOTH, "content edited in V3 and in V2"),
        (
            COLLABORATOR_REMOVED,
            "collaborator removed in V3, upvoted in V2",
        ),
        (UPVOTE_WITHDRAWN, "upvote withdrawn in V3, upvoted in V2"),
        (V3_UPVOTED, "upvoted in V3, edited and upvoted in V2"),
        (FORKED_IN_V3, "forked in V3, edited in V2"),
        (OWNER_GONE, "owner's account deleted in V3, edited in V2"),
        (
            UPVOTED_BY_GONE,
            "upvoted in V2 by the deleted account and another user",
        ),
        (
            COLLABORATOR_GONE,
            "collaborator added in V2: the deleted account",
        ),
        (V2_EDITED, "untouched by V3, edited and renamed in V2"),
        (V2_UPVOTED, "untouched by V3, upvoted in V2"),
        (PRIVATE_V3_ONLY, "made private in V3, unchanged in V2"),
        (EDITED_V3_ONLY, "content edited in V3, unchanged in V2"),
    ];
    if let Some((_, r)) = roles.iter().find(|(i, _)| viz(*i) == id) {
        return format!("{id} ({r})");
    }
    match id {
        PRIMORDIAL_VIZ_ID => format!("{id} (primordial: collaborator removed in V3)"),
        DANGLING => format!("{id} (fixture: upvote withdrawn in V3, edited in V2)"),
        PENGUIN => format!("{id} (fixture: untouched by V3, renamed in V2)"),
        LOADING_CSV => format!("{id} (fixture: untouched)"),
        _ => format!("{id} (untouched)"),
    }
}

/// A number of a JSON document, whatever BSON type it was stored as (the Node driver stores
/// large numbers as doubles).
fn num(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

/// A doc is there and not deleted.
fn live(d: &Option<Value>) -> bool {
    d.as_ref().is_some_and(|d| !d["_type"].is_null())
}

/// The synthetic V2 viz `i`: a fork of the primordial viz with two files and a one-op history,
/// upvoted by two users, with a collaborator.
fn synthetic(i: usize) -> vizhub_migrate::v2::V2Viz {
    let created = 1_600_000_000 + i as i64 * 1000;
    let owner = match i {
        OWNER_GONE => GONE,
        i if i % 2 == 0 => ALICE,
        _ => BOB,
    };
    let mut v = common::synthetic_viz(
        &viz(i),
        owner,
        Some(PRIMORDIAL_VIZ_ID),
        created,
        json!([{"name": "index.html", "text": format!("<p>{i}</p>\n")},
               {"name": "README.md", "text": format!("# Viz {i}\n")}]),
        &[(
            created + 60,
            json!([{"p": ["files", 0, "text", 0], "si": "<!-- first -->\n"}]),
        )],
    );
    v.info["upvotes"] = json!([
        {"userId": UPVOTER_A, "timestamp": created + 100},
        {"userId": UPVOTER_B, "timestamp": created + 200},
    ]);
    v.info["upvotesCount"] = json!(2);
    v.info["collaborators"] = json!([{ "userId": EDITOR }]);
    v
}

/// The V2 edits of the catch-up, as V2's ShareDB makes them.
struct V2Writer<'a> {
    v2: &'a Database,
}

impl V2Writer<'_> {
    async fn info_update(&self, viz: &str, update: Document) {
        let r = self
            .v2
            .collection::<Document>("documentInfo")
            .update_one(doc! {"_id": viz}, update)
            .await
            .unwrap();
        assert_eq!(r.matched_count, 1, "V2 info {viz}");
    }

    /// V2 adds an upvote (V2 keeps its count too; it moves no timestamp).
    async fn upvote(&self, viz: &str, user: &str) {
        let ts = now_ms();
        self.info_update(
            viz,
            doc! {"$push": {"upvotes": {"userId": user, "timestamp": ts / 1000}},
            "$inc": {"upvotesCount": 1, "_v": 1}, "$set": {"_m.mtime": ts}},
        )
        .await;
    }

    /// V2 adds a collaborator (it moves no timestamp).
    async fn add_collaborator(&self, viz: &str, user: &str) {
        self.info_update(
            viz,
            doc! {"$push": {"collaborators": {"userId": user}}, "$inc": {"_v": 1},
            "$set": {"_m.mtime": now_ms()}},
        )
        .await;
    }

    /// V2 renames a viz (running its code again, which moves `lastUpdatedTimestamp`).
    async fn rename(&self, viz: &str, title: &str) {
        let ts = now_ms();
        self.info_update(
            viz,
            doc! {"$set": {"title": title, "lastUpdatedTimestamp": ts / 1000, "_m.mtime": ts},
            "$inc": {"_v": 1}},
        )
        .await;
    }

    /// A live content edit as sharedb-mongo commits it: the op (linked to the snapshot's `_o`)
    /// first, then the snapshot at the next version; the info's `lastUpdatedTimestamp` moves.
    /// Returns the edited file's name and its new text.
    async fn edit_content(&self, viz: &str) -> (String, String) {
        let contents = self.v2.collection::<Document>("documentContent");
        let snap = contents
            .find_one(doc! {"_id": viz})
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("V2 content {viz}"));
        let v = match snap.get("_v") {
            Some(Bson::Int32(v)) => i64::from(*v),
            Some(Bson::Int64(v)) => *v,
            Some(Bson::Double(v)) => *v as i64,
            other => panic!("V2 content {viz}: _v {other:?}"),
        };
        let link = snap.get("_o").cloned().unwrap_or(Bson::Null);
        let file = snap.get_array("files").unwrap()[0]
            .as_document()
            .unwrap()
            .clone();
        let (name, text) = (
            file.get_str("name").unwrap().to_string(),
            file.get_str("text").unwrap().to_string(),
        );
        let ts = now_ms();
        let id = ObjectId::new();
        self.v2
            .collection::<Document>("o_documentContent")
            .insert_one(doc! {"_id": id, "src": "v2-browser", "seq": 1_i64, "v": v, "d": viz,
            "o": link, "op": [{"p": ["files", 0, "text", 0], "si": V2_INSERT}], "m": {"ts": ts}})
            .await
            .unwrap();
        let new_text = format!("{V2_INSERT}{text}");
        let r = contents
            .update_one(
                doc! {"_id": viz, "_v": snap.get("_v").cloned().unwrap()},
                doc! {"$set": {"files.0.text": &new_text, "_v": v + 1, "_o": id, "_m.mtime": ts}},
            )
            .await
            .unwrap();
        assert_eq!(r.modified_count, 1, "V2 content {viz}");
        self.info_update(
            viz,
            doc! {"$set": {"lastUpdatedTimestamp": ts / 1000, "_m.mtime": ts}, "$inc": {"_v": 1}},
        )
        .await;
        (name, new_text)
    }
}

/// What the scenario did, for the checks.
struct Scenario {
    /// Every V2 viz, in the planner's order (`createdTimestamp`, `_id`).
    order: Vec<String>,
    /// V3 after the first migration, before its users acted: `coll/id` → doc.
    before_acts: BTreeMap<String, Value>,
    /// V3 after its users acted, before the catch-up: `coll/id` → doc.
    after_acts: BTreeMap<String, Value>,
    /// Content V2 edited: viz → (file name, its new text).
    v2_texts: BTreeMap<String, (String, String)>,
    /// The fork V3 made of [`FORKED_IN_V3`].
    fork: String,
}

impl Scenario {
    /// The payload of a doc as the first migration wrote it (no envelope).
    fn migrated_payload(&self, coll: &str, id: &str) -> Value {
        let mut d = self
            .before_acts
            .get(&format!("{coll}/{id}"))
            .unwrap_or_else(|| panic!("{coll}/{id} not migrated"))
            .clone();
        let o = d.as_object_mut().unwrap();
        for k in ["_id", "_type", "_v", "_o", "_m"] {
            o.remove(k);
        }
        d
    }

    fn after_acts(&self, coll: &str, id: &str) -> &Value {
        self.after_acts
            .get(&format!("{coll}/{id}"))
            .unwrap_or_else(|| panic!("{coll}/{id} not in V3 after the acts"))
    }
}

/// A copy of every collection of `from` as database `name` (documents as they are: op logs,
/// snapshots, commits, ledger). Indexes are not copied: none is unique.
async fn copy_db(client: &Client, from: &Database, name: &str) -> Database {
    let to = client.database(name);
    let _ = to.drop().await;
    for c in from.list_collection_names().await.unwrap() {
        if c.starts_with("system.") {
            continue;
        }
        let all: Vec<Document> = from
            .collection::<Document>(&c)
            .find(doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        if all.is_empty() {
            let _ = to.create_collection(&c).await;
        } else {
            to.collection::<Document>(&c)
                .insert_many(all)
                .await
                .unwrap();
        }
    }
    to
}

/// Every document of every collection of a database, read once for all the checks of a moment.
struct Dump(BTreeMap<String, Vec<Document>>);

impl Dump {
    async fn of(db: &Database) -> Dump {
        let mut out = BTreeMap::new();
        for c in db.list_collection_names().await.unwrap() {
            let all: Vec<Document> = db
                .collection::<Document>(&c)
                .find(doc! {})
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            out.insert(c, all);
        }
        Dump(out)
    }

    /// The docs of a collection as JSON (relaxed extended JSON, as in [`docs`]).
    fn json(&self, coll: &str) -> Vec<Value> {
        self.0
            .get(coll)
            .into_iter()
            .flatten()
            .map(|d| Bson::Document(d.clone()).into_relaxed_extjson())
            .collect()
    }
}

/// `db`, whose documents are `now`, back to `to`: documents written since are put back,
/// documents and collections made since removed (cheaper than a copy of the database for every
/// stop).
async fn restore(db: &Database, to: &Dump, now: &Dump) {
    let (to, now) = (&to.0, &now.0);
    for (c, docs_now) in now {
        let coll = db.collection::<Document>(c);
        let Some(docs_then) = to.get(c) else {
            coll.drop().await.unwrap();
            continue;
        };
        let then: BTreeMap<String, &Document> = docs_then
            .iter()
            .map(|d| (d.get("_id").unwrap().to_string(), d))
            .collect();
        let mut seen = BTreeSet::new();
        let mut extra = Vec::new();
        for d in docs_now {
            let id = d.get("_id").unwrap();
            seen.insert(id.to_string());
            match then.get(&id.to_string()) {
                Some(old) if *old == d => {}
                Some(old) => {
                    coll.replace_one(doc! {"_id": id.clone()}, *old)
                        .await
                        .unwrap();
                }
                None => extra.push(id.clone()),
            }
        }
        if !extra.is_empty() {
            coll.delete_many(doc! {"_id": {"$in": extra}})
                .await
                .unwrap();
        }
        let missing: Vec<&Document> = then
            .iter()
            .filter(|(id, _)| !seen.contains(*id))
            .map(|(_, d)| *d)
            .collect();
        if !missing.is_empty() {
            coll.insert_many(missing).await.unwrap();
        }
    }
    for (c, docs_then) in to {
        if !now.contains_key(c) && !docs_then.is_empty() {
            db.collection::<Document>(c)
                .insert_many(docs_then)
                .await
                .unwrap();
        }
    }
}

/// V3 as its app sees it plus the versions: every snapshot (deleted ones too) without `_m`, `_o`
/// and `migratedTimestamp` (the time of a write), and every commit, by `coll/id`.
async fn state_of(db: &Database) -> BTreeMap<String, Value> {
    state(&Dump::of(db).await)
}

/// [`state_of`] from a [`Dump`].
fn state(dump: &Dump) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for coll in vizhub_migrate::v3::collections::SHAREDB {
        for mut d in dump.json(coll) {
            let id = format!("{coll}/{}", d["_id"].as_str().unwrap());
            let o = d.as_object_mut().unwrap();
            for k in ["_m", "_o", "migratedTimestamp"] {
                o.remove(k);
            }
            if let Some(v) = o.get("_v").and_then(num) {
                o.insert("_v".into(), json!(v));
            }
            out.insert(id, d);
        }
    }
    for c in dump.json("commit") {
        out.insert(format!("commit/{}", c["_id"].as_str().unwrap()), c);
    }
    out
}

/// Every snapshot of `db` as it is now (for the checks), by `coll/id`.
async fn snapshots(db: &Database) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for coll in vizhub_migrate::v3::collections::SHAREDB {
        for d in docs(db, coll).await {
            out.insert(format!("{coll}/{}", d["_id"].as_str().unwrap()), d);
        }
    }
    out
}

/// The top-level keys a json1 op changes (`<root>` for a component at the root).
fn json1_keys(op: &Value) -> Vec<String> {
    let Some(a) = op.as_array() else {
        return vec!["<root>".into()];
    };
    match a.first() {
        Some(Value::String(k)) => vec![k.clone()],
        Some(Value::Array(_)) => a
            .iter()
            .map(|d| match d.as_array().and_then(|d| d.first()) {
                Some(Value::String(k)) => k.clone(),
                _ => "<root>".into(),
            })
            .collect(),
        _ => vec!["<root>".into()],
    }
}

/// Op logs as sharedb-mongo keeps them, for every info, content, upvote, permission and user
/// doc: ops at exactly versions 0.._v-1, each linked (`o`) to the one before, the snapshot's `_o`
/// naming the newest; every op of ours changes something, and never only `migratedTimestamp`.
fn op_log_problems(dump: &Dump) -> Vec<String> {
    let mut out = Vec::new();
    for coll in ["info", "content", "upvote", "permission", "user"] {
        let snaps: BTreeMap<String, Value> = dump
            .json(coll)
            .into_iter()
            .map(|d| (d["_id"].as_str().unwrap().to_string(), d))
            .collect();
        let mut logs: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for op in dump.json(&format!("o_{coll}")) {
            let d = op["d"].as_str().unwrap_or("<no d>").to_string();
            logs.entry(d).or_default().push(op);
        }
        let ids: BTreeSet<&String> = snaps.keys().chain(logs.keys()).collect();
        for id in ids {
            let name = format!("{coll}/{id}");
            let mut ops = logs.get(id).cloned().unwrap_or_default();
            ops.sort_by_key(|o| num(&o["v"]).unwrap_or(-1));
            let Some(snap) = snaps.get(id) else {
                out.push(format!(
                    "{name}: {} op(s) but no snapshot (srcs {:?})",
                    ops.len(),
                    ops.iter().map(|o| o["src"].clone()).collect::<Vec<_>>()
                ));
                continue;
            };
            let v = num(&snap["_v"]).unwrap_or(-1);
            let versions: Vec<i64> = ops.iter().map(|o| num(&o["v"]).unwrap_or(-1)).collect();
            if versions != (0..v).collect::<Vec<_>>() {
                let srcs: Vec<String> = ops
                    .iter()
                    .map(|o| format!("v{}:{}", o["v"], o["src"].as_str().unwrap_or("?")))
                    .collect();
                out.push(format!(
                    "{name}: op versions are not 0..{v} (snapshot _v {v}): {srcs:?}"
                ));
                continue;
            }
            for w in ops.windows(2) {
                if w[1]["o"] != w[0]["_id"] {
                    out.push(format!(
                        "{name}: op v{} (src {}) links to {}, not to op v{} {}",
                        w[1]["v"], w[1]["src"], w[1]["o"], w[0]["v"], w[0]["_id"]
                    ));
                }
            }
            if let Some(last) = ops.last() {
                if snap["_o"] != last["_id"] {
                    out.push(format!(
                        "{name}: snapshot _o {} is not its newest op v{} {}",
                        snap["_o"], last["v"], last["_id"]
                    ));
                }
            }
            for op in ops.iter().filter(|o| o["src"] == OURS) {
                let v = &op["v"];
                match op.get("op") {
                    Some(o) if o.is_null() || o.as_array().is_some_and(|a| a.is_empty()) => {
                        out.push(format!("{name}: our op v{v} changes nothing: {o}"))
                    }
                    Some(o) if json1_keys(o) == ["migratedTimestamp"] => out.push(format!(
                        "{name}: our op v{v} changes only migratedTimestamp: {o}"
                    )),
                    Some(_) => {}
                    None if op.get("create").is_some() || op.get("del").is_some() => {}
                    None => out.push(format!("{name}: our op v{v} is neither op, create nor del")),
                }
            }
        }
    }
    out
}

/// What a check wants of an upvote or permission doc.
#[derive(Debug, Clone, Copy)]
enum Want {
    Live,
    /// Deleted by V3 and still so: its tombstone (`_type: null`) is there.
    Deleted,
    /// Absent or deleted.
    NotLive,
}

/// The commit history as V3 reads it: no commit has two children in one viz (a branch the
/// migration made), and every live viz's content equals the replay of its `info.end` (spec 2.2;
/// except `uncommitted`, vizzes whose content V3 edited without committing, as V3's editor
/// does). `only`: the vizzes whose content to replay (all when `None`; a replay runs through
/// the primordial viz's long history, so the stop sweep replays only the job's own viz).
fn history_problems(dump: &Dump, uncommitted: &[String], only: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let mut commits = std::collections::HashMap::new();
    for c in dump.json("commit") {
        match serde_json::from_value::<vizhub_migrate::v3::Commit>(c.clone()) {
            Ok(commit) => {
                commits.insert(commit.id.clone(), commit);
            }
            Err(e) => out.push(format!("commit {}: unreadable ({e}): {c}", c["_id"])),
        }
    }
    let mut children: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for c in commits.values() {
        if let Some(parent) = &c.parent {
            children
                .entry((parent.clone(), c.viz.clone()))
                .or_default()
                .push(c.id.clone());
        }
    }
    for ((parent, viz_id), kids) in children {
        if kids.len() > 1 {
            out.push(format!(
                "commit {parent} has {} children in {}: {kids:?}",
                kids.len(),
                role(&viz_id)
            ));
        }
    }
    let contents: BTreeMap<String, Value> = dump
        .json("content")
        .into_iter()
        .map(|d| (d["_id"].as_str().unwrap().to_string(), d))
        .collect();
    for info in dump.json("info") {
        let id = info["_id"].as_str().unwrap().to_string();
        if info["_type"].is_null() || uncommitted.contains(&id) || only.is_some_and(|o| o != id) {
            continue;
        }
        let Some(end) = info["end"].as_str() else {
            out.push(format!("{}: info has no end", role(&id)));
            continue;
        };
        let Some(mut content) = contents.get(&id).cloned() else {
            out.push(format!("{}: no content doc", role(&id)));
            continue;
        };
        let o = content.as_object_mut().unwrap();
        for k in ["_id", "_type", "_v", "_o", "_m"] {
            o.remove(k);
        }
        match vizhub_migrate::v3::content_at(&commits, end) {
            Ok(replayed) if replayed == content => {}
            Ok(replayed) => out.push(format!(
                "{}: content is not the replay of info.end {end}: they differ at {:?}",
                role(&id),
                diff_paths(&content, &replayed, "")
            )),
            Err(e) => out.push(format!(
                "{}: info.end {end} does not replay: {e:?}",
                role(&id)
            )),
        }
    }
    out
}

/// Where two JSON values differ, as paths (`files.a1b2c3d4.text`), to a depth of four.
fn diff_paths(a: &Value, b: &Value, at: &str) -> Vec<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) if at.matches('.').count() < 3 => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .filter(|k| x.get(*k) != y.get(*k))
                .flat_map(|k| {
                    let path = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    diff_paths(
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        &path,
                    )
                })
                .collect()
        }
        _ if a == b => Vec::new(),
        _ => vec![at.to_string()],
    }
}

/// How `state` differs from `want` (both from [`state_of`]), a line per document: where it
/// differs, or that it is missing or extra.
fn state_diff(state: &BTreeMap<String, Value>, want: &BTreeMap<String, Value>) -> Vec<String> {
    let keys: BTreeSet<&String> = state.keys().chain(want.keys()).collect();
    keys.into_iter()
        .filter_map(|k| match (state.get(k), want.get(k)) {
            (Some(a), Some(b)) if a == b => None,
            (Some(a), Some(b)) => Some(format!(
                "{k}: differs at {:?} (_v {} here, {} wanted)",
                diff_paths(a, b, ""),
                short(&a["_v"]),
                short(&b["_v"])
            )),
            (Some(_), None) => Some(format!("{k}: extra")),
            (None, _) => Some(format!("{k}: missing")),
        })
        .collect()
}

/// A value for a message, cut to 80 characters.
fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s,
    }
}

/// [`op_log_problems`] and [`history_problems`].
fn log_problems(dump: &Dump, uncommitted: &[String], only: Option<&str>) -> Vec<String> {
    let mut out = op_log_problems(dump);
    out.extend(history_problems(dump, uncommitted, only));
    out
}

/// A write of ours the way the old merge made it (an op with `src: "vizhub-migrate"`, then the
/// snapshot at the next version): `Some(data)` creates the doc (over V3's tombstone), `None`
/// sets each field of `fields` (a `null` value removes it). Nothing when it would change nothing.
async fn our_write(db: &Database, coll: &str, id: &str, data: Option<Value>, fields: Value) {
    let snaps = db.collection::<Document>(coll);
    let snap = snaps
        .find_one(doc! {"_id": id})
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{coll}/{id}"));
    let v = match snap.get("_v") {
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Double(v)) => *v as i64,
        other => panic!("{coll}/{id}: _v {other:?}"),
    };
    let link = snap.get("_o").cloned().unwrap_or(Bson::Null);
    let ts = now_ms();
    let op_id = ObjectId::new();
    let bson = |v: &Value| mongodb::bson::to_bson(v).unwrap();
    let mut op = doc! {"_id": op_id, "src": OURS, "seq": v + 1, "v": v, "m": {"ts": ts}, "c": coll, "d": id, "o": link};
    let update = match data {
        Some(data) => {
            if snap.get("_type").is_some_and(|t| t != &Bson::Null) {
                return; // live already
            }
            op.insert("create", doc! {"type": "p", "data": bson(&data)});
            let mut d = mongodb::bson::to_document(&data).unwrap();
            d.insert("_id", id);
            d.insert("_type", "p");
            d.insert("_v", v + 1);
            d.insert("_o", op_id);
            d.insert("_m", doc! {"ctime": ts, "mtime": ts});
            snaps.replace_one(doc! {"_id": id}, d).await.unwrap();
            None
        }
        None => {
            let mut components = Vec::new();
            let (mut set, mut unset) = (Document::new(), Document::new());
            for (k, val) in fields.as_object().unwrap() {
                let now = snap.get(k);
                let comp = match (now, val.is_null()) {
                    (None, true) => continue,
                    (Some(_), true) => json!({"r": true}),
                    (Some(b), false) if *b == bson(val) => continue,
                    (Some(_), false) => json!({"r": true, "i": val}),
                    (None, false) => json!({"i": val}),
                };
                components.push(json!([k, comp]));
                if val.is_null() {
                    unset.insert(k, "");
                } else {
                    set.insert(k, bson(val));
                }
            }
            if components.is_empty() {
                return;
            }
            let json1 = if components.len() == 1 {
                components.pop().unwrap()
            } else {
                Value::Array(components)
            };
            op.insert("op", bson(&json1));
            set.insert("_v", v + 1);
            set.insert("_o", op_id);
            set.insert("_m.mtime", ts);
            let mut update = doc! {"$set": set};
            if !unset.is_empty() {
                update.insert("$unset", unset);
            }
            Some(update)
        }
    };
    db.collection::<Document>(&format!("o_{coll}"))
        .insert_one(op)
        .await
        .unwrap();
    if let Some(update) = update {
        snaps.update_one(doc! {"_id": id}, update).await.unwrap();
    }
}

/// The old merge put back: on a copy of V3 after a catch-up, every act of V3's undone by writes
/// of ours. `verify` must report each one. Returns the problems.
async fn verify_reports_undone_acts(
    env: &mut TestEnv,
    sc: &Scenario,
    from: &Database,
) -> Vec<String> {
    let db = copy_db(&env.client, from, &format!("{}_undone", from.name())).await;
    let v = viz;
    let info = |i: usize| sc.migrated_payload("info", &v(i));
    our_write(
        &db,
        "info",
        &v(TRASHED),
        None,
        json!({"trashed": null, "trashedTimestamp": null}),
    )
    .await;
    our_write(
        &db,
        "info",
        &v(PRIVATE),
        None,
        json!({"visibility": "public"}),
    )
    .await;
    our_write(
        &db,
        "info",
        &v(RETITLED),
        None,
        json!({"title": info(RETITLED)["title"]}),
    )
    .await;
    our_write(
        &db,
        "info",
        &v(DELETED_EDITED),
        Some(info(DELETED_EDITED)),
        json!(null),
    )
    .await;
    our_write(
        &db,
        "content",
        &v(DELETED_EDITED),
        Some(sc.migrated_payload("content", &v(DELETED_EDITED))),
        json!(null),
    )
    .await;
    for (coll, user, i) in [
        ("permission", EDITOR, COLLABORATOR_REMOVED),
        ("upvote", UPVOTER_A, UPVOTE_WITHDRAWN),
    ] {
        let id = format!("{user}-{}", v(i));
        let data = sc.migrated_payload(coll, &id);
        our_write(&db, coll, &id, Some(data), json!(null)).await;
    }
    // V2's count, without V3's own upvote.
    let live_upvotes = docs(&db, "upvote")
        .await
        .iter()
        .filter(|u| u["viz"] == v(V3_UPVOTED).as_str() && !u["_type"].is_null())
        .count() as i64;
    our_write(
        &db,
        "info",
        &v(V3_UPVOTED),
        None,
        json!({"upvotesCount": live_upvotes - 1}),
    )
    .await;
    our_write(
        &db,
        "user",
        GONE,
        Some(sc.migrated_payload("user", GONE)),
        json!(null),
    )
    .await;

    let mut out = Vec::new();
    // What verify says of the catch-up as it was, and with the acts undone: each undone act
    // must add a mismatch of its viz (or, for the account, one naming it).
    let saved = std::mem::replace(&mut env.v3, from.clone());
    let before = verify::verify(&env.migrator(), Scope::All, |_, _| {}).await;
    env.v3 = db.clone();
    let after = verify::verify(&env.migrator(), Scope::All, |_, _| {}).await;
    match (before, after) {
        (Ok(before), Ok(after)) => {
            let new: Vec<_> = after
                .mismatches
                .iter()
                .filter(|x| !before.mismatches.contains(x))
                .collect();
            for (i, undone) in [
                (TRASHED, "trash"),
                (PRIVATE, "made private"),
                (RETITLED, "retitle"),
                (DELETED_EDITED, "deletion"),
                (COLLABORATOR_REMOVED, "collaborator removal"),
                (UPVOTE_WITHDRAWN, "upvote withdrawal"),
                (V3_UPVOTED, "upvote (count)"),
                (OWNER_GONE, "account deletion"),
            ] {
                let reported = new
                    .iter()
                    .any(|x| x.viz == v(i) || (i == OWNER_GONE && x.detail.contains(GONE)));
                if !reported {
                    out.push(format!(
                        "verify with the old merge put back: V3's {undone} undone on {} is not reported",
                        role(&v(i))
                    ));
                }
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            out.push(format!("verify with the old merge put back failed: {e}"))
        }
    }
    env.v3 = saved;
    db.drop().await.unwrap();
    out
}

/// Every live info's `forksCount` and `upvotesCount` equal what V3 holds: its live infos forked
/// from it, its live upvotes.
fn count_problems(snaps: &BTreeMap<String, Value>) -> Vec<String> {
    let mut p = Vec::new();
    let infos: Vec<&Value> = snaps
        .iter()
        .filter(|(k, d)| k.starts_with("info/") && !d["_type"].is_null())
        .map(|(_, d)| d)
        .collect();
    for i in &infos {
        let id = i["_id"].as_str().unwrap();
        let forks = infos.iter().filter(|f| f["forkedFrom"] == id).count() as i64;
        let upvotes = snaps
            .iter()
            .filter(|(k, d)| k.starts_with("upvote/") && !d["_type"].is_null() && d["viz"] == id)
            .count() as i64;
        if num(&i["forksCount"]) != Some(forks) {
            p.push(format!(
                "{}: forksCount {}, V3 holds {forks} live forks",
                role(id),
                i["forksCount"]
            ));
        }
        if num(&i["upvotesCount"]) != Some(upvotes) {
            p.push(format!(
                "{}: upvotesCount {}, V3 holds {upvotes} live upvotes",
                role(id),
                i["upvotesCount"]
            ));
        }
    }

    p
}

/// The ledger's outcome and reason of every viz.
async fn outcomes(env: &TestEnv) -> BTreeMap<String, (Outcome, Option<String>)> {
    env.records()
        .await
        .into_iter()
        .map(|r| (r.viz, (r.outcome, r.reason)))
        .collect()
}

/// One job as a worker runs it: [`Migrator::migrate`], and for an error the worker skips (a viz
/// whose owner deleted the V3 account, …) the skip recorded in the ledger as the worker records
/// it ([`Migrator::record_failure`]).
async fn run_job(m: &Migrator, viz: &str) -> Result<Done, JobError> {
    match m.migrate(viz, None).await {
        Err(e) if e.disposition() == Disposition::Skip => {
            m.record_failure(viz, &e, None).await?;
            Ok(Done {
                viz: viz.to_string(),
                outcome: e.disposition().final_outcome(),
                reason: Some(e.to_string()),
            })
        }
        r => r,
    }
}

/// One re-sync of every V2 viz, in order (the job path of `planner plan --all --force`), on
/// `env.v3`. A job that fails is a problem.
async fn resync_all(env: &TestEnv, sc: &Scenario, phase: &str, problems: &mut Vec<String>) {
    env.check_v2().await;
    let m = env.migrator();
    for id in &sc.order {
        if let Err(e) = run_job(&m, id).await {
            problems.push(format!("{phase}: {} failed: {e}", role(id)));
        }
    }
    env.check_v2().await;
}

/// Every rule of the scenario, on V3 as `env.v3` holds it after a catch-up.
async fn check_v3(env: &TestEnv, sc: &Scenario, phase: &str) -> Vec<String> {
    let mut p: Vec<String> = Vec::new();
    let snaps = snapshots(&env.v3).await;
    let get = |coll: &str, id: &str| snaps.get(&format!("{coll}/{id}")).cloned();
    let ledger = outcomes(env).await;
    let records = env.records().await;

    // Outcomes.
    let expect = |id: &str| -> (&[Outcome], Option<&str>) {
        let i = (0..SYNTHETIC).find(|i| viz(*i) == id);
        match i {
            Some(DELETED_EDITED | DELETED_RENAMED) => (&[Outcome::Skipped], Some("deleted in V3")),
            Some(OWNER_GONE) => (&[Outcome::Skipped], Some("owner deleted in V3")),
            Some(TITLE_BOTH) => (&[Outcome::Conflict], Some("title")),
            Some(CONTENT_BOTH) => (&[Outcome::Conflict], Some("content")),
            Some(
                TRASHED | PRIVATE | RETITLED | COLLABORATOR_REMOVED | UPVOTE_WITHDRAWN | V3_UPVOTED
                | FORKED_IN_V3 | UPVOTED_BY_GONE | V2_EDITED | V2_UPVOTED,
            ) => (&[Outcome::Migrated], None),
            _ if [DANGLING, PENGUIN].contains(&id) => (&[Outcome::Migrated], None),
            _ => (&[Outcome::Migrated, Outcome::Unchanged], None),
        }
    };
    for id in &sc.order {
        let (want, reason) = expect(id);
        match ledger.get(id) {
            None => p.push(format!("{}: no ledger record", role(id))),
            Some((o, r)) => {
                if !want.contains(o) {
                    p.push(format!(
                        "{}: outcome {o:?} ({}), want {want:?}",
                        role(id),
                        r.as_deref().unwrap_or("no reason")
                    ));
                } else if let Some(reason) = reason {
                    if !r.as_deref().unwrap_or("").contains(reason) {
                        p.push(format!(
                            "{}: outcome {o:?}, reason {r:?} does not name {reason:?}",
                            role(id)
                        ));
                    }
                }
            }
        }
    }

    // Deleted vizzes stay deleted, V3's `del` the last op of each.
    for i in [DELETED_EDITED, DELETED_RENAMED] {
        let id = viz(i);
        for coll in ["info", "content"] {
            match get(coll, &id) {
                Some(d) if d["_type"].is_null() => {}
                d => p.push(format!(
                    "{}: {coll} is not deleted (V3 deleted it): {}",
                    role(&id),
                    d.map_or("missing".into(), |d| format!("_type {}", d["_type"]))
                )),
            }
            let newest = env
                .v3
                .collection::<Document>(&format!("o_{coll}"))
                .find_one(doc! {"d": &id})
                .sort(doc! {"v": -1})
                .await
                .unwrap();
            let newest = newest.map(|d| Bson::Document(d).into_relaxed_extjson());
            if !newest
                .as_ref()
                .is_some_and(|o| o.get("del").is_some() && o["src"] != OURS)
            {
                p.push(format!(
                    "{}: an op follows V3's del in o_{coll}: {}",
                    role(&id),
                    newest.map_or("none".into(), |o| format!(
                        "v{} src {} {}",
                        o["v"],
                        o["src"],
                        if o.get("create").is_some() {
                            "create"
                        } else {
                            "op"
                        }
                    ))
                ));
            }
        }
    }

    // Info fields V3 set are kept; V2's changes to other fields land.
    let info = |i: usize| get("info", &viz(i)).unwrap_or(Value::Null);
    let trashed = info(TRASHED);
    let trashed_before = sc.after_acts("info", &viz(TRASHED));
    if trashed["trashed"] != true
        || trashed["trashedTimestamp"] != trashed_before["trashedTimestamp"]
    {
        p.push(format!(
            "{}: V3's trash undone: trashed {}, trashedTimestamp {} (V3 set {})",
            role(&viz(TRASHED)),
            trashed["trashed"],
            trashed["trashedTimestamp"],
            trashed_before["trashedTimestamp"]
        ));
    }
    if trashed["end"] == trashed_before["end"] {
        p.push(format!(
            "{}: info.end did not move on with V2's content edit",
            role(&viz(TRASHED))
        ));
    }
    for i in [PRIVATE, PRIVATE_V3_ONLY] {
        if info(i)["visibility"] != "private" {
            p.push(format!(
                "{}: V3 made it private, V3 now has visibility {}",
                role(&viz(i)),
                info(i)["visibility"]
            ));
        }
    }
    for (i, title) in [
        (RETITLED, V3_RETITLE),
        (TITLE_BOTH, V3_TITLE),
        (V2_EDITED, V2_EDITED_TITLE),
    ] {
        if info(i)["title"] != title {
            p.push(format!(
                "{}: title {}, want {title:?}",
                role(&viz(i)),
                info(i)["title"]
            ));
        }
    }
    let penguin = get("info", PENGUIN).unwrap_or(Value::Null);
    if penguin["title"] != PENGUIN_TITLE {
        p.push(format!(
            "{}: title {}, want V2's {PENGUIN_TITLE:?}",
            role(PENGUIN),
            penguin["title"]
        ));
    }

    // Content: V2's edits land where V3 did not edit; V3's edits stay.
    for (id, (name, text)) in &sc.v2_texts {
        let i = (0..SYNTHETIC).find(|i| viz(*i) == *id);
        if matches!(
            i,
            Some(DELETED_EDITED | CONTENT_BOTH | OWNER_GONE | DELETED_RENAMED)
        ) {
            continue;
        }
        let content = get("content", id).unwrap_or(Value::Null);
        let found = content["files"]
            .as_object()
            .into_iter()
            .flat_map(|f| f.values())
            .find(|f| f["name"] == name.as_str());
        if found.is_none_or(|f| f["text"] != text.as_str()) {
            p.push(format!(
                "{}: V2's content edit did not land in {name}: {}",
                role(id),
                found.map_or(Value::Null, |f| f["text"].clone())
            ));
        }
    }
    for i in [CONTENT_BOTH, EDITED_V3_ONLY] {
        let id = viz(i);
        let now = get("content", &id).unwrap_or(Value::Null);
        let v3 = sc.after_acts("content", &id);
        if now["files"] != v3["files"] {
            p.push(format!(
                "{}: V3's content edit undone: files {} (V3 had {})",
                role(&id),
                now["files"],
                v3["files"]
            ));
        }
    }
    // A viz whose owner is gone is left as V3 has it.
    let gone_viz = viz(OWNER_GONE);
    for coll in ["info", "content"] {
        let now = get(coll, &gone_viz).unwrap_or(Value::Null);
        let before = sc.after_acts(coll, &gone_viz);
        if num(&now["_v"]) != num(&before["_v"]) {
            p.push(format!(
                "{}: {coll} was written (v{} → v{}) though its job ends skipped",
                role(&gone_viz),
                before["_v"],
                now["_v"]
            ));
        }
    }

    // Upvotes and collaborators.
    let must = |p: &mut Vec<String>, coll: &str, user: &str, viz_id: &str, want: Want| {
        let id = format!("{user}-{viz_id}");
        let d = get(coll, &id);
        let is = match &d {
            None => "absent",
            Some(d) if d["_type"].is_null() => "deleted (_type null)",
            Some(_) => "live",
        };
        let ok = match want {
            Want::Live => is == "live",
            Want::Deleted => is == "deleted (_type null)",
            Want::NotLive => is != "live",
        };
        if !ok {
            p.push(format!(
                "{}: {coll} {id} is {is}, want {want:?}",
                role(viz_id)
            ));
        }
    };
    // What V3 deleted stays deleted (the tombstone V3's del left).
    must(
        &mut p,
        "permission",
        EDITOR,
        &viz(COLLABORATOR_REMOVED),
        Want::Deleted,
    );
    must(
        &mut p,
        "permission",
        COLLABORATOR,
        PRIMORDIAL_VIZ_ID,
        Want::Deleted,
    );
    must(
        &mut p,
        "upvote",
        UPVOTER_A,
        &viz(UPVOTE_WITHDRAWN),
        Want::Deleted,
    );
    must(&mut p, "upvote", DANGLING_UPVOTER, DANGLING, Want::Deleted);
    must(&mut p, "upvote", V3_UPVOTER, &viz(V3_UPVOTED), Want::Live);
    for i in [
        TRASHED,
        PRIVATE,
        RETITLED,
        TITLE_BOTH,
        COLLABORATOR_REMOVED,
        UPVOTE_WITHDRAWN,
        V3_UPVOTED,
        UPVOTED_BY_GONE,
        V2_UPVOTED,
    ] {
        must(&mut p, "upvote", NEW_UPVOTER, &viz(i), Want::Live);
    }
    if let Some(u) = get("upvote", &format!("{V3_UPVOTER}-{}", viz(V3_UPVOTED))) {
        if u.get("migratedFromV2").is_some() {
            p.push(format!(
                "V3's own upvote was taken over by the migration: {u}"
            ));
        }
    }
    // The deleted account: never re-created, nor its V2 entries added since.
    match get("user", GONE) {
        Some(u) if u["_type"].is_null() => {}
        u => p.push(format!(
            "user {GONE} (account deleted in V3) is {}",
            u.map_or("missing".into(), |u| format!("re-created: {u}"))
        )),
    }
    must(&mut p, "upvote", GONE, &viz(UPVOTED_BY_GONE), Want::NotLive);
    must(
        &mut p,
        "permission",
        GONE,
        &viz(COLLABORATOR_GONE),
        Want::NotLive,
    );
    let skipped_gone = records
        .iter()
        .find(|r| r.viz == viz(UPVOTED_BY_GONE))
        .is_some_and(|r| r.skipped_entries.iter().any(|e| e.contains(GONE)));
    if !skipped_gone {
        p.push(format!(
            "{}: the deleted account's upvote is not among the ledger's skipped entries",
            role(&viz(UPVOTED_BY_GONE))
        ));
    }

    // V3's fork is kept; every count equals what V3 holds.
    let fork = get("info", &sc.fork);
    if !live(&fork) || fork.as_ref().unwrap()["forkedFrom"] != viz(FORKED_IN_V3).as_str() {
        p.push(format!("V3's fork {} is gone or moved: {fork:?}", sc.fork));
    }
    if !live(&get("content", &sc.fork)) {
        p.push(format!("V3's fork {}: content gone", sc.fork));
    }
    p.extend(count_problems(&snaps));

    // The two counts V3's acts moved, explicitly: two migrated upvotes, V3's and V2's new one;
    // V3's fork.
    let upvoted = info(V3_UPVOTED);
    if num(&upvoted["upvotesCount"]) != Some(4) {
        p.push(format!(
            "{}: upvotesCount {}, want 4 (2 migrated, V3's own, V2's new one)",
            role(&viz(V3_UPVOTED)),
            upvoted["upvotesCount"]
        ));
    }
    let forked = info(FORKED_IN_V3);
    if num(&forked["forksCount"]) != Some(1) {
        p.push(format!(
            "{}: forksCount {}, want 1 (V3's fork)",
            role(&viz(FORKED_IN_V3)),
            forked["forksCount"]
        ));
    }

    let v3_edited = [viz(CONTENT_BOTH), viz(EDITED_V3_ONLY)];
    p.extend(log_problems(&Dump::of(&env.v3).await, &v3_edited, None));
    match verify::verify(&env.migrator(), Scope::All, |_, _| {}).await {
        Ok(r) => p.extend(
            r.mismatches
                .iter()
                .map(|x| format!("verify: {} {}: {}", role(&x.viz), x.category, x.detail)),
        ),
        Err(e) => p.push(format!("verify failed: {e}")),
    }
    p.into_iter().map(|x| format!("{phase}: {x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_brings_v2_changes_and_never_undoes_v3() {
    let started = Instant::now();
    let mut env = TestEnv::new("v3users").await;
    env.load_fixtures(&[]).await;
    let fixture_users = common::World::with_fixtures(&[]).users;
    let ours = [ALICE, BOB, UPVOTER_A, UPVOTER_B, EDITOR, NEW_UPVOTER, GONE];
    assert!(ours.iter().all(|u| !fixture_users.contains_key(*u)));
    env.insert_v2("user", ours.iter().map(|u| common::v2_user(u)).collect())
        .await;
    for i in 0..SYNTHETIC {
        env.load_viz(&synthetic(i)).await;
    }
    let order: Vec<String> = env
        .v2
        .collection::<Document>("documentInfo")
        .find(doc! {})
        .sort(doc! {"createdTimestamp": 1, "_id": 1})
        .await
        .unwrap()
        .try_collect::<Vec<Document>>()
        .await
        .unwrap()
        .iter()
        .map(|d| d.get_str("_id").unwrap().to_string())
        .collect();
    assert_eq!(order.len(), SYNTHETIC + 4);

    // 1. The first migration.
    env.check_v2().await;
    let m = env.migrator();
    for id in &order {
        let done = m
            .migrate(id, None)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(done.outcome, Outcome::Migrated, "{id}: {:?}", done.reason);
    }
    env.check_v2().await;
    for (user, i) in [
        (EDITOR, COLLABORATOR_REMOVED),
        (UPVOTER_A, UPVOTE_WITHDRAWN),
    ] {
        let coll = if user == EDITOR {
            "permission"
        } else {
            "upvote"
        };
        let id = format!("{user}-{}", viz(i));
        assert!(live(&env.v3_doc(coll, &id).await), "{coll}/{id} migrated");
    }

    // 2. V3's users act, through ShareDB.
    let before_acts = snapshots(&env.v3).await;
    let v = |i: usize| viz(i);
    let acts = json!([
        {"act": "deleteViz", "viz": v(DELETED_EDITED)},
        {"act": "deleteViz", "viz": v(DELETED_RENAMED)},
        {"act": "trash", "viz": v(TRASHED)},
        {"act": "setVisibility", "viz": v(PRIVATE), "visibility": "private"},
        {"act": "setVisibility", "viz": v(PRIVATE_V3_ONLY), "visibility": "private"},
        {"act": "setTitle", "viz": v(RETITLED), "title": V3_RETITLE},
        {"act": "setTitle", "viz": v(TITLE_BOTH), "title": V3_TITLE},
        {"act": "editContent", "viz": v(CONTENT_BOTH), "insert": V3_INSERT},
        {"act": "editContent", "viz": v(EDITED_V3_ONLY), "insert": V3_INSERT},
        {"act": "removeCollaborator", "viz": v(COLLABORATOR_REMOVED), "user": EDITOR},
        {"act": "removeCollaborator", "viz": PRIMORDIAL_VIZ_ID, "user": COLLABORATOR},
        {"act": "withdrawUpvote", "viz": v(UPVOTE_WITHDRAWN), "user": UPVOTER_A},
        {"act": "withdrawUpvote", "viz": DANGLING, "user": DANGLING_UPVOTER},
        {"act": "upvote", "viz": v(V3_UPVOTED), "user": V3_UPVOTER},
        {"act": "fork", "viz": v(FORKED_IN_V3)},
        {"act": "deleteAccount", "user": GONE},
    ]);
    let (ok, report) = node(
        "sharedb-v3-acts.js",
        &[&env.v3_uri(), env.v3.name(), &acts.to_string()],
    );
    assert!(ok, "V3's acts: {report:#}");
    let fork = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|r| r["fork"].as_str())
        .expect("the fork's id")
        .to_string();
    let after_acts = snapshots(&env.v3).await;
    // Sanity: V3 holds what its users did, and the checks find nothing in what the first
    // migration and V3's own stack wrote.
    let v3_edited = [viz(CONTENT_BOTH), viz(EDITED_V3_ONLY)];
    let clean_before = log_problems(&Dump::of(&env.v3).await, &v3_edited, None)
        .into_iter()
        .chain(count_problems(&after_acts))
        .collect::<Vec<_>>();
    assert!(
        clean_before.is_empty(),
        "after V3's acts, before the catch-up: {clean_before:#?}"
    );
    assert!(after_acts[&format!("info/{}", v(DELETED_EDITED))]["_type"].is_null());
    assert_eq!(after_acts[&format!("info/{}", v(TRASHED))]["trashed"], true);
    assert!(after_acts[&format!("user/{GONE}")]["_type"].is_null());

    // 3. V2 changes the same vizzes and others.
    env.wrote_v2().await;
    let w = V2Writer { v2: &env.v2 };
    let mut v2_texts = BTreeMap::new();
    for id in [
        v(DELETED_EDITED),
        v(TRASHED),
        v(PRIVATE),
        v(RETITLED),
        v(CONTENT_BOTH),
        v(V3_UPVOTED),
        v(FORKED_IN_V3),
        v(OWNER_GONE),
        v(V2_EDITED),
        DANGLING.to_string(),
    ] {
        let edit = w.edit_content(&id).await;
        v2_texts.insert(id, edit);
    }
    for i in [
        DELETED_EDITED,
        TRASHED,
        PRIVATE,
        RETITLED,
        TITLE_BOTH,
        COLLABORATOR_REMOVED,
        UPVOTE_WITHDRAWN,
        V3_UPVOTED,
        UPVOTED_BY_GONE,
        V2_UPVOTED,
    ] {
        w.upvote(&v(i), NEW_UPVOTER).await;
    }
    w.upvote(&v(UPVOTED_BY_GONE), GONE).await;
    w.add_collaborator(&v(COLLABORATOR_GONE), GONE).await;
    w.rename(&v(DELETED_RENAMED), "Renamed in V2").await;
    w.rename(&v(TITLE_BOTH), V2_TITLE).await;
    w.rename(&v(V2_EDITED), V2_EDITED_TITLE).await;
    w.rename(PENGUIN, PENGUIN_TITLE).await;
    env.wrote_v2().await;
    env.check_v2().await;
    let sc = Scenario {
        order,
        before_acts,
        after_acts,
        v2_texts,
        fork,
    };

    let base = env.v3.clone();
    let mut problems: Vec<String> = Vec::new();

    // 4A. The catch-up, clean; then once more: a rerun writes nothing.
    env.v3 = copy_db(&env.client, &base, &format!("{}_a", base.name())).await;
    resync_all(&env, &sc, "clean catch-up", &mut problems).await;
    let clean_outcomes = outcomes(&env).await;
    let clean_state = state_of(&env.v3).await;
    problems.extend(check_v3(&env, &sc, "clean catch-up").await);
    resync_all(&env, &sc, "catch-up rerun", &mut problems).await;
    let rerun_state = state_of(&env.v3).await;
    for d in state_diff(&rerun_state, &clean_state) {
        problems.push(format!("catch-up rerun changed V3: {d}"));
    }
    for (id, (o, r)) in outcomes(&env).await {
        let (clean, _) = &clean_outcomes[&id];
        // Done before: unchanged now (or the same outcome again), never a new conflict.
        let same = o == *clean || o == Outcome::Unchanged;
        if !same {
            problems.push(format!(
                "catch-up rerun: {} ends {o:?} ({r:?}), the catch-up ended {clean:?}",
                role(&id)
            ));
        }
    }
    let phase_a = env.v3.clone();
    problems.extend(verify_reports_undone_acts(&mut env, &sc, &phase_a).await);
    eprintln!(
        "clean catch-up checked at {:?}: {} problem(s)",
        started.elapsed(),
        problems.len()
    );

    // 4B. Each job of the catch-up stopped after its n-th write, for every n, from the state the
    // catch-up reached before it, then run again: it ends as its clean run does.
    let progress = copy_db(&env.client, &base, &format!("{}_p", base.name())).await;
    env.v3 = progress.clone();
    let mut stop_points = 0;
    for id in &sc.order {
        // The state the catch-up reached before this job: every stopped run is undone back to it.
        let before = Dump::of(&progress).await;
        let state_before = state(&before);
        let mut resumed = Vec::new();
        let mut clean = None;
        for n in 0..200u64 {
            let m = env.migrator();
            m.v3.stop_after_writes(Some(n));
            match run_job(&m, id).await {
                Err(e) if e.to_string().contains("stopped before a V3 write") => {}
                // The budget outlasted the job (or it failed on its own): every stop point of
                // this job is covered, and this run is its clean run.
                end => {
                    clean = Some(end);
                    break;
                }
            }
            stop_points += 1;
            // A stopped job comes back later (a redelivery takes seconds at least): never in
            // the second it stopped in, so nothing it derives from the clock matches by luck.
            tokio::time::sleep(Duration::from_millis(1005 - (now_ms() % 1000) as u64)).await;
            m.v3.stop_after_writes(None);
            let again = if n % 2 == 0 { env.migrator() } else { m };
            let done = run_job(&again, id).await;
            let now = Dump::of(&progress).await;
            let logs = log_problems(&now, &v3_edited, Some(id));
            resumed.push((n, done, state(&now), logs));
            restore(&progress, &before, &now).await;
            if n == 0 {
                let back = state_of(&progress).await;
                assert!(
                    back == state_before,
                    "restore after a stop of {id}: {:?}",
                    state_diff(&back, &state_before)
                );
            }
        }
        let done = match clean {
            Some(Ok(done)) => done,
            Some(Err(e)) => {
                problems.push(format!("stops: {} fails: {e}", role(id)));
                continue;
            }
            None => panic!("{}: still writing after 200 writes", role(id)),
        };
        let now = Dump::of(&progress).await;
        let clean_state = state(&now);
        // Problems a clean run of this job leaves too are the clean catch-up's, reported there.
        let clean_logs: BTreeSet<String> = log_problems(&now, &v3_edited, Some(id))
            .into_iter()
            .collect();
        for (n, again, state, logs) in resumed {
            let what = format!(
                "stops: {} stopped after write {n}, then run again",
                role(id)
            );
            match again {
                Err(e) => problems.push(format!("{what}: failed: {e}")),
                Ok(a) if a.outcome != done.outcome => problems.push(format!(
                    "{what}: ends {:?} ({}), a clean run {:?} ({})",
                    a.outcome,
                    a.reason.as_deref().unwrap_or(""),
                    done.outcome,
                    done.reason.as_deref().unwrap_or("")
                )),
                Ok(_) => {}
            }
            let diff = state_diff(&state, &clean_state);
            if !diff.is_empty() {
                problems.push(format!(
                    "{what}: V3 differs from a clean run:\n  {}",
                    diff.join("\n  ")
                ));
            }
            problems.extend(
                logs.into_iter()
                    .filter(|l| !clean_logs.contains(l))
                    .map(|l| format!("{what}: {l}")),
            );
        }
    }
    env.v3 = progress.clone();
    let swept = state_of(&progress).await;
    for d in state_diff(&swept, &clean_state) {
        problems.push(format!(
            "stops: the catch-up job by job differs from the clean catch-up: {d}"
        ));
    }
    progress.drop().await.unwrap();
    eprintln!(
        "{stop_points} stop points checked at {:?}: {} problem(s)",
        started.elapsed(),
        problems.len()
    );
    if stop_points < 40 {
        problems.push(format!(
            "stops: the catch-up was stopped at only {stop_points} points"
        ));
    }

    // 4C. Real worker pods: the catch-up (`plan --all --force`) with one pod killed (SIGKILL)
    // mid-run and another finishing.
    env.v3 = copy_db(&env.client, &base, &format!("{}_k", base.name())).await;
    let plan = env.plan(Selection::All.forced()).await;
    assert_eq!(plan.published as usize, sc.order.len());
    let spawn = |env: &TestEnv| {
        env.worker_command()
            .args(["--until-idle", "2", "--concurrency", "4"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("worker binary")
    };
    let mut pod = spawn(&env);
    let deadline = Instant::now() + Duration::from_secs(120);
    let at_kill = loop {
        let done = env
            .records()
            .await
            .iter()
            .filter(|r| r.batch.as_deref() == Some(plan.batch.as_str()))
            .count();
        if done >= 3 {
            break done;
        }
        assert!(Instant::now() < deadline, "the pod made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    pod.kill().unwrap(); // SIGKILL
    pod.wait().unwrap();
    eprintln!(
        "pod killed with {at_kill} of {} jobs recorded",
        sc.order.len()
    );
    let second = spawn(&env);
    let status = tokio::task::spawn_blocking(move || {
        let mut second = second;
        second.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "second pod: {status}");
    env.check_v2().await;
    let dead = env.queue_depth(&env.topology.dead()).await;
    if dead > 0 {
        problems.push(format!("killed pod: {dead} job(s) dead-lettered"));
    }
    for (id, (o, r)) in outcomes(&env).await {
        let clean = &clean_outcomes[&id].0;
        if o != *clean {
            problems.push(format!(
                "killed pod: {} ends {o:?} ({r:?}), the clean catch-up {clean:?}",
                role(&id)
            ));
        }
    }
    let killed = state_of(&env.v3).await;
    for d in state_diff(&killed, &clean_state) {
        problems.push(format!(
            "killed pod: V3 differs from the clean catch-up: {d}"
        ));
    }
    problems.extend(check_v3(&env, &sc, "killed pod").await);
    env.v3.drop().await.unwrap();
    phase_a.drop().await.unwrap();
    eprintln!("done at {:?}", started.elapsed());

    env.v3 = base;
    env.cleanup().await;
    // Long documents are cut: the first 600 characters of a problem say what it is.
    let shown: Vec<String> = problems
        .iter()
        .map(|p| match p.char_indices().nth(600) {
            Some((at, _)) => format!("{}…", &p[..at]),
            None => p.clone(),
        })
        .collect();
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        shown.join("\n")
    );
}
