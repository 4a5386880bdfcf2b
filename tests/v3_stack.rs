//! V3's own stack writes to migrated docs: ShareDB + sharedb-mongo with its default options
//! (which create the op-log indexes `{d:1,v:1}` and `{src:1,seq:1,v:1}` with
//! `{background: true}` on every op collection they touch) submit ops to migrated infos and
//! contents, and fork a migrated viz. A server that compares index options (SecantusDB answers
//! error 86, "An existing index has the same name as the requested index") refuses sharedb-mongo's
//! `createIndex` when the migration made a same-named index with other options, and then V3 can
//! submit no op at all: these tests fail if the migration's indexes ever differ from
//! sharedb-mongo's again.

mod common;
#[path = "common/env.rs"]
mod env;

use env::{node, TestEnv};
use mongodb::bson::{doc, Bson, Document};
use vizhub_migrate::planner::Selection;
use vizhub_migrate::v3::collections;
use vizhub_migrate::Outcome;

/// The op-log indexes sharedb-mongo creates, by their default names.
const SHAREDB_INDEXES: [&str; 2] = ["d_1_v_1", "src_1_seq_1_v_1"];

impl TestEnv {
    /// The indexes of a V3 collection by name, as the server lists them (`listIndexes`).
    async fn v3_indexes(&self, coll: &str) -> Vec<Document> {
        let r = self
            .v3
            .run_command(doc! {"listIndexes": coll})
            .await
            .unwrap_or_else(|e| panic!("listIndexes {coll}: {e}"));
        let cursor = r.get_document("cursor").unwrap();
        assert_eq!(
            cursor.get_i64("id").unwrap_or(0),
            0,
            "{coll}: more indexes than one batch"
        );
        cursor
            .get_array("firstBatch")
            .unwrap()
            .iter()
            .map(|b| b.as_document().unwrap().clone())
            .collect()
    }

    /// Asserts that `coll` has sharedb-mongo's two op-log indexes, each with `background: true`
    /// (the options sharedb-mongo asks for, so its own `createIndex` is a no-op).
    async fn assert_sharedb_indexes(&self, coll: &str) {
        let indexes = self.v3_indexes(coll).await;
        for name in SHAREDB_INDEXES {
            let index = indexes
                .iter()
                .find(|i| i.get_str("name") == Ok(name))
                .unwrap_or_else(|| panic!("{coll} has no index {name}: {indexes:?}"));
            assert_eq!(
                index.get("background"),
                Some(&Bson::Boolean(true)),
                "{coll}.{name} lacks background: true, so sharedb-mongo's createIndex fails: {index:?}"
            );
        }
    }
}

