//! The fleet the way production runs it: V2 live and being edited *during* the run (an in-test
//! writer that writes as sharedb-mongo does — the op first, then the snapshot — and now and
//! then leaves an orphan op, as a failed commit does), page views still counted in V2, a hot
//! parent with dozens of forks and chains of forks migrating their parents on demand, and worker
//! pods killed with SIGKILL at moments of the run. The daily catch-up then re-plans what changed,
//! and `planner verify`, comparing values, finds V3 equal to what a clean run of V2 as it is now
//! gives; every page view is counted once and no linked op log fell back to a two-commit history.

mod common;
#[path = "common/env.rs"]
mod env;

use env::TestEnv;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use mongodb::Database;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vizhub_migrate::planner::Selection;
use vizhub_migrate::verify::{self, Scope};
use vizhub_migrate::{Outcome, PRIMORDIAL_VIZ_ID};

const JSON0: &str = "http://sharejs.org/types/JSONv0";
const LOADING_CSV: &str = "3fd333e335fe4ecb9ee0c819802443b7";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A V2 viz whose whole history is in its op log, linked the way sharedb-mongo links it: a
/// `create` at v0, then `edits` text inserts, each op naming the one before (`o`), the snapshot
/// naming the last (`_o`). Returns `[info, content]` and the ops, as BSON (real ObjectIds).
fn linked_viz(
    id: &str,
    parent: &str,
    created: i64,
    edits: i64,
) -> (Document, Document, Vec<Document>) {
    let mut text = String::from("<p>start 🐧</p>\n");
    let files = |text: &str| {
        vec![
            Bson::Document(doc! {"name": "index.html", "text": text}),
            Bson::Document(doc! {"name": "bundle.js", "text": "/* built */"}),
        ]
    };
    let create_id = ObjectId::new();
    let mut ops = vec![doc! {
        "_id": create_id, "src": "seed", "seq": 1, "v": 0_i64, "d": id, "o": Bson::Null,
        "create": {"type": JSON0, "data": {"id": id, "documentType": "visualization", "files": files(&text)}},
        "m": {"ts": created * 1000},
    }];
    let mut prev = create_id;
    for k in 1..=edits {
        let op_id = ObjectId::new();
        let insert = format!("<!-- {k} -->\n");
        ops.push(doc! {
            "_id": op_id, "src": "seed", "seq": k + 1, "v": k, "d": id, "o": prev,
            "op": [{"p": ["files", 0, "text", 0], "si": &insert}],
            // Two editing sessions: an idle gap of a day after the first half.
            "m": {"ts": (created + k * 60 + if k > edits / 2 { 86_400 } else { 0 }) * 1000},
        });
        text.insert_str(0, &insert);
        prev = op_id;
    }
    let updated = created + edits * 60 + 86_400;
    let content = doc! {
        "_id": id, "id": id, "documentType": "visualization", "files": files(&text),
        "_type": JSON0, "_v": edits + 1, "_o": prev, "_m": {"ctime": created * 1000, "mtime": updated * 1000},
    };
    let info = doc! {
        "_id": id, "id": id, "documentType": "visualization", "owner": "68416",
        "title": format!("Live {id}"), "createdTimestamp": created, "lastUpdatedTimestamp": updated,
        "forkedFrom": parent, "height": 500, "_type": JSON0, "_v": 3_i64,
        "_m": {"ctime": created * 1000, "mtime": updated * 1000},
    };
    (info, content, ops)
}

