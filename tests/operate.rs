//! Operating the migration through the real `planner` binary: `status --json` and `verify`
//! (passes after a clean run, catches a corrupted V3 doc, refuses to pass having compared nothing).

mod common;
#[path = "common/env.rs"]
mod env;

use env::{json_stdout, TestEnv};
use serde_json::{json, Value};
use std::process::Output;
use vizhub_migrate::planner::Selection;

const PENGUIN: &str = "a56e821963b849b897dd51db26067db9";
const LOADING_CSV: &str = "3fd333e335fe4ecb9ee0c819802443b7";

impl TestEnv {
    fn planner(&self, args: &[&str]) -> Output {
        self.run_bin(env!("CARGO_BIN_EXE_planner"), args)
    }

    /// Fixtures plus one tombstone (skipped) and one viz without content (dead-lettered).
    async fn migrated_world(&self) -> Vec<String> {
        let ids = self.load_fixtures(&[]).await;
        let mk = |n: u32| {
            common::synthetic_viz(
                &format!("{n:032x}"),
                "68416",
                Some(LOADING_CSV),
                1_550_000_000,
                json!([{"name": "index.html", "text": "ok"}]),
                &[],
            )
        };
        let mut tombstone = mk(0x21);
        tombstone.info = json!({"_id": format!("{:032x}", 0x21), "_type": null, "_v": 3});
        let mut no_content = mk(0x22);
        no_content.content = None;
        self.load_viz(&tombstone).await;
        self.load_viz(&no_content).await;
        self.plan(Selection::All).await;
        self.run_workers(2).await;
        ids
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_after_a_run_then_catches_a_corrupted_v3_doc() {
    let env = TestEnv::new("verify").await;
    let ids = env.migrated_world().await;
    let v2_before = env.hash(&env.v2).await;

    let out = env.planner(&["verify", "--all", "--json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(report["compared"], ids.len(), "{report:#}");
    assert_eq!(report["inScope"], ids.len() + 2);
    assert_eq!(
        report["expectedOutcomes"],
        json!({"failed": 1, "skipped": 1})
    );
    assert_eq!(report["mismatches"], json!([]));

    // Someone (or a bug) changes V3 behind the migration's back.
    let content = env.v3.collection::<mongodb::bson::Document>("content");
    content
        .update_one(
            mongodb::bson::doc! {"_id": PENGUIN},
            mongodb::bson::doc! {"$set": {"title": "Not the penguin"}},
        )
        .await
        .unwrap();
    let out = env.planner(&["verify", "--all"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.trim_end()
            .ends_with(&format!("verified {} vizzes, 2 mismatches", ids.len())),
        "{text}"
    );
    assert!(
        text.contains(&format!("mismatch content: 1\n  {PENGUIN}: title")),
        "{text}"
    );
    assert!(text.contains("mismatch history: 1"), "{text}");

    let out = env.planner(&["verify", "--all", "--json"]);
    let report = json_stdout(&out);
    let categories: Vec<(&str, &str)> = report["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["viz"].as_str().unwrap(), m["category"].as_str().unwrap()))
        .collect();
    assert_eq!(
        categories,
        vec![(PENGUIN, "content"), (PENGUIN, "history")],
        "{report:#}"
    );
    assert_eq!(env.hash(&env.v2).await, v2_before, "verify never writes V2");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_refuses_to_pass_having_compared_nothing() {
    let env = TestEnv::new("verify-empty").await;
    let out = env.planner(&["verify", "--all"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(
        text.trim_end().ends_with("verified 0 vizzes, 0 mismatches"),
        "{text}"
    );
    // A viz planned but never worked is a mismatch, not a pass.
    env.load_fixtures(&[]).await;
    let out = env.planner(&["verify", "--all", "--json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(3), "{report:#}");
    assert!(
        report["mismatches"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["category"] == "not-migrated"),
        "{report:#}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_counts_batches_outcomes_and_queues() {
    let env = TestEnv::new("status").await;
    let ids = env.migrated_world().await;
    let out = env.planner(&["status", "--json"]);
    let s = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{s:#}");
    // A parent migrated on behalf of its fork finds itself `unchanged` when its own job runs.
    let done =
        |o: &Value| o["migrated"].as_u64().unwrap_or(0) + o["unchanged"].as_u64().unwrap_or(0);
    assert_eq!(done(&s["outcomes"]), ids.len() as u64, "{s:#}");
    assert_eq!(s["outcomes"]["skipped"], 1);
    assert_eq!(s["outcomes"]["failed"], 1);
    assert_eq!(s["inFlight"], 0, "the run is over");
    let batch = &s["batches"][0];
    assert_eq!(batch["planned"], ids.len() + 2);
    assert_eq!(batch["pending"], 0);
    assert_eq!(done(&batch["outcomes"]), ids.len() as u64);
    let depth = |q: String| {
        s["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["queue"] == q.as_str())
            .unwrap_or_else(|| panic!("{q} in {s:#}"))["ready"]
            .clone()
    };
    assert_eq!(depth(env.topology.work()), 0);
    assert_eq!(depth(env.topology.dead()), 1, "the viz without content");
    env.cleanup().await;
}

/// A viz re-planned by a later batch (`plan --viz`, a daily `--since-last`) has ended in the
/// earlier batch too: that batch is not left pending forever, nothing looks in flight once the
/// run is over, and `report --batch` of either batch lists it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replanned_viz_is_not_pending_in_its_earlier_batch() {
    let env = TestEnv::new("status-replan").await;
    let ids = env.migrated_world().await;
    let first = env.planner(&["status", "--json"]);
    let first = json_stdout(&first)["batches"][0]["batch"]
        .as_str()
        .unwrap()
        .to_string();
    let out = env.planner(&["plan", "--viz", &ids[0], "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", json_stdout(&out));
    let second = json_stdout(&out)["batch"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    env.run_workers(1).await;

    let out = env.planner(&["status", "--json"]);
    let s = json_stdout(&out);
    let batches = s["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 2, "{s:#}");
    for b in batches {
        assert_eq!(b["pending"], 0, "every job of every batch ended: {s:#}");
    }
    assert_eq!(s["inFlight"], 0, "the run is over: {s:#}");
    // Overall counts take each viz once, by its last outcome.
    let total: u64 = s["outcomes"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(total, ids.len() as u64 + 2, "{s:#}");
    for batch in [&first, &second] {
        let out = env.planner(&["report", "--batch", batch, "--json"]);
        let r = json_stdout(&out);
        let listed = r["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|row| row["viz"] == ids[0].as_str());
        assert!(listed, "{} in the report of {batch}: {r:#}", ids[0]);
    }
    env.cleanup().await;
}

/// The V2 guard every test relies on really catches a write the test did not make.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "the migration must never write V2")]
async fn the_v2_guard_catches_a_write_behind_the_tests_back() {
    let env = TestEnv::new("v2-guard").await;
    env.load_fixtures(&[]).await;
    env.check_v2().await;
    env.v2
        .collection::<mongodb::bson::Document>("documentInfo")
        .update_one(
            mongodb::bson::doc! {"_id": PENGUIN},
            mongodb::bson::doc! {"$set": {"title": "written by a bug"}},
        )
        .await
        .unwrap();
    env.check_v2().await;
}
