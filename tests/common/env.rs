//! `TestEnv`: a V2 database, a V3 database and a queue prefix of their own for one test, on real
//! services. Where they come from, in order:
//! 1. the environment: `MONGO_URI` (a MongoDB-protocol server such as SecantusDB) and `AMQP_URI`
//!    (RabbitMQ); `scripts/test` starts both and sets them — the only way on machines without a
//!    Docker engine, like CI's;
//! 2. otherwise, when a Docker engine answers (`docker info`), testcontainers: one MongoDB
//!    (replica set, for transactions) and one RabbitMQ container per test process, shared by its
//!    tests (each still has its own databases and queue prefix) and reaped when the process exits;
//! 3. otherwise the test fails, saying how to provide them.
//!
//! Tests read like scenarios: load V2, plan, run workers, look at V3.
#![allow(dead_code)]

use futures_util::TryStreamExt;
use mongodb::bson::{self, doc, Document};
use mongodb::{Client, Database};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vizhub_migrate::broker::{self, Topology};
use vizhub_migrate::ledger::{Ledger, VizRecord};
use vizhub_migrate::migrate::Migrator;
use vizhub_migrate::planner::{self, PlanReport, Selection};
use vizhub_migrate::translate::Config;
use vizhub_migrate::v2::reader::Reader;
use vizhub_migrate::v3::store::Store;
use vizhub_migrate::worker::{self, Options, Stats};

static COUNTER: AtomicU32 = AtomicU32::new(0);

#[derive(Default)]
struct V2Guard {
    /// V2's hash after the test's last own write.
    hash: Option<String>,
    /// The test wrote V2 since `hash` was taken.
    dirty: bool,
}

pub struct TestEnv {
    /// V2 must stay byte-identical except for the test's own writes: see [`TestEnv::check_v2`].
    v2_guard: tokio::sync::Mutex<V2Guard>,
    pub name: String,
    pub mongo_base: String,
    pub amqp_uri: String,
    pub client: Client,
    pub v2: Database,
    pub v3: Database,
    pub topology: Topology,
}

/// `(MONGO_URI, AMQP_URI)` for this test process: see the module docs for the order.
async fn services() -> (String, String) {
    if let (Ok(m), Ok(a)) = (std::env::var("MONGO_URI"), std::env::var("AMQP_URI")) {
        return (m, a);
    }
    static CONTAINERS: tokio::sync::OnceCell<(String, String)> = tokio::sync::OnceCell::const_new();
    CONTAINERS.get_or_init(start_containers).await.clone()
}

