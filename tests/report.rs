//! What operators ask of a run, through the real binaries: `planner report` (the ledger's
//! outcomes as a table, JSON and RFC 4180 CSV, filtered in the query), `planner verify --viz`
//! (exactly the vizzes named) and `worker preview --diff` (what a job would change in V3 now).

mod common;
#[path = "common/env.rs"]
mod env;

use env::{json_stdout, TestEnv};
use serde_json::{json, Value};
use std::process::Output;
use vizhub_migrate::ledger::VizRecord;
use vizhub_migrate::planner::Selection;

const PENGUIN: &str = "a56e821963b849b897dd51db26067db9";
const LOADING_CSV: &str = "3fd333e335fe4ecb9ee0c819802443b7";

fn planner(env: &TestEnv, args: &[&str]) -> Output {
    env.run_bin(env!("CARGO_BIN_EXE_planner"), args)
}

fn worker(env: &TestEnv, args: &[&str]) -> Output {
    env.run_bin(env!("CARGO_BIN_EXE_worker"), args)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn synthetic(n: u32) -> vizhub_migrate::v2::V2Viz {
    common::synthetic_viz(
        &format!("{n:032x}"),
        "68416",
        Some(LOADING_CSV),
        1_550_000_000,
        json!([{"name": "index.html", "text": "ok"}]),
        &[],
    )
}

/// Fixtures plus one tombstone (skipped) and one viz without content (dead-lettered), planned
/// as one batch and worked. Returns the fixture ids and the batch id.
async fn migrated_world(env: &TestEnv) -> (Vec<String>, String) {
    let ids = env.load_fixtures(&[]).await;
    let mut tombstone = synthetic(0x21);
    tombstone.info = json!({"_id": format!("{:032x}", 0x21), "_type": null, "_v": 3});
    let mut no_content = synthetic(0x22);
    no_content.content = None;
    env.load_viz(&tombstone).await;
    env.load_viz(&no_content).await;
    let plan = env.plan(Selection::All).await;
    env.run_workers(2).await;
    (ids, plan.batch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_lists_outcomes_and_reasons_as_table_json_and_csv() {
    let env = TestEnv::new("report").await;
    let (ids, batch) = migrated_world(&env).await;
    let failed = format!("{:032x}", 0x22);
    let skipped = format!("{:032x}", 0x21);

    let out = planner(&env, &["report", "--json"]);
    let r = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{r:#}");
    assert_eq!(r["count"], ids.len() + 2, "{r:#}");
    assert_eq!(r["rows"].as_array().unwrap().len(), ids.len() + 2);
    assert_eq!(r["byOutcome"]["failed"], 1, "{r:#}");
    assert_eq!(r["byOutcome"]["skipped"], 1, "{r:#}");
    let row = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["viz"] == failed.as_str())
        .unwrap_or_else(|| panic!("{failed} in {r:#}"));
    let ledger = env.record(&failed).await;
    assert_eq!(row["outcome"], "failed");
    assert_eq!(row["batch"], batch.as_str());
    assert_eq!(row["errorKind"], json!(ledger.error_kind), "{row:#}");
    assert!(ledger.error_kind.is_some(), "{ledger:?}");
    assert_eq!(row["reason"], json!(ledger.reason), "{row:#}");
    assert_eq!(row["attempts"], ledger.attempts);
    assert_eq!(row["time"], ledger.time);

    // Filters: outcomes (repeatable), batch, the window of the last job.
    let out = planner(
        &env,
        &[
            "report",
            "--batch",
            &batch,
            "--outcome",
            "failed",
            "--outcome",
            "skipped",
            "--json",
        ],
    );
    let r = json_stdout(&out);
    let mut vizzes: Vec<&str> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["viz"].as_str().unwrap())
        .collect();
    vizzes.sort();
    assert_eq!(vizzes, [skipped.as_str(), failed.as_str()], "{r:#}");
    let r = json_stdout(&planner(
        &env,
        &["report", "--batch", "no-such-batch", "--json"],
    ));
    assert_eq!(r["count"], 0, "{r:#}");
    let r = json_stdout(&planner(
        &env,
        &[
            "report",
            "--from",
            "2000-01-01T00:00:00Z",
            "--to",
            "2001-01-01T00:00:00Z",
            "--json",
        ],
    ));
    assert_eq!(r["count"], 0, "no job ended in 2000: {r:#}");
    let r = json_stdout(&planner(
        &env,
        &[
            "report",
            "--from",
            "0",
            "--to",
            "99999999999",
            "--outcome",
            "skipped",
            "--json",
        ],
    ));
    assert_eq!(r["count"], 1, "{r:#}");
    let out = planner(&env, &["report", "--outcome", "exploded"]);
    assert_eq!(out.status.code(), Some(2), "a bad outcome is a usage error");

    // CSV escapes what a reason may hold: a comma, quotes, a line break.
    let mut rec: VizRecord = env.record(&failed).await;
    rec.reason = Some("op 7, \"v\" gap\nthen stop".into());
    env.ledger().record(&rec).await.unwrap();
    let out = planner(&env, &["report", "--outcome", "failed", "--csv"]);
    assert_eq!(out.status.code(), Some(0));
    let csv = stdout(&out);
    let at = mongodb::bson::DateTime::from_millis(rec.time * 1000)
        .try_to_rfc3339_string()
        .unwrap();
    assert_eq!(
        csv,
        format!(
            "viz,outcome,error_kind,reason,batch,attempts,time,skipped_entries\r\n\
             {failed},failed,{},\"op 7, \"\"v\"\" gap\nthen stop\",{batch},{},{at},0\r\n",
            rec.error_kind.as_deref().unwrap(),
            rec.attempts
        )
    );

    // The table, for a terminal.
    let out = planner(
        &env,
        &["report", "--outcome", "failed", "--outcome", "skipped"],
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("VIZ"), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&failed) && l.contains("op 7, \"v\" gap then stop")),
        "{text}"
    );
    assert_eq!(
        lines.last().copied(),
        Some("2 vizzes (failed 1, skipped 1)"),
        "{text}"
    );
    assert_eq!(lines.len(), 4, "{text}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_viz_and_preview_diff_look_at_exactly_the_vizzes_named() {
    let env = TestEnv::new("verify-viz").await;
    migrated_world(&env).await;
    let last_line = |out: &Output| {
        stdout(out)
            .trim_end()
            .lines()
            .last()
            .unwrap_or("")
            .to_string()
    };

    let out = planner(&env, &["verify", "--viz", PENGUIN, "--viz", LOADING_CSV]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(last_line(&out), "verified 2 vizzes, 0 mismatches");

    // Just migrated: a job would change nothing.
    let v3_before = env.hash(&env.v3).await;
    let out = worker(&env, &["preview", "--diff", PENGUIN, "--json"]);
    let d = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{d:#}");
    let statuses = |d: &Value| -> Vec<(String, String)> {
        d["docs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|doc| {
                (
                    format!(
                        "{}/{}",
                        doc["collection"].as_str().unwrap(),
                        doc["id"].as_str().unwrap()
                    ),
                    doc["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert!(statuses(&d).iter().all(|(_, s)| s == "unchanged"), "{d:#}");
    assert!(statuses(&d).contains(&(format!("content/{PENGUIN}"), "unchanged".into())));

    // V3 changed behind the migration's back: verify names it, only for that viz; the diff
    // shows the one field a job would set back.
    env.v3
        .collection::<mongodb::bson::Document>("content")
        .update_one(
            mongodb::bson::doc! {"_id": PENGUIN},
            mongodb::bson::doc! {"$set": {"title": "Not the penguin"}},
        )
        .await
        .unwrap();
    let out = planner(&env, &["verify", "--viz", LOADING_CSV]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(last_line(&out), "verified 1 vizzes, 0 mismatches");
    let out = planner(&env, &["verify", "--viz", PENGUIN, "--json"]);
    let r = json_stdout(&out);
    assert_eq!(out.status.code(), Some(3), "{r:#}");
    assert_eq!(r["compared"], 1);
    assert!(
        r["mismatches"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["viz"] == PENGUIN),
        "{r:#}"
    );

    let v3_before_diff = env.hash(&env.v3).await;
    let out = worker(&env, &["preview", "--diff", PENGUIN]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "changed   content {PENGUIN}\n  title: \"Not the penguin\" -> \"Dancing Penguin!\"\n"
        )),
        "{text}"
    );
    let d = json_stdout(&worker(&env, &["preview", "--diff", PENGUIN, "--json"]));
    assert_eq!(d["counts"]["changed"], 1, "{d:#}");

    // A viz V2 gained since the run: its own documents are new, its owner (migrated with the
    // other vizzes) is unchanged.
    let late = synthetic(0x23);
    env.load_viz(&late).await;
    let id = format!("{:032x}", 0x23);
    let d = json_stdout(&worker(&env, &["preview", "--diff", &id, "--json"]));
    for (doc, status) in statuses(&d) {
        let expected = if doc == "user/68416" {
            "unchanged"
        } else {
            "new"
        };
        assert_eq!(status, expected, "{doc}: {d:#}");
    }
    assert!(
        statuses(&d).contains(&(format!("info/{id}"), "new".into())),
        "{d:#}"
    );
    assert!(
        statuses(&d)
            .iter()
            .any(|(doc, _)| doc.starts_with("commit/")),
        "{d:#}"
    );
    assert_eq!(
        env.hash(&env.v3).await,
        v3_before_diff,
        "preview --diff writes nothing"
    );
    assert_ne!(v3_before, v3_before_diff);

    // A skipped viz is in scope but not compared (exit 4); an unknown id is a usage error.
    let out = planner(&env, &["verify", "--viz", &format!("{:032x}", 0x21)]);
    assert_eq!(out.status.code(), Some(4), "{}", stdout(&out));
    assert_eq!(last_line(&out), "verified 0 vizzes, 0 mismatches");
    let out = planner(&env, &["verify", "--viz", PENGUIN, "--viz", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not in V2 documentInfo: nope"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.cleanup().await;
}