/// Every migrated viz takes ops from V3's stack, and forks as V3 forks; the op collections carry
/// exactly sharedb-mongo's indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_stack_writes_to_every_migrated_viz_and_forks_one() {
    let env = TestEnv::new("v3stack").await;
    let ids = env.load_fixtures(&[]).await;
    env.plan(Selection::All).await;
    // One worker exactly as production runs it: the `worker` binary, which creates the V3
    // indexes (`Store::ensure_indexes`) at start-up. `env.run_workers` runs `worker::run` in
    // process and does NOT create them, so it would not exercise the indexes under test.
    let mut worker = env.worker_command();
    worker
        .args([
            "--until-idle",
            "2",
            "--concurrency",
            "4",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::null());
    let status = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        tokio::process::Command::from(worker).status(),
    )
    .await
    .expect("worker finishes within 5 minutes")
    .expect("worker binary");
    assert!(status.success(), "worker: {status}");
    env.check_v2().await;
    for id in &ids {
        let r = env.record(id).await;
        assert_eq!(r.outcome, Outcome::Migrated, "{id}: {:?}", r.reason);
    }

    // The indexes V3 will meet, before V3 touches anything.
    let names = env.v3.list_collection_names().await.unwrap();
    for c in ["info", "content"] {
        assert!(names.contains(&format!("o_{c}")), "no o_{c}: {names:?}");
    }
    for c in collections::SHAREDB {
        let ops = format!("o_{c}");
        if names.contains(&ops) {
            env.assert_sharedb_indexes(&ops).await;
        }
    }

    let parent = &ids[0];
    let forks_before = env.v3_doc("info", parent).await.unwrap()["forksCount"]
        .as_i64()
        .expect("forksCount");
    let (ok, report) = node(
        "sharedb-v3-writes.js",
        &[&env.v3_uri(), env.v3.name(), &ids.join(",")],
    );
    assert!(ok, "{report:#}");
    assert_eq!(report["checked"], ids.len(), "{report:#}");
    assert_eq!(report["failures"], serde_json::json!([]), "{report:#}");
    // sharedb-mongo's own createIndex calls landed in this database (they were no-ops).
    for ops in ["o_info", "o_content"] {
        let listed = report["indexes"][ops].as_array().unwrap_or_else(|| {
            panic!("the script listed no indexes for {ops}: {report:#}");
        });
        for name in SHAREDB_INDEXES {
            assert!(
                listed
                    .iter()
                    .any(|i| i["name"] == name && i["background"] == true),
                "{ops}.{name}: {listed:?}"
            );
        }
    }

    // What V3 wrote is where the migration expects it: the fork, and the parent's count.
    let fork = report["fork"].as_str().expect("fork id");
    let fork_info = env.v3_doc("info", fork).await.expect("fork info in V3");
    assert_eq!(fork_info["_type"], "p");
    assert_eq!(fork_info["forkedFrom"], parent.as_str());
    assert_eq!(env.v3_doc("content", fork).await.unwrap()["_type"], "p");
    let parent_info = env.v3_doc("info", parent).await.unwrap();
    assert_eq!(
        parent_info["forksCount"],
        forks_before + 1,
        "{parent}: {parent_info}"
    );
    // The collections ShareDB touched still carry exactly sharedb-mongo's indexes.
    let names = env.v3.list_collection_names().await.unwrap();
    for c in collections::SHAREDB {
        let ops = format!("o_{c}");
        if names.contains(&ops) {
            env.assert_sharedb_indexes(&ops).await;
        }
    }
    env.cleanup().await;
}

/// A V3 database prepared by an older migration, whose op-log indexes lack `background: true`:
/// `ensure_indexes` makes them again as sharedb-mongo wants them, and is idempotent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_indexes_repairs_op_log_indexes_made_without_background() {
    let env = TestEnv::new("oldindexes").await;
    // The old way: default options (the Rust driver sends no `background`).
    for (coll, keys) in [
        ("o_info", doc! {"d": 1, "v": 1}),
        ("o_content", doc! {"src": 1, "seq": 1, "v": 1}),
    ] {
        env.v3
            .collection::<Document>(coll)
            .create_index(mongodb::IndexModel::builder().keys(keys).build())
            .await
            .unwrap();
    }
    let old = env.v3_indexes("o_info").await;
    let old = old
        .iter()
        .find(|i| i.get_str("name") == Ok("d_1_v_1"))
        .expect("old index made");
    assert!(
        old.get("background").is_none(),
        "the old index must lack background: {old:?}"
    );

    let store = env.migrator().v3;
    store
        .ensure_indexes()
        .await
        .expect("ensure_indexes repairs");
    for c in collections::SHAREDB {
        env.assert_sharedb_indexes(&format!("o_{c}")).await;
    }
    store.ensure_indexes().await.expect("ensure_indexes twice");
    for c in collections::SHAREDB {
        env.assert_sharedb_indexes(&format!("o_{c}")).await;
        // Made again, not duplicated.
        let names: Vec<String> = env
            .v3_indexes(&format!("o_{c}"))
            .await
            .iter()
            .map(|i| i.get_str("name").unwrap().to_string())
            .collect();
        for name in SHAREDB_INDEXES {
            assert_eq!(
                names.iter().filter(|n| *n == name).count(),
                1,
                "o_{c}: {names:?}"
            );
        }
    }
    env.cleanup().await;
}