/// One V2 edit as sharedb-mongo commits it: the op (linked to the snapshot's `_o`) first, then
/// the snapshot, conditional on its version; with `orphan`, a losing writer's op at the same
/// version first (never applied). The info's `lastUpdatedTimestamp` moves on (as V2 did when
/// code was re-run) and one more page view is counted.
async fn live_edit(v2: &Database, viz: &str, k: u64, orphan: bool) {
    let contents = v2.collection::<Document>("documentContent");
    let ops = v2.collection::<Document>("o_documentContent");
    let Some(snap) = contents.find_one(doc! {"_id": viz}).await.unwrap() else {
        return;
    };
    let v = match snap.get("_v") {
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Double(v)) => *v as i64,
        _ => return,
    };
    let link = snap.get("_o").cloned().unwrap_or(Bson::Null);
    let Ok(files) = snap.get_array("files") else {
        return;
    };
    let Some(text) = files
        .first()
        .and_then(Bson::as_document)
        .and_then(|f| f.get_str("text").ok())
    else {
        return;
    };
    let ts = now_ms();
    let op = |id: ObjectId, src: &str, insert: &str| {
        doc! {"_id": id, "src": src, "seq": k as i64, "v": v, "d": viz, "o": link.clone(),
        "op": [{"p": ["files", 0, "text", 0], "si": insert}], "m": {"ts": ts}}
    };
    if orphan {
        ops.insert_one(op(ObjectId::new(), "lost", "<!-- lost -->"))
            .await
            .unwrap();
    }
    let insert = format!("<!-- live {k} -->\n");
    let id = ObjectId::new();
    ops.insert_one(op(id, "v2-browser", &insert)).await.unwrap();
    contents
        .update_one(
            doc! {"_id": viz, "_v": snap.get("_v").cloned().unwrap()},
            doc! {"$set": {"files.0.text": format!("{insert}{text}"), "_v": v + 1, "_o": id, "_m.mtime": ts}},
        )
        .await
        .unwrap();
    v2.collection::<Document>("documentInfo")
        .update_one(
            doc! {"_id": viz},
            doc! {"$set": {"lastUpdatedTimestamp": ts / 1000}},
        )
        .await
        .unwrap();
    let owner = v2
        .collection::<Document>("documentInfo")
        .find_one(doc! {"_id": viz})
        .await
        .unwrap()
        .and_then(|i| i.get_str("owner").ok().map(str::to_string))
        .unwrap_or_default();
    v2.collection::<Document>("eventRecords")
        .update_one(
            doc! {"id": vizhub_migrate::v2::pageview_event_id(&owner, viz)},
            doc! {"$inc": {"all.all": 1, "days.2021-03-02": 1, "months.2021-03": 1, "years.2021": 1}},
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_edits_racing_jobs_and_killed_pods_leave_v3_as_a_clean_run() {
    let env = TestEnv::new("live").await;
    let mut ids = env.load_fixtures(&[]).await;
    let mut linked = Vec::new();
    // A hot parent: 45 forks of the primordial viz; 15 forks of those (chains).
    let base = 1_600_000_000;
    let id = |n: i64| format!("{:032x}", 0x11fe_0000 + n);
    for n in 0..60 {
        let parent = if n < 45 {
            PRIMORDIAL_VIZ_ID.to_string()
        } else {
            id(n - 45)
        };
        let (info, content, ops) = linked_viz(&id(n), &parent, base + n * 10, 6);
        env.wrote_v2().await;
        env.v2
            .collection::<Document>("documentInfo")
            .insert_one(info)
            .await
            .unwrap();
        env.v2
            .collection::<Document>("documentContent")
            .insert_one(content)
            .await
            .unwrap();
        env.v2
            .collection::<Document>("o_documentContent")
            .insert_many(ops)
            .await
            .unwrap();
        ids.push(id(n));
        linked.push(id(n));
    }
    let views = env.load_page_views().await;
    assert_eq!(views.len(), ids.len());
    let t0 = now_ms() / 1000;
    let planned = env.plan(Selection::All).await;
    assert_eq!(planned.published as usize, ids.len());

    // The live writer: edits a viz every few ms (the primordial viz with its 372-op log among
    // them), one in four with an orphan op before it, until the workers are done.
    let stop = Arc::new(AtomicBool::new(false));
    let edits = Arc::new(AtomicU64::new(0));
    env.wrote_v2().await;
    let writer = {
        let (v2, stop, edits) = (env.v2.clone(), stop.clone(), edits.clone());
        let mut targets: Vec<String> = (0..60).step_by(3).map(id).collect();
        targets.extend([PRIMORDIAL_VIZ_ID.to_string(), LOADING_CSV.to_string()]);
        tokio::spawn(async move {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                // A fixed pseudo-random walk over the targets (reproducible).
                let viz = &targets[(k.wrapping_mul(2_654_435_761) % targets.len() as u64) as usize];
                live_edit(&v2, viz, k, k.is_multiple_of(4)).await;
                edits.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };

    // Two pods; one is killed with SIGKILL each time the ledger reaches a mark (whatever it was
    // doing then) and replaced.
    let spawn = |env: &TestEnv| {
        env.worker_command()
            .args([
                "--until-idle",
                "2",
                "--concurrency",
                "4",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .spawn()
            .expect("worker binary")
    };
    let mut pods = vec![spawn(&env), spawn(&env)];
    let deadline = Instant::now() + Duration::from_secs(240);
    for (k, mark) in [6usize, 18, 30, 42].into_iter().enumerate() {
        while env.records().await.len() < mark {
            assert!(Instant::now() < deadline, "no progress to {mark}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let victim = &mut pods[k % 2];
        victim.kill().unwrap(); // SIGKILL
        victim.wait().unwrap();
        pods[k % 2] = spawn(&env);
    }
    let pods = tokio::task::spawn_blocking(move || {
        pods.into_iter()
            .map(|mut p| p.wait().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(pods.iter().all(|s| s.success()), "{pods:?}");
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let edits = edits.load(Ordering::Relaxed);
    assert!(edits > 20, "only {edits} live edits");
    env.wrote_v2().await;

    // The daily catch-up: what changed since the run began is planned again and migrated.
    let replanned = env
        .plan(Selection::Window {
            from: t0,
            to: now_ms() / 1000 + 1,
        })
        .await;
    assert!(replanned.published > 0);
    env.run_workers(2).await;

    let records = env.records().await;
    assert_eq!(records.len(), ids.len(), "one ledger record per viz");
    for r in &records {
        assert!(
            matches!(r.outcome, Outcome::Migrated | Outcome::Unchanged),
            "{}: {:?} {:?}",
            r.viz,
            r.outcome,
            r.reason
        );
        // Every op log here is linked (the live vizzes' from their create, the primordial's
        // from v111): none may fall back to a two-commit history, first run or re-sync.
        let history = r.migrated.as_ref().map_or("", |m| m.history.as_str());
        if r.viz == PRIMORDIAL_VIZ_ID || linked.contains(&r.viz) {
            assert!(
                history.starts_with("replayed"),
                "{}: a linked op log fell back: {history}",
                r.viz
            );
        }
    }
    assert_eq!(env.queue_depth(&env.topology.dead()).await, 0);
    let state = env.v3_state().await;
    let views_now: std::collections::BTreeMap<String, Value> = env
        .v2_docs("eventRecords")
        .await
        .into_iter()
        .map(|d| (d["id"].as_str().unwrap().to_string(), d))
        .collect();
    TestEnv::assert_views_equal_v2(&state, &views_now, &ids);
    let report = verify::verify(&env.migrator(), Scope::All, |_, _| {})
        .await
        .unwrap();
    assert!(report.mismatches.is_empty(), "{}", report.render());
    assert_eq!(report.compared as usize, ids.len(), "{}", report.render());
    assert_eq!(
        state[&format!("info/{PRIMORDIAL_VIZ_ID}")]["forksCount"],
        47,
        "Loading CSV, the dangling-parent fixture and 45 live forks"
    );
    env.cleanup().await;
}
