//! Write concerns honoured on every V3 write path, raw `insert`/`update` commands included:
//! each carries the write concern the URI configures (`w`, `wtimeoutMS`), and a reply with a
//! `writeConcernError` (the write applied but not acknowledged as asked: a wtimeout, code 64)
//! is a transient failure — the job is retried with backoff, then dead-lettered — never an ack
//! of a batch that is not known to be durable, nor an immediate dead letter.
//!
//! The failures are injected with `configureFailPoint` (`failCommand` with `writeConcernError`,
//! which SecantusDB supports when started with `--enable-test-commands`), aimed at a client of
//! the test's own by its `appName`.

mod common;
#[path = "common/env.rs"]
mod env;

use env::TestEnv;
use mongodb::bson::{Bson, Document};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use mongodb::Client;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use vizhub_migrate::job::Job;
use vizhub_migrate::ledger::{Ledger, VizRecord};
use vizhub_migrate::migrate::Migrator;
use vizhub_migrate::planner::Selection;
use vizhub_migrate::translate::Config;
use vizhub_migrate::v2::reader::Reader;
use vizhub_migrate::v3::store::{is_transient_mongo, Policy, Store};
use vizhub_migrate::{Disposition, Outcome};

/// `failCommand` is one failpoint per server: the tests of this file that set it take turns
/// (each still aims it at its own client by `appName`).
static FAIL_POINT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The write concern the tests configure through the URI, as the server must receive it.
const W_TIMEOUT_MS: i64 = 4000;

fn wtimeout(commands: &[&str], app: &str) -> Value {
    json!({
        "failCommands": commands,
        "writeConcernError": {"code": 64, "codeName": "WriteConcernFailed",
                              "errmsg": "waiting for replication timed out",
                              "errInfo": {"wtimeout": true}},
        "appName": app,
    })
}

impl TestEnv {
    /// A client named `app` whose URI sets a write concern (`w=1&wtimeoutMS=…`: a single
    /// node answers it), optionally monitored.
    async fn client_with_write_concern(
        &self,
        app: &str,
        handler: Option<EventHandler<CommandEvent>>,
    ) -> Client {
        let sep = if self.mongo_base.contains('?') {
            '&'
        } else {
            '?'
        };
        let uri = format!("{}{sep}w=1&wtimeoutMS={W_TIMEOUT_MS}", self.mongo_base);
        let mut o = ClientOptions::parse(&uri).await.unwrap();
        o.app_name = Some(app.to_string());
        o.command_event_handler = handler;
        Client::with_options(o).unwrap()
    }

    /// A migrator reading V2 with the test's own client and writing V3 (and the ledger)
    /// through `v3_client`.
    fn migrator_writing_with(&self, v3_client: &Client) -> Migrator {
        let v3 = v3_client.database(self.v3.name());
        Migrator::new(
            Reader::new(self.v2.clone(), NonZeroU32::new(10_000).unwrap()),
            Store::new(v3.clone()),
            Ledger::new(v3),
            Config::default(),
        )
    }
}

/// A write command as it left the client: its name and the write concern it carried.
type WriteSeen = (String, Option<Document>);

fn record(viz: &str, outcome: Outcome) -> VizRecord {
    VizRecord {
        viz: viz.to_string(),
        outcome,
        reason: None,
        error_kind: None,
        batch: Some("b1".to_string()),
        attempts: 1,
        time: 1_700_000_000,
        migrated: None,
        skipped_entries: Vec::new(),
    }
}