fn docker_answers() -> bool {
    std::process::Command::new("docker")
        .arg("info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn start_containers() -> (String, String) {
    use testcontainers::runners::AsyncRunner;
    use testcontainers_modules::{mongo::Mongo, rabbitmq::RabbitMq};
    assert!(
        docker_answers(),
        "MONGO_URI / AMQP_URI are not set and no Docker engine answers for testcontainers. \
         Integration tests need a MongoDB-protocol server and RabbitMQ: run `scripts/test` (it \
         starts SecantusDB and checks RabbitMQ), or `eval \"$(scripts/services start)\"` first, \
         or start Docker."
    );
    let mongo = Mongo::repl_set().start().await.expect("MongoDB container");
    let rabbit = RabbitMq::default()
        .start()
        .await
        .expect("RabbitMQ container");
    let host = mongo.get_host().await.expect("container host");
    let mongo_uri = format!(
        "mongodb://{host}:{}/?directConnection=true",
        mongo.get_host_port_ipv4(27017).await.expect("MongoDB port")
    );
    let amqp_uri = format!(
        "amqp://guest:guest@{host}:{}/%2f",
        rabbit
            .get_host_port_ipv4(5672)
            .await
            .expect("RabbitMQ port")
    );
    // Kept for the life of the process (tests share them); Ryuk removes them afterwards.
    std::mem::forget(mongo);
    std::mem::forget(rabbit);
    (mongo_uri, amqp_uri)
}

/// `mongodb://host:port/?opts` → `mongodb://host:port/<db>?opts`.
pub fn with_db(base: &str, db: &str) -> String {
    let (head, query) = base.split_once('?').map_or((base, ""), |(h, q)| (h, q));
    let head = head.trim_end_matches('/');
    if query.is_empty() {
        format!("{head}/{db}")
    } else {
        format!("{head}/{db}?{query}")
    }
}

impl TestEnv {
    pub async fn new(test: &str) -> TestEnv {
        let (mongo_base, amqp_uri) = services().await;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "t{}_{}_{}",
            std::process::id(),
            n,
            test.chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(20)
                .collect::<String>()
        );
        let client = Client::with_uri_str(&mongo_base)
            .await
            .expect("MONGO_URI connects");
        let v2 = client.database(&format!("{name}_v2"));
        let v3 = client.database(&format!("{name}_v3"));
        let mut topology = Topology::new(&format!("test.{name}"));
        // Fast retries in tests; the production defaults are seconds to minutes.
        topology.retry_delays_ms = vec![100, 200];
        TestEnv {
            v2_guard: Default::default(),
            name,
            mongo_base,
            amqp_uri,
            client,
            v2,
            v3,
            topology,
        }
    }

    pub fn v2_uri(&self) -> String {
        with_db(&self.mongo_base, self.v2.name())
    }

    pub fn v3_uri(&self) -> String {
        with_db(&self.mongo_base, self.v3.name())
    }

    /// The `worker` binary on this test's databases and queues, JSON logs, stderr discarded;
    /// the caller adds arguments and spawns it.
    /// A project binary (`env!("CARGO_BIN_EXE_…")`) pointed at this environment: both
    /// databases, the broker, the queue prefix, JSON logs.
    pub fn bin_command(&self, exe: &str) -> std::process::Command {
        let mut c = std::process::Command::new(exe);
        c.env("V2_MONGO_URI", self.v2_uri())
            .env("V3_MONGO_URI", self.v3_uri())
            .env("AMQP_URI", &self.amqp_uri)
            .env("QUEUE_PREFIX", &self.topology.prefix)
            .env("LOG_FORMAT", "json");
        c
    }

    /// `exe` run to completion with `args` (see [`TestEnv::bin_command`]).
    pub fn run_bin(&self, exe: &str, args: &[&str]) -> std::process::Output {
        self.bin_command(exe)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{exe} runs: {e}"))
    }

    pub fn worker_command(&self) -> std::process::Command {
        let mut c = self.bin_command(env!("CARGO_BIN_EXE_worker"));
        // Never the default 0.0.0.0:9090: a worker that cannot bind it exits 1, and tests
        // run in parallel.
        c.env("METRICS_ADDR", "127.0.0.1:0")
            .stderr(std::process::Stdio::null());
        c
    }

    pub fn migrator(&self) -> Migrator {
        let reader = Reader::new(self.v2.clone(), NonZeroU32::new(10_000).unwrap());
        Migrator::new(
            reader,
            Store::new(self.v3.clone()),
            Ledger::new(self.v3.clone()),
            Config::default(),
        )
    }

    pub fn ledger(&self) -> Ledger {
        Ledger::new(self.v3.clone())
    }

    /// Insert raw JSON docs into a V2 collection (as V2 has them).
    pub async fn insert_v2(&self, coll: &str, docs: Vec<Value>) {
        if docs.is_empty() {
            return;
        }
        let docs: Vec<Document> = docs
            .into_iter()
            .map(|d| bson::to_document(&d).expect("fixture to bson"))
            .collect();
        self.v2
            .collection::<Document>(coll)
            .insert_many(docs)
            .await
            .expect("insert V2");
        self.v2_guard.lock().await.dirty = true;
    }

    /// Replace (or insert) one V2 doc by `_id`.
    pub async fn put_v2(&self, coll: &str, d: Value) {
        let id = d["_id"].as_str().expect("_id").to_string();
        let d = bson::to_document(&d).unwrap();
        self.v2
            .collection::<Document>(coll)
            .replace_one(doc! {"_id": id}, d)
            .upsert(true)
            .await
            .unwrap();
        self.v2_guard.lock().await.dirty = true;
    }

    /// V2 changes a viz as its ShareDB would: one more op on index.html (the op, then the
    /// snapshot), and a later `lastUpdatedTimestamp` (seconds `at`).
    pub async fn edit_v2_content(&self, viz: &str, text: &str, at: i64) {
        let mut c = self.v2_doc("documentContent", viz).await;
        let v = c["_v"].as_i64().unwrap();
        let i = c["files"]
            .as_array()
            .unwrap()
            .iter()
            .position(|f| f["name"] == "index.html")
            .unwrap();
        let old = c["files"][i]["text"].as_str().unwrap().to_string();
        c["files"][i]["text"] = json!(format!("{text}{old}"));
        c["_v"] = json!(v + 1);
        let op = json!({"_id": format!("{viz}-op-{v}"), "v": v, "d": viz, "m": {"ts": at * 1000},
                        "op": [{"p": ["files", i, "text", 0], "si": text}]});
        self.insert_v2("o_documentContent", vec![op]).await;
        self.put_v2("documentContent", c).await;
        self.edit_v2_info(viz, |info| info["lastUpdatedTimestamp"] = json!(at))
            .await;
    }

    /// V2 changes a viz's `documentInfo` (no timestamp moves unless `edit` moves one).
    pub async fn edit_v2_info(&self, viz: &str, edit: impl FnOnce(&mut Value)) {
        let mut info = self.v2_doc("documentInfo", viz).await;
        edit(&mut info);
        self.put_v2("documentInfo", info).await;
    }

    /// One V2 doc as V2 has it now.
    pub async fn v2_doc(&self, coll: &str, id: &str) -> Value {
        let d = self
            .v2
            .collection::<Document>(coll)
            .find_one(doc! {"_id": id})
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no V2 {coll} {id}"));
        bson::Bson::Document(d).into_relaxed_extjson()
    }

    /// The test wrote V2 itself (a live V2 writer): the next checkpoint takes V2's hash anew.
    pub async fn wrote_v2(&self) {
        self.v2_guard.lock().await.dirty = true;
    }

    /// A V2 `user` doc as V2 has it now.
    pub async fn v2_user_doc(&self, id: &str) -> Value {
        let d = self
            .v2
            .collection::<Document>("user")
            .find_one(doc! {"_id": id})
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no V2 user {id}"));
        bson::Bson::Document(d).into_relaxed_extjson()
    }

    pub async fn delete_v2(&self, coll: &str, id: &str) {
        self.v2
            .collection::<Document>(coll)
            .delete_one(doc! {"_id": id})
            .await
            .unwrap();
        self.v2_guard.lock().await.dirty = true;
    }

    /// V2 checkpoint, taken whenever code under test is about to run or has run (planning,
    /// workers, cleanup): after the test's own writes it records V2's hash; otherwise it asserts
    /// V2 still has that hash. So every test proves the migration never wrote V2.
    pub async fn check_v2(&self) {
        let now = self.hash(&self.v2).await;
        let mut g = self.v2_guard.lock().await;
        match (&g.hash, g.dirty) {
            (Some(before), false) => assert_eq!(
                &now, before,
                "V2 changed although the test did not write it: the migration must never write V2"
            ),
            _ => {
                g.hash = Some(now);
                g.dirty = false;
            }
        }
    }

    /// Load every real fixture into V2, with users synthesized for every referenced id except
    /// `leave_out`. Returns the viz ids.
    pub async fn load_fixtures(&self, leave_out: &[&str]) -> Vec<String> {
        let world = crate::common::World::with_fixtures(leave_out);
        let mut ids: Vec<String> = world.v2.keys().cloned().collect();
        ids.sort();
        for id in &ids {
            self.load_viz(&world.v2[id]).await;
        }
        self.insert_v2("user", world.users.values().cloned().collect())
            .await;
        ids
    }

    pub async fn load_viz(&self, v: &vizhub_migrate::v2::V2Viz) {
        self.insert_v2("documentInfo", vec![v.info.clone()]).await;
        if let Some(c) = &v.content {
            self.insert_v2("documentContent", vec![c.clone()]).await;
        }
        let ops: Vec<Value> = v
            .ops
            .iter()
            .map(|o| {
                let mut o = o.clone();
                // Give each op the viz id it belongs to (`d`), as V2 stores them.
                o["d"] = v.info["_id"].clone();
                o
            })
            .collect();
        self.insert_v2("o_documentContent", ops).await;
    }

    pub async fn plan(&self, selection: Selection) -> PlanReport {
        self.plan_on(&self.amqp_uri, selection).await
    }

    /// [`TestEnv::plan`] on another broker (a test's own RabbitMQ node).
    pub async fn plan_on(&self, amqp_uri: &str, selection: Selection) -> PlanReport {
        self.check_v2().await;
        let conn = broker::connect(amqp_uri).await.expect("broker");
        broker::declare(&conn.create_channel().await.unwrap(), &self.topology)
            .await
            .unwrap();
        let publisher = broker::Publisher::new(&conn).await.unwrap();
        let reader = Reader::new(self.v2.clone(), NonZeroU32::new(10_000).unwrap());
        let report = planner::plan(
            &reader,
            &self.ledger(),
            Some(&publisher),
            &self.topology,
            &selection,
            false,
        )
        .await
        .expect("plan");
        let _ = conn.close(200, "done".into()).await;
        report
    }

    /// Run `n` in-process workers until the queues stay idle for 1 s.
    pub async fn run_workers(&self, n: usize) -> Arc<Stats> {
        self.run_workers_on(n, &self.amqp_uri, || self.migrator())
            .await
    }

    /// `n` in-process workers until idle, on `amqp_uri`, each with a migrator from `migrator`
    /// (fault-injection tests pass clients of their own).
    pub async fn run_workers_on(
        &self,
        n: usize,
        amqp_uri: &str,
        migrator: impl Fn() -> Migrator,
    ) -> Arc<Stats> {
        self.check_v2().await;
        let stats = Arc::new(Stats::default());
        let opts = Options {
            concurrency: 4,
            until_idle: Some(Duration::from_secs(1)),
            drain_deadline: Duration::from_secs(10),
            ..Options::default()
        };
        let runs = (0..n).map(|_| {
            let m = migrator();
            let (uri, t, o, s) = (
                amqp_uri.to_string(),
                self.topology.clone(),
                opts.clone(),
                stats.clone(),
            );
            tokio::spawn(
                async move { worker::run(m, &uri, &t, &o, s, std::future::pending()).await },
            )
        });
        let results = tokio::time::timeout(
            Duration::from_secs(300),
            futures_util::future::join_all(runs),
        )
        .await
        .expect("workers finish within 5 minutes");
        for r in results {
            r.expect("worker task").expect("worker run");
        }
        self.check_v2().await;
        stats
    }

    pub async fn records(&self) -> Vec<VizRecord> {
        self.ledger().all().await.expect("ledger")
    }

    pub async fn record(&self, viz: &str) -> VizRecord {
        self.ledger()
            .get(viz)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no ledger record for {viz}"))
    }

    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let conn = broker::connect(&self.amqp_uri).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let d = broker::queue_depth(&ch, queue).await.unwrap().0;
        let _ = conn.close(200, "".into()).await;
        d
    }

    /// Hash of every collection of a database (docs in `_id` order, canonical BSON bytes).
    pub async fn hash(&self, db: &Database) -> String {
        let mut h = Sha256::new();
        let mut names = db.list_collection_names().await.unwrap();
        names.sort();
        for name in names {
            h.update(name.as_bytes());
            let docs: Vec<Document> = db
                .collection::<Document>(&name)
                .find(doc! {})
                .sort(doc! {"_id": 1})
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            for d in docs {
                h.update(bson::to_vec(&d).unwrap());
            }
        }
        hex::encode(h.finalize())
    }

    /// Every doc of a V3 collection as JSON.
    pub async fn v3_docs(&self, coll: &str) -> Vec<Value> {
        docs(&self.v3, coll).await
    }

    /// Every doc of a V2 collection as JSON (as it is now, live writers included).
    pub async fn v2_docs(&self, coll: &str) -> Vec<Value> {
        docs(&self.v2, coll).await
    }

    pub async fn v3_doc(&self, coll: &str, id: &str) -> Option<Value> {
        let d = self
            .v3
            .collection::<Document>(coll)
            .find_one(doc! {"_id": id})
            .await
            .unwrap();
        d.map(|d| bson::Bson::Document(d).into_relaxed_extjson())
    }

    /// Turn on SecantusDB's (MongoDB's) one `failCommand` failpoint, server-wide: tests that set
    /// it must not run at the same time as each other.
    pub async fn fail_point(&self, mode: Value, data: Value) {
        let cmd = doc! {
            "configureFailPoint": "failCommand",
            "mode": bson::to_bson(&mode).unwrap(),
            "data": bson::to_bson(&data).unwrap(),
        };
        self.client
            .database("admin")
            .run_command(cmd)
            .await
            .expect("configureFailPoint (start SecantusDB with --enable-test-commands)");
    }

    pub async fn fail_point_off(&self) {
        self.client
            .database("admin")
            .run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"})
            .await
            .unwrap();
    }

    /// Drop the databases and queues of this test.
    pub async fn cleanup(self) {
        self.check_v2().await;
        let _ = self.v2.drop().await;
        let _ = self.v3.drop().await;
        if let Ok(conn) = broker::connect(&self.amqp_uri).await {
            if let Ok(ch) = conn.create_channel().await {
                // The binaries declare the production retry delays under the same prefix.
                let binaries = Topology::new(&self.topology.prefix).all_queues();
                for q in self.topology.all_queues().into_iter().chain(binaries) {
                    let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
                }
            }
            let _ = conn.close(200, "".into()).await;
        }
    }
}

