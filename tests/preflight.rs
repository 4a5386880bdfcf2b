//! `planner check` through the real binary: on a V2 without indexes every query that needs one
//! is reported uncovered (exit 5) with the `createIndex` to ask for; once V2's owner has created
//! exactly those, everything is covered (exit 0). The check itself creates nothing on V2.

mod common;
#[path = "common/env.rs"]
mod env;

use env::{json_stdout, TestEnv};
use futures_util::TryStreamExt;
use mongodb::bson::Document;
use mongodb::IndexModel;
use serde_json::Value;
use std::process::Output;
use vizhub_migrate::v2::reader::QUERIES;

fn check(env: &TestEnv, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_planner"))
        .arg("check")
        .args(args)
        .env("V2_MONGO_URI", env.v2_uri())
        .env("LOG_FORMAT", "json")
        .output()
        .expect("planner binary runs")
}

/// Every index of every V2 collection, by collection, as key patterns.
async fn v2_indexes(env: &TestEnv) -> Vec<(String, Vec<Document>)> {
    let mut names = env.v2.list_collection_names().await.unwrap();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let models: Vec<IndexModel> = env
            .v2
            .collection::<Document>(&name)
            .list_indexes()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        out.push((name, models.into_iter().map(|m| m.keys).collect()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_every_uncovered_v2_query_until_its_index_exists() {
    let env = TestEnv::new("preflight").await;
    env.load_fixtures(&[]).await;
    env.load_page_views().await;
    let indexes_before = v2_indexes(&env).await;
    let v2_before = env.hash(&env.v2).await;

    let out = check(&env, &["--json"]);
    let c = json_stdout(&out);
    assert_eq!(out.status.code(), Some(5), "{c:#}");
    assert_eq!(c["allCovered"], false);
    let queries = c["queries"].as_array().unwrap();
    // Every query of the fleet is named, once.
    let names: Vec<&str> = queries
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = QUERIES.iter().map(|q| q.name).collect();
    assert_eq!(names, expected);
    for name in [
        "info-by-created",
        "info-by-updated",
        "info-by-upvote-time",
        "op-log-by-viz",
        "event-record-by-id",
    ] {
        let q = queries.iter().find(|q| q["name"] == name).unwrap();
        assert_eq!(q["covered"], false, "{q:#}");
        assert!(
            q["createIndex"]
                .as_str()
                .unwrap()
                .contains(".createIndex({"),
            "{q:#}"
        );
    }
    // Only `_id` lookups are served without asking (every collection has that index).
    for q in queries.iter().filter(|q| q["covered"] == true) {
        assert_eq!(q["needs"], serde_json::json!(["_id"]), "{q:#}");
    }
    let op_log = queries
        .iter()
        .find(|q| q["name"] == "op-log-by-viz")
        .unwrap();
    assert_eq!(
        op_log["createIndex"],
        "db.o_documentContent.createIndex({d: 1, v: 1})"
    );
    assert!(
        op_log["plan"].as_str().unwrap().contains("COLLSCAN"),
        "{op_log:#}"
    );

    let text = String::from_utf8_lossy(&check(&env, &[]).stdout).into_owned();
    assert!(text.contains("op-log-by-viz"), "{text}");
    assert!(
        text.contains("ask V2's owner to run")
            && text.contains("  db.documentInfo.createIndex({createdTimestamp: 1, _id: 1})"),
        "{text}"
    );
    // The check only read.
    assert_eq!(
        v2_indexes(&env).await,
        indexes_before,
        "the check created no index"
    );
    assert_eq!(env.hash(&env.v2).await, v2_before);

    // V2's owner creates what the check asked for (the test plays that part).
    for q in queries.iter().filter(|q| q["covered"] == false) {
        let mut keys = Document::new();
        for f in q["needs"].as_array().unwrap() {
            keys.insert(f.as_str().unwrap(), 1);
        }
        env.v2
            .collection::<Document>(q["collection"].as_str().unwrap())
            .create_index(IndexModel::builder().keys(keys).build())
            .await
            .unwrap();
    }
    let out = check(&env, &["--json"]);
    let c = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{c:#}");
    assert_eq!(c["allCovered"], true);
    for q in c["queries"].as_array().unwrap() {
        assert_eq!(q["covered"], true, "{q:#}");
        assert!(q.get("createIndex").is_none_or(Value::is_null), "{q:#}");
    }
    let op_log = c["queries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "op-log-by-viz")
        .unwrap();
    assert!(
        op_log["plan"].as_str().unwrap().contains("IXSCAN d_1_v_1"),
        "{op_log:#}"
    );
    let text = String::from_utf8_lossy(&check(&env, &[]).stdout).into_owned();
    assert!(
        text.trim_end()
            .ends_with("every V2 query the fleet makes has an index"),
        "{text}"
    );
    env.cleanup().await;
}

/// The README lists exactly the indexes the check asks for (it is what operators forward).
#[test]
fn the_readme_asks_for_every_index_the_check_names() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### Reports, checks and previews")
        .nth(1)
        .expect("README has the section")
        .split("\n### ")
        .next()
        .unwrap();
    let mut wanted: Vec<String> = QUERIES
        .iter()
        .filter(|q| q.index != ["_id"])
        .map(vizhub_migrate::preflight::create_index_command)
        .collect();
    wanted.dedup();
    let listed: Vec<String> = section
        .lines()
        .filter(|l| l.contains(".createIndex("))
        .map(|l| l.split("//").next().unwrap().trim().to_string())
        .collect();
    assert_eq!(listed, wanted);
}
