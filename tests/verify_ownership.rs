//! `planner verify` applies the rules of spec 3.4 ("V3 owns what its users did"): after a
//! migration, V3's users act on the migrated vizzes (written as sharedb-mongo writes a ShareDB
//! client's op: the op with the client's own `src`, then the snapshot at the next version), and
//! verify finds nothing wrong; then the migration's old merge is put back (ops of ours, `src:
//! "vizhub-migrate"`, that undo each act) and verify names every undone act; and a stray op of
//! ours (an orphan, an op that changes nothing) is an op-log mismatch.

mod common;
#[path = "common/env.rs"]
mod env;

use env::TestEnv;
use mongodb::bson::{self, doc, oid::ObjectId, Bson, Document};
use serde_json::{json, Value};
use vizhub_migrate::json1;
use vizhub_migrate::v3::store::OP_SRC;
use vizhub_migrate::verify::{self, Report, Scope};
use vizhub_migrate::PRIMORDIAL_VIZ_ID;

const LOADING_CSV: &str = "3fd333e335fe4ecb9ee0c819802443b7";
const PENGUIN: &str = "a56e821963b849b897dd51db26067db9";
const DANGLING: &str = "366c38ba5ebc4631b4bd936f3b709744";
/// A ShareDB connection id, as V3's clients write in `src`.
const V3_SRC: &str = "c7f3a1e2d4b5";
/// A V2 user whose V3 account is deleted.
const LEAVER: &str = "990000001";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A synthetic viz beside the fixtures: a fork of the primordial viz.
fn synthetic(i: i64, owner: &str) -> vizhub_migrate::v2::V2Viz {
    let id = format!("0e1ec7ed{i:024x}");
    common::synthetic_viz(
        &id,
        owner,
        Some(PRIMORDIAL_VIZ_ID),
        1_600_000_000 + i,
        json!([{"name": "index.html", "text": format!("<p>{i}</p>")}]),
        &[],
    )
}

/// What a write does to a doc.
enum Write {
    Op(Value),
    Create(Value),
    Del,
}

/// Submit `write` to `collection/id` as sharedb-mongo commits an op of `src`: the op at the
/// snapshot's version, linked (`o`) to the snapshot's newest op, then the snapshot at the next
/// version. `link: false` inserts the op only (an orphan: a write whose snapshot update never
/// happened). Returns the op's version.
async fn submit(
    env: &TestEnv,
    collection: &str,
    id: &str,
    src: &str,
    write: Write,
    link: bool,
) -> i64 {
    let snaps = env.v3.collection::<Document>(collection);
    let snap = snaps
        .find_one(doc! {"_id": id})
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{collection}/{id} in V3"));
    let v = match snap.get("_v") {
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(Bson::Int64(v)) => *v,
        other => panic!("{collection}/{id} _v {other:?}"),
    };
    let mut payload = snap.clone();
    for k in ["_id", "_type", "_v", "_m", "_o"] {
        payload.remove(k);
    }
    let payload = Bson::Document(payload).into_relaxed_extjson();
    let (body, next) = match write {
        Write::Op(op) => {
            let next = json1::apply(payload, &op).unwrap();
            (doc! {"op": bson::to_bson(&op).unwrap()}, Some(next))
        }
        Write::Create(data) => (
            doc! {"create": {"type": "p", "data": bson::to_bson(&data).unwrap()}},
            Some(data),
        ),
        Write::Del => (doc! {"del": true}, None),
    };
    let oid = ObjectId::new();
    let ts = now_ms();
    let mut op = doc! {"_id": oid, "src": src, "seq": v + 1, "v": v};
    op.extend(body);
    op.extend(doc! {"m": {"ts": ts}, "c": collection, "d": id, "o": snap.get("_o").cloned().unwrap_or(Bson::Null)});
    env.v3
        .collection::<Document>(&format!("o_{collection}"))
        .insert_one(op)
        .await
        .unwrap();
    if link {
        let ctime = snap
            .get_document("_m")
            .ok()
            .and_then(|m| m.get("ctime").cloned())
            .unwrap_or(Bson::Int64(ts));
        let mut new = doc! {
            "_id": id,
            "_type": if next.is_some() { Bson::String("p".into()) } else { Bson::Null },
            "_v": v + 1,
            "_m": {"ctime": ctime, "mtime": ts},
            "_o": oid,
        };
        if let Some(next) = next {
            new.extend(bson::to_document(&next).unwrap());
        }
        let res = snaps
            .replace_one(doc! {"_id": id, "_v": v}, new)
            .await
            .unwrap();
        assert_eq!(res.matched_count, 1, "{collection}/{id} moved on");
    }
    v
}

