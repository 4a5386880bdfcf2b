//! The daily catch-up (`planner plan --since-last`, spec 4.1) sees every V2 change, not only
//! those that move a timestamp: V2 leaves `lastUpdatedTimestamp` alone when a viz is made
//! private, loses a collaborator or is viewed. The planner's change detection compares what the
//! translation reads with the ledger and plans exactly the vizzes that differ.

mod common;
#[path = "common/env.rs"]
mod env;

use env::TestEnv;
use mongodb::bson::{doc, Document};
use serde_json::{json, Value};
use vizhub_migrate::planner::Selection;
use vizhub_migrate::verify::{self, Scope};
use vizhub_migrate::{Outcome, PRIMORDIAL_VIZ_ID};

const LOADING_CSV: &str = "3fd333e335fe4ecb9ee0c819802443b7";
const PENGUIN: &str = "a56e821963b849b897dd51db26067db9";
const DANGLING: &str = "366c38ba5ebc4631b4bd936f3b709744";
/// The primordial viz's one collaborator in V2.
const COLLABORATOR: &str = "13540669";
const DAILY: Selection = Selection::SinceLast {
    overlap_secs: 3600,
    settle_secs: 0,
};

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Synthetic vizzes beside the fixtures, forks of the primordial viz created long ago.
fn synthetic(i: i64) -> vizhub_migrate::v2::V2Viz {
    let id = format!("5e1ec7ed{i:024x}");
    common::synthetic_viz(
        &id,
        "68416",
        Some(PRIMORDIAL_VIZ_ID),
        1_600_000_000 + i,
        json!([{"name": "index.html", "text": format!("<p>{i}</p>")}]),
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_run_plans_every_changed_viz_and_only_those() {
    let env = TestEnv::new("daily").await;
    let mut ids = env.load_fixtures(&[]).await;
    let synthetic: Vec<_> = (1..=3).map(synthetic).collect();
    for v in &synthetic {
        env.load_viz(v).await;
        ids.push(v.info["id"].as_str().unwrap().to_string());
    }
    let renamed = ids.last().unwrap().clone();
    let views = env.load_page_views().await;

    // The first daily run takes everything (no high-water mark yet).
    let first = env.plan(DAILY).await;
    assert_eq!(first.published as usize, ids.len());
    env.run_workers(2).await;
    for id in &ids {
        let r = env.record(id).await;
        assert_eq!(r.outcome, Outcome::Migrated, "{id}: {:?}", r.reason);
    }

    // V2 changes four vizzes; three of them without moving any timestamp a window reads.
    env.edit_v2_info(PENGUIN, |i| i["privacy"] = json!("private"))
        .await;
    env.edit_v2_info(PRIMORDIAL_VIZ_ID, |i| i["collaborators"] = json!([]))
        .await;
    let csv_views = vizhub_migrate::v2::pageview_event_id("68416", LOADING_CSV);
    let mut record = views[&csv_views].clone();
    let n = record["all"]["all"].as_i64().unwrap() + 1000;
    record["all"]["all"] = json!(n);
    record["years"]["2021"] = json!(n);
    env.v2
        .collection::<Document>("eventRecords")
        .update_one(
            doc! {"id": &csv_views},
            doc! {"$set": {"all.all": n, "years.2021": n}},
        )
        .await
        .unwrap();
    env.wrote_v2().await;
    // The case a window always saw: a rename re-runs the code, which moves lastUpdatedTimestamp.
    env.edit_v2_info(&renamed, |i| {
        i["title"] = json!("Renamed in V2");
        i["lastUpdatedTimestamp"] = json!(now_secs() - 120);
    })
    .await;

    // The operator's dry run says what would be planned and why.
    let out = env.run_bin(
        env!("CARGO_BIN_EXE_planner"),
        &[
            "plan",
            "--since-last",
            "--settle",
            "0",
            "--dry-run",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dry: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(dry["planned"], 4, "{dry}");
    let why: Vec<(String, Vec<String>)> = dry["detection"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let fields = c["fields"].as_array().unwrap();
            let fields = fields.iter().map(|f| f.as_str().unwrap().to_string());
            (c["viz"].as_str().unwrap().to_string(), fields.collect())
        })
        .collect();
    let want = |v: &str, f: &[&str]| (v.to_string(), f.iter().map(|s| s.to_string()).collect());
    // In creation order (the fixtures from 2018, the synthetic vizzes from 2020).
    assert_eq!(
        why,
        [
            want(PRIMORDIAL_VIZ_ID, &["collaborators"]),
            want(LOADING_CSV, &["pageViews"]),
            want(PENGUIN, &["visibility"]),
            want(&renamed, &["title", "updated"]),
        ],
        "{dry}"
    );
    assert_eq!(
        dry["detection"]["added"], 3,
        "the rename is the window's: {dry}"
    );
    assert!(
        dry["detection"]["v2Queries"].as_u64().unwrap() <= 3,
        "{dry}"
    );

    // The daily run plans exactly those four.
    let daily = env.plan(DAILY).await;
    assert_eq!((daily.planned, daily.published), (4, 4), "{daily:?}");
    env.run_workers(2).await;
    let changed = [PRIMORDIAL_VIZ_ID, LOADING_CSV, PENGUIN, renamed.as_str()];
    for id in &ids {
        let r = env.record(id).await;
        assert_eq!(r.outcome, Outcome::Migrated, "{id}: {:?}", r.reason);
        let batch = if changed.contains(&id.as_str()) {
            &daily.batch
        } else {
            &first.batch
        };
        assert_eq!(r.batch.as_deref(), Some(batch.as_str()), "{id}");
    }
    assert!(!changed.contains(&DANGLING));

    // V3 now shows what V2 shows.
    let info = env.v3_doc("info", PENGUIN).await.unwrap();
    assert_eq!(info["visibility"], "private");
    let permission = format!("{COLLABORATOR}-{PRIMORDIAL_VIZ_ID}");
    let live = env
        .v3_doc("permission", &permission)
        .await
        .is_some_and(|p| !p["_type"].is_null());
    assert!(!live, "the removed collaborator still holds {permission}");
    let analytics = env.v3_doc("analyticsevent", &csv_views).await.unwrap();
    assert_eq!(analytics["intervals"]["all"]["all"], json!(n));
    assert_eq!(
        env.v3_doc("info", &renamed).await.unwrap()["title"],
        "Renamed in V2"
    );
    let report = verify::verify(&env.migrator(), Scope::All, |_, _| {})
        .await
        .unwrap();
    assert!(report.mismatches.is_empty(), "{}", report.render());
    assert_eq!(report.compared as usize, ids.len(), "{}", report.render());

    // Caught up: the next run finds nothing changed.
    let next = env.plan(DAILY).await;
    let d = next.detection.expect("a since-last run detects changes");
    assert!(d.changes.is_empty(), "{:?}", d.changes);
    assert_eq!(d.compared as usize, ids.len());
    env.cleanup().await;
}