impl TestEnv {
    /// A V2 page-view record for each viz of V2 (`eventRecords`, as V2 keeps them), with a
    /// different count each. Returns them by event id.
    pub async fn load_page_views(&self) -> std::collections::BTreeMap<String, Value> {
        let infos: Vec<Document> = self
            .v2
            .collection::<Document>("documentInfo")
            .find(doc! {"owner": {"$exists": true}, "id": {"$exists": true}})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut out = std::collections::BTreeMap::new();
        for (i, info) in infos.iter().enumerate() {
            let (Ok(owner), Ok(viz)) = (info.get_str("owner"), info.get_str("id")) else {
                continue;
            };
            let n = 1000 + 7 * i as i64;
            let id = vizhub_migrate::v2::pageview_event_id(owner, viz);
            let rec = json!({"id": &id, "days": {"2021-03-01": n - 2, "2021-03-02": 2},
                "months": {"2021-03": n}, "years": {"2021": n}, "all": {"all": n}});
            out.insert(id, rec);
        }
        self.insert_v2("eventRecords", out.values().cloned().collect())
            .await;
        out
    }

    /// V3 as its app sees it, by `collection/id`: every live snapshot's payload (Info without
    /// `migratedTimestamp`, the time of the write) and every commit. Asserts on the way that each
    /// snapshot's envelope is one ShareDB writes: `_type` "p", `_v` ≥ 1, `_o` set, `_m.ctime` and
    /// `_m.mtime` numbers.
    pub async fn v3_state(&self) -> std::collections::BTreeMap<String, Value> {
        let mut out = std::collections::BTreeMap::new();
        for coll in vizhub_migrate::v3::collections::SHAREDB {
            for mut d in self.v3_docs(coll).await {
                let id = format!("{coll}/{}", d["_id"].as_str().unwrap());
                if d["_type"].is_null() {
                    continue; // deleted
                }
                assert_eq!(d["_type"], "p", "{id}: {d}");
                assert!(
                    d["_v"].as_i64().is_some_and(|v| v >= 1),
                    "{id}: _v {}",
                    d["_v"]
                );
                assert!(d["_o"].is_object(), "{id}: _o {}", d["_o"]);
                for t in ["ctime", "mtime"] {
                    assert!(d["_m"][t].is_i64(), "{id}: _m.{t} is {}", d["_m"][t]);
                }
                let o = d.as_object_mut().unwrap();
                for k in ["_id", "_type", "_v", "_o", "_m", "migratedTimestamp"] {
                    o.remove(k);
                }
                out.insert(id, d);
            }
        }
        for c in self.v3_docs("commit").await {
            out.insert(format!("commit/{}", c["_id"].as_str().unwrap()), c);
        }
        out
    }