/// A top-level field set to `value` (json1 replace, or insert when absent).
fn set(env_payload: &Value, field: &str, value: Value) -> Value {
    if env_payload.get(field).is_some() {
        json1::replace(&[field], value)
    } else {
        json1::insert(&[field], value)
    }
}

async fn payload(env: &TestEnv, collection: &str, id: &str) -> Value {
    env.v3_doc(collection, id)
        .await
        .unwrap_or_else(|| panic!("{collection}/{id}"))
}

/// A doc's payload as it was created (its `v0` op's data), for a re-create of ours.
async fn created_as(env: &TestEnv, collection: &str, id: &str) -> Value {
    let op = env
        .v3
        .collection::<Document>(&format!("o_{collection}"))
        .find_one(doc! {"d": id, "v": 0})
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{collection}/{id} v0"));
    Bson::Document(
        op.get_document("create")
            .unwrap()
            .get_document("data")
            .unwrap()
            .clone(),
    )
    .into_relaxed_extjson()
}

async fn verify_all(env: &TestEnv) -> Report {
    verify::verify(&env.migrator(), Scope::All, |_, _| {})
        .await
        .unwrap()
}

fn of<'r>(report: &'r Report, category: &str) -> Vec<(&'r str, &'r str)> {
    report
        .mismatches
        .iter()
        .filter(|m| m.category == category)
        .map(|m| (m.viz.as_str(), m.detail.as_str()))
        .collect()
}