fn payloads(n: usize, text: &str) -> Vec<(String, Value)> {
    (0..n)
        .map(|i| {
            (
                format!("doc{i}"),
                json!({"id": format!("doc{i}"), "text": text}),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_command_carries_the_configured_write_concern() {
    let env = TestEnv::new("wc-carried").await;
    let seen: Arc<Mutex<Vec<WriteSeen>>> = Arc::default();
    let sink = seen.clone();
    let handler = EventHandler::callback(move |e: CommandEvent| {
        if let CommandEvent::Started(s) = e {
            let name = s.command_name.as_str();
            if [
                "insert",
                "update",
                "delete",
                "findAndModify",
                "createIndexes",
            ]
            .contains(&name)
            {
                let wc = s.command.get_document("writeConcern").ok().cloned();
                sink.lock().unwrap().push((name.to_string(), wc));
            }
        }
    });
    let client = env
        .client_with_write_concern(&format!("{}-monitored", env.name), Some(handler))
        .await;
    let v3 = client.database(env.v3.name());

    // The ledger's raw insert and raw update (`record_many`), the store's raw update of several
    // snapshots at once (`sync` of changed docs) and its raw `createIndexes`, and the driver's
    // own writes beside them.
    let ledger = Ledger::new(v3.clone());
    let recs = vec![
        record("a", Outcome::Migrated),
        record("b", Outcome::Migrated),
    ];
    let fresh: HashSet<String> = ["a".to_string(), "b".to_string()].into();
    assert!(ledger.record_many(&recs, &fresh).await.unwrap().is_empty());
    assert!(ledger
        .record_many(&recs, &HashSet::new())
        .await
        .unwrap()
        .is_empty());
    let store = Store::new(v3);
    store.ensure_indexes().await.unwrap();
    store
        .sync("thing", &payloads(2, "one"), Policy::Update, 1)
        .await
        .unwrap();
    let report = store
        .sync("thing", &payloads(2, "two"), Policy::Update, 2)
        .await
        .unwrap();
    assert_eq!(report.updated, 2, "{report:?}");

    let seen = seen.lock().unwrap().clone();
    for name in ["insert", "update", "createIndexes"] {
        assert!(seen.iter().any(|(n, _)| n == name), "no {name} seen");
    }
    for (name, wc) in &seen {
        let wc = wc
            .as_ref()
            .unwrap_or_else(|| panic!("{name} sent without the configured write concern"));
        assert!(
            matches!(wc.get("w"), Some(Bson::Int32(1) | Bson::Int64(1))),
            "{name}: {wc}"
        );
        let t = match wc.get("wtimeout") {
            Some(Bson::Int32(t)) => i64::from(*t),
            Some(Bson::Int64(t)) => *t,
            other => panic!("{name}: wtimeout {other:?}"),
        };
        assert_eq!(t, W_TIMEOUT_MS, "{name}: {wc}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_concern_error_on_insert_or_update_fails_the_write_transiently() {
    let env = TestEnv::new("wc-raw").await;
    let _turn = FAIL_POINT.lock().await;
    let app = format!("{}-wtimeout", env.name);
    let client = env.client_with_write_concern(&app, None).await;
    let v3 = client.database(env.v3.name());
    let ledger = Ledger::new(v3.clone());
    let store = Store::new(v3);
    // Docs to update later, written before any failpoint.
    store
        .sync("thing", &payloads(2, "one"), Policy::Update, 1)
        .await
        .unwrap();

    env.fail_point(json!("alwaysOn"), wtimeout(&["insert"], &app))
        .await;
    // The ledger's raw insert of fresh records.
    let fresh: HashSet<String> = ["a".to_string()].into();
    let e = ledger
        .record_many(&[record("a", Outcome::Migrated)], &fresh)
        .await
        .expect_err("a batch recorded without its write concern is no success");
    assert!(is_transient_mongo(&e), "{e}");
    // The store's unordered inserts (new docs: their create ops and snapshots).
    let e = store
        .sync("thing", &payloads(3, "one"), Policy::Update, 2)
        .await
        .expect_err("an insert without its write concern is no success");
    assert!(e.is_transient(), "{e}");
    assert!(!e.is_conflict(), "{e}");
    assert!(e.to_string().contains("write concern error 64"), "{e}");

    env.fail_point(json!("alwaysOn"), wtimeout(&["update"], &app))
        .await;
    // The ledger's raw update of known records.
    let e = ledger
        .record_many(&[record("a", Outcome::Unchanged)], &HashSet::new())
        .await
        .expect_err("a batch recorded without its write concern is no success");
    assert!(is_transient_mongo(&e), "{e}");
    // The store's raw update of several snapshots at once.
    let e = store
        .sync("thing", &payloads(2, "two"), Policy::Update, 3)
        .await
        .expect_err("a snapshot update without its write concern is no success");
    assert!(e.is_transient(), "{e}");
    assert!(!e.is_conflict(), "{e}");
    env.fail_point_off().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_writes_time_out_is_retried_not_acked() {
    let env = TestEnv::new("wc-jobs").await;
    let _turn = FAIL_POINT.lock().await;
    let app = format!("{}-wtimeout", env.name);
    let client = env.client_with_write_concern(&app, None).await;
    let ids = env.load_fixtures(&[]).await;
    let migrator = env.migrator_writing_with(&client);
    let jobs: Vec<Job> = ids
        .iter()
        .map(|viz| Job {
            viz: viz.clone(),
            batch: None,
        })
        .collect();

    // 1. Every insert answered with a wtimeout: a fresh viz's job fails, to be retried.
    env.fail_point(json!("alwaysOn"), wtimeout(&["insert"], &app))
        .await;
    for r in migrator.migrate_batch(&jobs).await {
        let e = r.expect_err("no job succeeds without its inserts acknowledged");
        assert_eq!(e.disposition(), Disposition::Retry, "{e}");
    }
    env.fail_point_off().await;

    // 2. Migrated; then every update answered with a wtimeout: the jobs (unchanged vizzes,
    // recorded with one raw update of the batch's records) are retried, not acked.
    for r in migrator.migrate_batch(&jobs).await {
        let done = r.unwrap();
        assert!(
            matches!(done.outcome, Outcome::Migrated | Outcome::Unchanged),
            "{done:?}"
        );
    }
    env.fail_point(json!("alwaysOn"), wtimeout(&["update"], &app))
        .await;
    for r in migrator.migrate_batch(&jobs).await {
        let e = r.expect_err("no job is acked without its record acknowledged");
        assert_eq!(e.disposition(), Disposition::Retry, "{e}");
    }
    env.fail_point_off().await;

    // 3. Through the worker: a viz whose inserts keep timing out is retried with backoff (the
    // test topology's two delays), then dead-lettered, recorded failed with the reason.
    let extra = common::synthetic_viz(
        &format!("{:08x}{:024x}", 1_600_000_000, 1),
        "68416",
        None,
        1_600_000_000,
        json!([{"name": "index.html", "text": "<p>hi</p>\n"}]),
        &[],
    );
    env.load_viz(&extra).await;
    let viz = extra.info["_id"].as_str().unwrap().to_string();
    env.fail_point(json!("alwaysOn"), wtimeout(&["insert"], &app))
        .await;
    env.plan(Selection::Window {
        from: 1_600_000_000,
        to: 1_600_001_000,
    })
    .await;
    let stats = env
        .run_workers_on(1, &env.amqp_uri, || env.migrator_writing_with(&client))
        .await;
    env.fail_point_off().await;
    let retries = env.topology.retry_delays_ms.len() as u64;
    assert_eq!(stats.retried.load(Ordering::Relaxed), retries);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 1);
    let r = env.record(&viz).await;
    assert_eq!(r.outcome, Outcome::Failed);
    let reason = r.reason.unwrap_or_default();
    assert!(reason.contains("write concern error 64"), "{reason}");
    env.cleanup().await;
}