    /// How `state` (from [`TestEnv::v3_state`]) differs from `expected`, a line per document:
    /// its value and the expected one, or "missing". Empty when they are equal.
    pub fn state_diff(
        state: &std::collections::BTreeMap<String, Value>,
        expected: &std::collections::BTreeMap<String, Value>,
    ) -> Vec<String> {
        state
            .iter()
            .filter(|(k, v)| expected.get(*k) != Some(*v))
            .map(|(k, v)| {
                format!(
                    "{k}: {v}\n  expected: {}",
                    expected.get(k).unwrap_or(&Value::Null)
                )
            })
            .chain(
                expected
                    .keys()
                    .filter(|k| !state.contains_key(*k))
                    .map(|k| format!("{k}: missing")),
            )
            .collect()
    }

    /// Asserts that V3's page-view records hold exactly V2's counts (V3 counted none of its own).
    pub fn assert_views_equal_v2(
        state: &std::collections::BTreeMap<String, Value>,
        views: &std::collections::BTreeMap<String, Value>,
        migrated: &[String],
    ) {
        for (id, rec) in views {
            let Some(doc) = state.get(&format!("analyticsevent/{id}")) else {
                let viz = id.rsplit("viz:").next().unwrap();
                assert!(!migrated.iter().any(|m| m == viz), "{id} missing from V3");
                continue;
            };
            for interval in vizhub_migrate::v2::INTERVALS {
                assert_eq!(
                    doc["intervals"].get(interval),
                    rec.get(interval),
                    "{id}: V3 {interval} is not V2's"
                );
            }
        }
    }
}