/// `report` has a mismatch of `category` on `viz` whose detail contains every one of `parts`.
fn has(report: &Report, category: &str, viz: &str, parts: &[&str]) {
    assert!(
        of(report, category)
            .iter()
            .any(|(v, d)| *v == viz && parts.iter().all(|p| d.contains(p))),
        "no {category} mismatch on {viz} with {parts:?}:\n{}",
        report.render()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_acts_are_v3s_and_undoing_them_is_a_mismatch() {
    let env = TestEnv::new("verify_ownership").await;
    let mut ids = env.load_fixtures(&[]).await;
    let doomed = synthetic(1, "68416");
    let orphaned = synthetic(2, LEAVER);
    env.insert_v2("user", vec![common::v2_user(LEAVER)]).await;
    for v in [&doomed, &orphaned] {
        env.load_viz(v).await;
        ids.push(v.info["id"].as_str().unwrap().to_string());
    }
    let (doomed, orphaned) = (ids[ids.len() - 2].clone(), ids[ids.len() - 1].clone());
    let m = env.migrator();
    for id in &ids {
        m.migrate(id, None).await.unwrap();
    }
    let first = verify_all(&env).await;
    assert!(first.mismatches.is_empty(), "{}", first.render());
    assert_eq!(first.compared as usize, ids.len());

    // V3's users act.
    let info = payload(&env, "info", LOADING_CSV).await;
    let v2_title = info["title"].clone();
    submit(
        &env,
        "info",
        LOADING_CSV,
        V3_SRC,
        Write::Op(set(&info, "title", json!("Loading CSV, renamed in V3"))),
        true,
    )
    .await;
    let info = payload(&env, "info", PENGUIN).await;
    submit(
        &env,
        "info",
        PENGUIN,
        V3_SRC,
        Write::Op(set(&info, "visibility", json!("private"))),
        true,
    )
    .await;
    let info = payload(&env, "info", DANGLING).await;
    submit(
        &env,
        "info",
        DANGLING,
        V3_SRC,
        Write::Op(set(&info, "trashed", json!(true))),
        true,
    )
    .await;
    for collection in ["info", "content"] {
        submit(&env, collection, &doomed, V3_SRC, Write::Del, true).await;
    }
    // V3 recounts the parent's forks in the same act.
    let info = payload(&env, "info", PRIMORDIAL_VIZ_ID).await;
    let forks = info["forksCount"].as_i64().unwrap();
    submit(
        &env,
        "info",
        PRIMORDIAL_VIZ_ID,
        V3_SRC,
        Write::Op(set(&info, "forksCount", json!(forks - 1))),
        true,
    )
    .await;
    // An upvote withdrawn (V3 recounts the viz's upvotes in the same act).
    let upvote = env
        .v3_docs("upvote")
        .await
        .into_iter()
        .find(|u| u["viz"] == PRIMORDIAL_VIZ_ID)
        .expect("a migrated upvote of the primordial viz");
    let upvote = upvote["id"].as_str().unwrap().to_string();
    submit(&env, "upvote", &upvote, V3_SRC, Write::Del, true).await;
    let info = payload(&env, "info", PRIMORDIAL_VIZ_ID).await;
    let upvotes = info["upvotesCount"].as_i64().unwrap();
    submit(
        &env,
        "info",
        PRIMORDIAL_VIZ_ID,
        V3_SRC,
        Write::Op(set(&info, "upvotesCount", json!(upvotes - 1))),
        true,
    )
    .await;
    // A collaborator removed.
    let permission = env
        .v3_docs("permission")
        .await
        .into_iter()
        .find(|p| p["resource"] == PRIMORDIAL_VIZ_ID)
        .expect("the primordial viz's migrated collaborator");
    let permission = permission["id"].as_str().unwrap().to_string();
    submit(&env, "permission", &permission, V3_SRC, Write::Del, true).await;
    // An account deleted.
    submit(&env, "user", LEAVER, V3_SRC, Write::Del, true).await;

    let acted = verify_all(&env).await;
    assert!(acted.mismatches.is_empty(), "{}", acted.render());
    assert_eq!(
        acted.expected_outcomes.get("deleted-in-v3"),
        Some(&1),
        "{}",
        acted.render()
    );
    assert_eq!(
        acted.expected_outcomes.get("owner-deleted-in-v3"),
        Some(&1),
        "{}",
        acted.render()
    );
    assert_eq!(acted.v3_owned.get("title"), Some(&1), "{}", acted.render());
    assert_eq!(
        acted.v3_owned.get("visibility"),
        Some(&1),
        "{}",
        acted.render()
    );
    assert!(acted
        .render()
        .ends_with(&format!("verified {} vizzes, 0 mismatches", ids.len() - 2)));

    // The old merge put back: ops of ours that undo every act.
    let info = payload(&env, "info", LOADING_CSV).await;
    submit(
        &env,
        "info",
        LOADING_CSV,
        OP_SRC,
        Write::Op(set(&info, "title", v2_title)),
        true,
    )
    .await;
    let info = payload(&env, "info", PENGUIN).await;
    submit(
        &env,
        "info",
        PENGUIN,
        OP_SRC,
        Write::Op(set(&info, "visibility", json!("public"))),
        true,
    )
    .await;
    submit(
        &env,
        "info",
        DANGLING,
        OP_SRC,
        Write::Op(json1::remove(&["trashed"])),
        true,
    )
    .await;
    for collection in ["info", "content"] {
        let data = created_as(&env, collection, &doomed).await;
        submit(&env, collection, &doomed, OP_SRC, Write::Create(data), true).await;
    }
    let data = created_as(&env, "upvote", &upvote).await;
    submit(&env, "upvote", &upvote, OP_SRC, Write::Create(data), true).await;
    let recount = json!([["forksCount", {"r": true, "i": forks}], ["upvotesCount", {"r": true, "i": upvotes}]]);
    submit(
        &env,
        "info",
        PRIMORDIAL_VIZ_ID,
        OP_SRC,
        Write::Op(recount),
        true,
    )
    .await;
    let data = created_as(&env, "permission", &permission).await;
    submit(
        &env,
        "permission",
        &permission,
        OP_SRC,
        Write::Create(data),
        true,
    )
    .await;
    let data = created_as(&env, "user", LEAVER).await;
    submit(&env, "user", LEAVER, OP_SRC, Write::Create(data), true).await;

    let undone = verify_all(&env).await;
    has(
        &undone,
        "undone",
        LOADING_CSV,
        &[&format!("info/{LOADING_CSV}"), "overwrites title"],
    );
    has(&undone, "undone", PENGUIN, &["overwrites visibility"]);
    has(&undone, "undone", DANGLING, &["overwrites trashed"]);
    has(
        &undone,
        "undone",
        &doomed,
        &[
            &format!("info/{doomed}"),
            "re-creates it after V3 deleted it",
        ],
    );
    has(
        &undone,
        "undone",
        &doomed,
        &[
            &format!("content/{doomed}"),
            "re-creates it after V3 deleted it",
        ],
    );
    has(
        &undone,
        "undone",
        PRIMORDIAL_VIZ_ID,
        &[&format!("upvote/{upvote}"), "re-creates"],
    );
    has(
        &undone,
        "undone",
        &orphaned,
        &[&format!("user/{LEAVER}"), "re-creates"],
    );
    has(
        &undone,
        "undone",
        PRIMORDIAL_VIZ_ID,
        &[&format!("permission/{permission}"), "re-creates"],
    );
    has(
        &undone,
        "undone",
        LOADING_CSV,
        &[r#"title "Loading CSV, renamed in V3" → "#],
    );
    // The counts are recounted by the migration: putting them back is no undo.
    assert!(
        !of(&undone, "undone")
            .iter()
            .any(|(_, d)| d.contains("Count")),
        "{}",
        undone.render()
    );
    assert_eq!(
        undone.by_category.get("undone"),
        Some(&8),
        "{}",
        undone.render()
    );
    assert_eq!(undone.mismatches.len(), 8, "{}", undone.render());

    // Stray ops of ours: one that only moves migratedTimestamp, and an orphan past the snapshot.
    let info = payload(&env, "info", PENGUIN).await;
    let stamp = info["migratedTimestamp"].as_i64().unwrap();
    let v = submit(
        &env,
        "info",
        PENGUIN,
        OP_SRC,
        Write::Op(set(&info, "migratedTimestamp", json!(stamp + 1))),
        true,
    )
    .await;
    let content = payload(&env, "content", LOADING_CSV).await;
    let orphan = submit(
        &env,
        "content",
        LOADING_CSV,
        OP_SRC,
        Write::Op(set(&content, "height", json!(501))),
        false,
    )
    .await;
    let stray = verify_all(&env).await;
    has(
        &stray,
        "oplog",
        PENGUIN,
        &[
            &format!("info/{PENGUIN}"),
            &format!("op v{v} of ours only moves migratedTimestamp"),
        ],
    );
    has(
        &stray,
        "oplog",
        LOADING_CSV,
        &[
            &format!("content/{LOADING_CSV}"),
            &format!("at v{orphan}"),
            "orphan",
        ],
    );
    assert_eq!(
        stray.by_category.get("oplog"),
        Some(&2),
        "{}",
        stray.render()
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_v3_edited_is_v3s_and_an_info_base_decides_ownership() {
    let env = TestEnv::new("verify_content_v3").await;
    let ids = env.load_fixtures(&[]).await;
    let m = env.migrator();
    for id in &ids {
        m.migrate(id, None).await.unwrap();
    }
    // V3 edits Penguin's content (not committed yet: content no longer equals the replay of
    // info.end) and retitles it in V3.
    let content = payload(&env, "content", PENGUIN).await;
    submit(
        &env,
        "content",
        PENGUIN,
        V3_SRC,
        Write::Op(set(&content, "height", json!(777))),
        true,
    )
    .await;
    let info = payload(&env, "info", PENGUIN).await;
    submit(
        &env,
        "info",
        PENGUIN,
        V3_SRC,
        Write::Op(set(&info, "title", json!("Mine now"))),
        true,
    )
    .await;
    let report = verify_all(&env).await;
    assert!(report.mismatches.is_empty(), "{}", report.render());
    assert_eq!(
        report.v3_owned.get("content"),
        Some(&1),
        "{}",
        report.render()
    );
    assert_eq!(
        report.v3_owned.get("title"),
        Some(&1),
        "{}",
        report.render()
    );

    // A title our own op wrote that differs from V2 is a mismatch, not V3's.
    let info = payload(&env, "info", LOADING_CSV).await;
    submit(
        &env,
        "info",
        LOADING_CSV,
        OP_SRC,
        Write::Op(set(&info, "title", json!("Wrong"))),
        true,
    )
    .await;
    let report = verify_all(&env).await;
    has(&report, "info", LOADING_CSV, &["title: expected"]);
    assert!(of(&report, "undone").is_empty(), "{}", report.render());
    env.cleanup().await;
}

/// An upvote V3 removed comes back when V2 gave it again after the removal: until it is back it
/// is missing, and the migration's re-create is no undo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upvote_given_again_in_v2_after_v3_removed_it_must_be_back() {
    let env = TestEnv::new("verify_upvote_again").await;
    let ids = env.load_fixtures(&[]).await;
    let m = env.migrator();
    for id in &ids {
        m.migrate(id, None).await.unwrap();
    }
    let upvote = env
        .v3_docs("upvote")
        .await
        .into_iter()
        .find(|u| u["viz"] == PRIMORDIAL_VIZ_ID)
        .expect("a migrated upvote of the primordial viz");
    let (id, user) = (
        upvote["id"].as_str().unwrap(),
        upvote["user"].as_str().unwrap(),
    );
    submit(&env, "upvote", id, V3_SRC, Write::Del, true).await;
    let info = payload(&env, "info", PRIMORDIAL_VIZ_ID).await;
    let upvotes = info["upvotesCount"].as_i64().unwrap();
    submit(
        &env,
        "info",
        PRIMORDIAL_VIZ_ID,
        V3_SRC,
        Write::Op(set(&info, "upvotesCount", json!(upvotes - 1))),
        true,
    )
    .await;
    let report = verify_all(&env).await;
    assert!(report.mismatches.is_empty(), "{}", report.render());

    // V2's user upvotes again, after the removal.
    let again = now_ms() / 1000 + 60;
    let v2 = env
        .v2
        .collection::<Document>("documentInfo")
        .find_one(doc! {"_id": PRIMORDIAL_VIZ_ID})
        .await
        .unwrap()
        .unwrap();
    let mut entries = v2.get_array("upvotes").unwrap().clone();
    for e in entries.iter_mut() {
        let e = e.as_document_mut().unwrap();
        if e.get_str("userId") == Ok(user) {
            e.insert("timestamp", again);
        }
    }
    env.v2
        .collection::<Document>("documentInfo")
        .update_one(
            doc! {"_id": PRIMORDIAL_VIZ_ID},
            doc! {"$set": {"upvotes": entries}},
        )
        .await
        .unwrap();
    env.wrote_v2().await;
    let report = verify_all(&env).await;
    has(&report, "upvotes", PRIMORDIAL_VIZ_ID, &[id]);

    // The migration brings it back: no undo, nothing missing.
    let mut data = created_as(&env, "upvote", id).await;
    data["timestamp"] = json!(again);
    submit(&env, "upvote", id, OP_SRC, Write::Create(data), true).await;
    let info = payload(&env, "info", PRIMORDIAL_VIZ_ID).await;
    submit(
        &env,
        "info",
        PRIMORDIAL_VIZ_ID,
        OP_SRC,
        Write::Op(set(&info, "upvotesCount", json!(upvotes))),
        true,
    )
    .await;
    let report = verify_all(&env).await;
    assert!(report.mismatches.is_empty(), "{}", report.render());
    env.cleanup().await;
}

/// Verify agrees with the re-sync: V3's users act, V2 changes the same vizzes, the re-sync runs,
/// and verify finds nothing undone and no mismatch (V2's changes landed where V3 did not act).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_agrees_with_the_resync_after_v3_acts() {
    let env = TestEnv::new("verify_resync").await;
    let mut ids = env.load_fixtures(&[]).await;
    let doomed = synthetic(3, "68416");
    env.load_viz(&doomed).await;
    let doomed = doomed.info["id"].as_str().unwrap().to_string();
    ids.push(doomed.clone());
    let m = env.migrator();
    for id in &ids {
        m.migrate(id, None).await.unwrap();
    }
    // V3: Penguin made private, Dangling trashed, Loading CSV retitled, the synthetic viz
    // deleted (and its parent's forks recounted).
    let info = payload(&env, "info", PENGUIN).await;
    submit(
        &env,
        "info",
        PENGUIN,
        V3_SRC,
        Write::Op(set(&info, "visibility", json!("private"))),
        true,
    )
    .await;
    let info = payload(&env, "info", DANGLING).await;
    submit(
        &env,
        "info",
        DANGLING,
        V3_SRC,
        Write::Op(set(&info, "trashed", json!(true))),
        true,
    )
    .await;
    let info = payload(&env, "info", LOADING_CSV).await;
    submit(
        &env,
        "info",
        LOADING_CSV,
        V3_SRC,
        Write::Op(set(&info, "title", json!("Renamed in V3"))),
        true,
    )
    .await;
    for collection in ["info", "content"] {
        submit(&env, collection, &doomed, V3_SRC, Write::Del, true).await;
    }
    let info = payload(&env, "info", PRIMORDIAL_VIZ_ID).await;
    let forks = info["forksCount"].as_i64().unwrap();
    submit(
        &env,
        "info",
        PRIMORDIAL_VIZ_ID,
        V3_SRC,
        Write::Op(set(&info, "forksCount", json!(forks - 1))),
        true,
    )
    .await;
    // V2: every one of them retitled (Loading CSV's conflicts with V3's title).
    for id in [PENGUIN, DANGLING, LOADING_CSV, doomed.as_str()] {
        env.v2
            .collection::<Document>("documentInfo")
            .update_one(
                doc! {"_id": id},
                doc! {"$set": {"title": format!("V2 title of {id}")}},
            )
            .await
            .unwrap();
    }
    env.wrote_v2().await;
    for id in &ids {
        m.migrate(id, None).await.unwrap();
    }
    let report = verify_all(&env).await;
    assert!(report.mismatches.is_empty(), "{}", report.render());
    assert_eq!(
        report.expected_outcomes.get("deleted-in-v3"),
        Some(&1),
        "{}",
        report.render()
    );
    assert_eq!(
        report.expected_outcomes.get("conflict"),
        Some(&1),
        "{}",
        report.render()
    );
    assert_eq!(
        report.v3_owned.get("visibility"),
        Some(&1),
        "{}",
        report.render()
    );
    // V2's title landed where V3 did not retitle.
    assert_eq!(
        payload(&env, "info", PENGUIN).await["title"],
        json!(format!("V2 title of {PENGUIN}"))
    );
    assert_eq!(
        payload(&env, "info", DANGLING).await["trashed"],
        json!(true)
    );
    env.cleanup().await;
}