/// Runs `tests/js/<script>` with Node (the V3 stack's own packages): its exit status and the
/// JSON of its last stdout line.
pub fn node(script: &str, args: &[&str]) -> (bool, Value) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        dir.join("node_modules/sharedb-mongo").is_dir(),
        "npm packages missing: run `npm ci --prefix tests/js` (scripts/test does)"
    );
    let out = std::process::Command::new("node")
        .arg(dir.join(script))
        .args(args)
        .output()
        .expect("Node.js is required (node not on PATH)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let v = serde_json::from_str(text.trim().lines().last().unwrap_or("null"))
        .unwrap_or_else(|_| panic!("{script}: {text}{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), v)
}

/// Every doc of a collection as JSON (relaxed extended JSON, as the V3 app sees numbers).
pub async fn docs(db: &Database, coll: &str) -> Vec<Value> {
    let docs: Vec<Document> = db
        .collection::<Document>(coll)
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    docs.into_iter()
        .map(|d| bson::Bson::Document(d).into_relaxed_extjson())
        .collect()
}

/// A V2 user doc as V2 stored it.
pub fn user_doc(id: &str) -> Value {
    json!({"_id": id, "id": id, "userName": format!("user{id}"), "fullName": null, "email": null,
           "_type": "http://sharejs.org/types/JSONv0", "_v": 1})
}

/// A command's stdout as the one JSON document `--json` promises (the panic shows both streams).
pub fn json_stdout(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is one JSON document ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
