//! Fault injection against the real parts: a broker restarted mid-run (a RabbitMQ node of the
//! test's own), MongoDB failures injected with `configureFailPoint` (SecantusDB and MongoDB
//! both support `failCommand`), SIGTERM under load, malformed input at scale, the V2 read budget
//! measured by command monitoring, and secrets kept out of every output.
//!
//! Every run ends with `planner verify`'s check ([`verify::verify`]): the faults must leave V3
//! exactly as a clean migration of V2 would.

mod common;
#[path = "common/env.rs"]
mod env;
#[path = "common/rabbit_node.rs"]
mod rabbit_node;

use env::TestEnv;
use mongodb::bson::doc;
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use mongodb::Client;
use serde_json::json;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vizhub_migrate::ledger::Ledger;
use vizhub_migrate::migrate::Migrator;
use vizhub_migrate::planner::Selection;
use vizhub_migrate::translate::Config;
use vizhub_migrate::v2::reader::Reader;
use vizhub_migrate::v3::store::Store;
use vizhub_migrate::verify::{self, Scope};
use vizhub_migrate::Outcome;

const LOADING_CSV: &str = "3fd333e335fe4ecb9ee0c819802443b7";

/// `n` forks of Loading CSV created from `created` on, one second apart, each with a short
/// editing history (two sessions).
fn forks(n: u32, created: i64) -> Vec<vizhub_migrate::v2::V2Viz> {
    (0..n)
        .map(|i| {
            let id = format!("{:08x}{:024x}", created, i);
            let t = created + i as i64;
            common::synthetic_viz(
                &id,
                "68416",
                Some(LOADING_CSV),
                t,
                json!([{"name": "index.html", "text": format!("<p>fork {i}</p>\n")}, {"name": "README.md", "text": "🐧\n"}]),
                &[
                    (t + 60, json!([{"p": ["files", 0, "text", 0], "si": "<!-- a -->\n"}])),
                    (t + 7200, json!([{"p": ["files", 1, "text", 2], "si": "Dancing!\n"}])),
                ],
            )
        })
        .collect()
}

impl TestEnv {
    async fn load_all(&self, vizzes: &[vizhub_migrate::v2::V2Viz]) {
        for v in vizzes {
            self.load_viz(v).await;
        }
    }

    /// A client of the test's own, named `app` (failpoints target it by name) and optionally
    /// monitored.
    async fn client_named(&self, app: &str, handler: Option<EventHandler<CommandEvent>>) -> Client {
        let mut o = ClientOptions::parse(&self.mongo_base).await.unwrap();
        o.app_name = Some(app.to_string());
        // A failpoint's "shutting down" error marks the server unknown until the monitor's next
        // check; a real failover closes the monitor's connection and is seen at once, a
        // failpoint is not (the streaming check waits a whole heartbeat): keep it short.
        o.heartbeat_freq = Some(Duration::from_millis(500));
        o.command_event_handler = handler;
        Client::with_options(o).unwrap()
    }

    fn migrator_on(&self, client: &Client, v2_reads_per_sec: u32) -> Migrator {
        self.migrator_split(client, client, v2_reads_per_sec)
    }

    /// A migrator reading V2 through `v2_client` and writing V3 (and the ledger) through
    /// `v3_client`, so a failpoint can target one side only.
    fn migrator_split(
        &self,
        v2_client: &Client,
        v3_client: &Client,
        v2_reads_per_sec: u32,
    ) -> Migrator {
        let v2 = v2_client.database(self.v2.name());
        let v3 = v3_client.database(self.v3.name());
        Migrator::new(
            Reader::new(v2, NonZeroU32::new(v2_reads_per_sec).unwrap()),
            Store::new(v3.clone()),
            Ledger::new(v3),
            Config::default(),
        )
    }

    /// Every viz ended exactly one way, and V3 is what a clean migration of V2 gives.
    async fn assert_clean_result(&self, scope: Scope) -> verify::Report {
        let report = verify::verify(&self.migrator(), scope, |_, _| {})
            .await
            .unwrap();
        assert!(report.mismatches.is_empty(), "{}", report.render());
        assert!(report.compared > 0);
        report
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_run_loses_and_duplicates_nothing() {
    let env = TestEnv::new("broker-restart").await;
    let node = tokio::task::spawn_blocking(rabbit_node::RabbitNode::start)
        .await
        .unwrap();
    // The node restarted here runs the RabbitMQ the rest of this run talks to (scripts/test's
    // 4.0 run points RABBIT_NODE_ROOT at its 4.0 root), or the restart is not tested on that
    // version. Only for a broker of AMQP_URI: a testcontainers broker is whatever its image is.
    let (ours, shared) = (
        rabbit_node::broker_version(&node.uri()),
        rabbit_node::broker_version(&env.amqp_uri),
    );
    eprintln!("restarting RabbitMQ {ours} (the suite's broker: {shared})");
    if std::env::var_os("AMQP_URI").is_some() {
        assert_eq!(
            ours, shared,
            "the restarted node runs the suite's RabbitMQ version"
        );
    }
    let ids = env.load_fixtures(&[]).await;
    // Enough that batched workers are still busy when the broker goes down.
    let extra = forks(240, 1_600_000_000);
    env.load_all(&extra).await;
    let planned = env.plan_on(&node.uri(), Selection::All).await;
    assert_eq!(planned.published as usize, ids.len() + extra.len());

    let uri = node.uri();
    let workers = async { env.run_workers_on(2, &uri, || env.migrator()).await };
    let restart = async {
        // Restart once some jobs are done and most are not.
        let deadline = Instant::now() + Duration::from_secs(120);
        while env.records().await.len() < 5 {
            assert!(Instant::now() < deadline, "no progress before the restart");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::task::block_in_place(|| {
            node.stop_app();
            node.start_app();
        });
        env.records().await.len()
    };
    let (stats, done_at_restart) = tokio::join!(workers, restart);
    assert!(
        done_at_restart < ids.len() + extra.len(),
        "the restart happened mid-run ({done_at_restart} done)"
    );

    let records = env.records().await;
    assert_eq!(records.len(), ids.len() + extra.len(), "one record per viz");
    for r in &records {
        assert!(
            matches!(r.outcome, Outcome::Migrated | Outcome::Unchanged),
            "{}: {:?} {:?}",
            r.viz,
            r.outcome,
            r.reason
        );
    }
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 0);
    // Across the reconnect, migrations of the lost session never ran beside the redelivered
    // copies beyond the limit: two workers at concurrency 4 (they share these counters).
    let most = stats.max_migrations_running.load(Ordering::SeqCst);
    assert!((1..=8).contains(&most), "{most} migrations ran at once");
    let ch = vizhub_migrate::broker::connect(&uri)
        .await
        .unwrap()
        .create_channel()
        .await
        .unwrap();
    for q in [env.topology.work(), env.topology.dead()] {
        let (ready, _) = vizhub_migrate::broker::queue_depth(&ch, &q).await.unwrap();
        assert_eq!(ready, 0, "{q} is empty");
    }
    // Nothing duplicated in V3: one commit chain per viz, exactly as a clean run makes it.
    env.assert_clean_result(Scope::All).await;
    drop(node);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_faults_transient_are_retried_persistent_dead_letter() {
    let env = TestEnv::new("mongo-faults").await;
    let t0 = Instant::now();
    let app = format!("{}-faulty", env.name);
    let client = env.client_named(&app, None).await;
    let ids = env.load_fixtures(&[]).await;

    // 1. Retryable errors on V2 reads and V3 writes (ShutdownInProgress, as in an election).
    env.fail_point(
        json!({"times": 8}),
        json!({"failCommands": ["find", "insert", "update", "delete"], "errorCode": 91, "appName": app}),
    )
    .await;
    env.plan(Selection::All).await;
    let stats = env
        .run_workers_on(2, &env.amqp_uri, || env.migrator_on(&client, 10_000))
        .await;
    env.fail_point_off().await;
    for id in &ids {
        let r = env.record(id).await;
        assert!(
            matches!(r.outcome, Outcome::Migrated | Outcome::Unchanged),
            "{id}: {:?}",
            r.reason
        );
    }
    assert_eq!(
        stats.dead_lettered.load(Ordering::Relaxed),
        0,
        "transient faults never dead-letter"
    );
    assert_eq!(env.queue_depth(&env.topology.dead()).await, 0);
    eprintln!("retryable errors: {:?}", t0.elapsed());

    // 2. Dropped connections on reads and writes.
    let second = forks(10, 1_600_000_000);
    env.load_all(&second).await;
    env.fail_point(
        json!({"times": 4}),
        json!({"failCommands": ["find", "insert", "update"], "closeConnection": true, "appName": app}),
    )
    .await;
    env.plan(Selection::Window {
        from: 1_600_000_000,
        to: 1_600_001_000,
    })
    .await;
    let stats = env
        .run_workers_on(2, &env.amqp_uri, || env.migrator_on(&client, 10_000))
        .await;
    env.fail_point_off().await;
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 0);
    env.assert_clean_result(Scope::All).await;
    eprintln!("dropped connections: {:?}", t0.elapsed());

    // 3. A V2 that keeps failing (V3 and the ledger answer): retries run out, the job is
    // dead-lettered with a clear reason, recorded `failed`.
    let v2_app = format!("{app}-v2");
    let v2_client = env.client_named(&v2_app, None).await;
    let third = forks(1, 1_700_000_000);
    env.load_all(&third).await;
    let viz = third[0].info["_id"].as_str().unwrap().to_string();
    env.fail_point(
        json!("alwaysOn"),
        json!({"failCommands": ["find"], "errorCode": 91, "appName": v2_app}),
    )
    .await;
    env.plan(Selection::Window {
        from: 1_700_000_000,
        to: 1_700_001_000,
    })
    .await;
    let stats = env
        .run_workers_on(1, &env.amqp_uri, || {
            env.migrator_split(&v2_client, &client, 10_000)
        })
        .await;
    env.fail_point_off().await;
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 1);
    assert_eq!(env.queue_depth(&env.topology.dead()).await, 1);
    let r = env.record(&viz).await;
    assert_eq!(r.outcome, Outcome::Failed);
    let reason = r.reason.unwrap_or_default();
    assert!(
        reason.contains(&viz) && reason.contains("reading V2"),
        "{reason}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_and_exits_zero() {
    let env = TestEnv::new("sigterm").await;
    let ids = env.load_fixtures(&[]).await;
    let extra = forks(60, 1_600_000_000);
    env.load_all(&extra).await;
    env.plan(Selection::All).await;
    let total = ids.len() + extra.len();

    let mut worker = env
        .worker_command()
        .args([
            "--concurrency",
            "4",
            "--drain-deadline",
            "10",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .spawn()
        .expect("worker binary");
    let deadline = Instant::now() + Duration::from_secs(120);
    while env.records().await.len() < 5 {
        assert!(Instant::now() < deadline, "worker made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signalled = Instant::now();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let status = loop {
        if let Some(s) = worker.try_wait().unwrap() {
            break s;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(25),
            "worker did not exit within the drain deadline"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");
    let done_by_first = env.records().await.len();
    assert!(done_by_first < total, "SIGTERM came mid-run");
    // A job the binary sent to one of its retry queues (production delays, seconds) comes back
    // to the work queue when its delay ends: wait for that before the in-process worker runs.
    let binary = vizhub_migrate::broker::Topology::new(&env.topology.prefix);
    for q in binary.all_queues().iter().filter(|q| q.contains(".retry.")) {
        let deadline = Instant::now() + Duration::from_secs(200);
        while env.queue_depth(q).await > 0 {
            assert!(Instant::now() < deadline, "{q} did not drain");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Whatever it had not finished went back to the queue: a second worker completes the run.
    env.run_workers(1).await;
    let records = env.records().await;
    assert_eq!(records.len(), total);
    assert!(records
        .iter()
        .all(|r| matches!(r.outcome, Outcome::Migrated | Outcome::Unchanged)));
    assert_eq!(env.queue_depth(&env.topology.dead()).await, 0);
    env.assert_clean_result(Scope::All).await;
    env.cleanup().await;
}

/// Generated malformed V2 documents: wrong types, missing fields, broken op logs, huge files,
/// deep fork chains and fork cycles. Every job ends in exactly one recorded outcome, no panic
/// escapes (a panic would be dead-lettered as `panic`), and no V3 `info` (what V3 lists) exists
/// for a viz that did not migrate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_at_scale_ends_in_one_outcome_each() {
    let env = TestEnv::new("malformed").await;
    env.load_fixtures(&[]).await;
    let mut seed = 0x5eed_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let base = forks(1, 1_600_000_000).remove(0);
    let mut vizzes = Vec::new();
    let id_of = |n: usize| format!("{:032x}", 0xbad0000 + n);
    let wrong_values = [
        json!(null),
        json!(7),
        json!("x"),
        json!([1, 2]),
        json!({"a": 1}),
        json!(true),
    ];
    for n in 0..48 {
        let mut v = base.clone();
        let id = id_of(n);
        for d in [Some(&mut v.info), v.content.as_mut()]
            .into_iter()
            .flatten()
        {
            d["_id"] = json!(id);
            d["id"] = json!(id);
        }
        for op in v.ops.iter_mut() {
            op["d"] = json!(id);
            op["_id"] = json!(format!("{id}-{}", op["v"]));
        }
        let pick = |r: u64| wrong_values[(r % wrong_values.len() as u64) as usize].clone();
        match n % 8 {
            0 => {
                let field = [
                    "title",
                    "owner",
                    "createdTimestamp",
                    "height",
                    "documentType",
                    "forkedFrom",
                ][(next() % 6) as usize];
                v.info[field] = pick(next());
            }
            1 => {
                let c = v.content.as_mut().unwrap();
                match next() % 3 {
                    0 => c["files"] = pick(next()),
                    1 => c["files"][0]["text"] = pick(next()),
                    _ => c["files"][0] = pick(next()),
                }
            }
            2 => {
                let i = (next() % v.ops.len() as u64) as usize;
                match next() % 4 {
                    0 => v.ops[i]["op"] = pick(next()),
                    1 => v.ops[i]["v"] = pick(next()),
                    2 => v.ops[i]["op"] = json!([{"p": ["files", 9, "text", 0], "sd": "nope"}]),
                    _ => v.ops[i]["m"] = pick(next()),
                }
            }
            3 => {
                // 6 MiB, over the content limit.
                v.content.as_mut().unwrap()["files"][0]["text"] = json!("y".repeat(6 << 20));
            }
            4 => {
                let obj = v.info.as_object_mut().unwrap();
                let keys: Vec<String> = obj.keys().cloned().collect();
                obj.remove(&keys[(next() % keys.len() as u64) as usize]);
            }
            5 => {
                // A fork cycle: this viz and the previous cycle member point at each other.
                v.info["forkedFrom"] = json!(id_of(if n % 16 == 5 { n + 8 } else { n - 8 }));
            }
            6 => {
                // A deep fork chain: each fork 6 hangs from the one before (8 apart).
                if n >= 8 {
                    v.info["forkedFrom"] = json!(id_of(n - 8));
                }
            }
            _ => {
                v.content.as_mut().unwrap()["_v"] = pick(next());
            }
        }
        vizzes.push(v);
    }
    // A deep chain of forks, each created after its parent.
    let depth = 36;
    for k in 0..depth {
        let mut v = forks(1, 1_650_000_000 + k as i64).remove(0);
        let id = format!("{:032x}", 0xdee9000 + k);
        for d in [Some(&mut v.info), v.content.as_mut()]
            .into_iter()
            .flatten()
        {
            d["_id"] = json!(id);
            d["id"] = json!(id);
        }
        for op in v.ops.iter_mut() {
            op["d"] = json!(id);
            op["_id"] = json!(format!("{id}-{}", op["v"]));
        }
        if k > 0 {
            v.info["forkedFrom"] = json!(format!("{:032x}", 0xdee9000 + k - 1));
        }
        vizzes.push(v);
    }
    env.load_all(&vizzes).await;
    let report = env.plan(Selection::All).await;
    // Deep chains migrate parents recursively: run the last (deepest) fork first.
    let stats = env.run_workers(2).await;

    let records = env.records().await;
    assert_eq!(
        records.len() as u64,
        report.published,
        "one outcome per job"
    );
    assert!(
        records
            .iter()
            .all(|r| r.error_kind.as_deref() != Some("panic")),
        "no panic: {:?}",
        records
            .iter()
            .filter(|r| r.error_kind.as_deref() == Some("panic"))
            .collect::<Vec<_>>()
    );
    let dead = stats.dead_lettered.load(Ordering::Relaxed);
    let failed = records
        .iter()
        .filter(|r| r.outcome == Outcome::Failed)
        .count() as u64;
    if dead != failed {
        let conn = vizhub_migrate::broker::connect(&env.amqp_uri)
            .await
            .unwrap();
        eprintln!("DLQ depth {}", env.queue_depth(&env.topology.dead()).await);
        let letters = vizhub_migrate::dlq::list(&conn, &env.topology)
            .await
            .unwrap();
        for l in &letters {
            eprintln!("DLQ: {l:?}");
        }
        for r in records.iter().filter(|r| r.outcome == Outcome::Failed) {
            eprintln!("failed: {} {:?}", r.viz, r.reason);
        }
    }
    assert_eq!(dead, failed, "every failure is in the DLQ, once");
    assert!(failed > 0 && records.iter().any(|r| r.outcome == Outcome::Skipped));
    for r in &records {
        if let Some(reason) = r.reason.as_deref().filter(|_| r.outcome == Outcome::Failed) {
            assert!(
                reason.contains(&r.viz),
                "the reason names the viz: {reason}"
            );
        }
    }
    // What V3 lists is complete: an info doc only for vizzes that migrated.
    let migrated: std::collections::HashSet<&str> = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Migrated | Outcome::Unchanged))
        .map(|r| r.viz.as_str())
        .collect();
    for info in env.v3_docs("info").await {
        let id = info["_id"].as_str().unwrap();
        assert!(migrated.contains(id), "info for {id} which did not migrate");
    }
    env.assert_clean_result(Scope::All).await;
    env.cleanup().await;
}

/// The V2 read rate, measured by counting the commands the V2 client really sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_reads_stay_within_the_budget() {
    let env = TestEnv::new("read-budget").await;
    env.load_fixtures(&[]).await;
    // A batch reads V2 in ~5 queries: enough vizzes for 3 budgets' worth of reads.
    env.load_all(&forks(120, 1_600_000_000)).await;
    env.plan(Selection::All).await;

    let reads: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = reads.clone();
    let handler = EventHandler::callback(move |e: CommandEvent| {
        if let CommandEvent::Started(s) = e {
            if ["find", "getMore", "aggregate", "count"].contains(&s.command_name.as_str()) {
                seen.lock().unwrap().push(Instant::now());
            }
        }
    });
    const BUDGET: u32 = 20;
    let monitored = env
        .client_named(&format!("{}-v2", env.name), Some(handler))
        .await;
    let plain = env.client.clone();
    // The V2 side monitored; V3 and the ledger on the test's own client.
    let make = || {
        Migrator::new(
            Reader::new(
                monitored.database(env.v2.name()),
                NonZeroU32::new(BUDGET).unwrap(),
            ),
            Store::new(plain.database(env.v3.name())),
            Ledger::new(plain.database(env.v3.name())),
            Config::default(),
        )
    };
    // Two workers share nothing but the process: each has its own limiter, like two pods, so
    // the budget here is per worker — one worker measures it exactly.
    env.run_workers_on(1, &env.amqp_uri, make).await;
    let times = reads.lock().unwrap().clone();
    assert!(
        times.len() > 3 * BUDGET as usize,
        "enough reads to measure: {}",
        times.len()
    );
    // governor's quota: a burst of one budget, then one read per 1/budget s. So any one-second
    // window holds at most two budgets, and the whole run at most budget × elapsed + one burst.
    let mut worst = 0;
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        worst = worst.max(in_window);
    }
    // The clock here is when the driver reports a command started, which lags the token by
    // scheduling delays that vary under load (2 cores, tests in parallel): allow half a second
    // of budget for that jitter. A limiter that did not hold would exceed these many times over.
    let jitter = BUDGET as usize / 2;
    assert!(
        worst <= 2 * BUDGET as usize + jitter,
        "{worst} V2 reads in one second, budget {BUDGET}"
    );
    let elapsed = times.last().unwrap().duration_since(times[0]).as_secs_f64();
    let allowed = BUDGET as f64 * elapsed + BUDGET as f64 + jitter as f64;
    assert!(
        times.len() as f64 <= allowed,
        "{} V2 reads in {elapsed:.1}s, budget {BUDGET}/s allows {allowed:.0}",
        times.len()
    );
    eprintln!(
        "V2 reads: {} in {elapsed:.1}s = {:.1}/s (budget {BUDGET}/s); worst second {worst}",
        times.len(),
        times.len() as f64 / elapsed
    );
    env.cleanup().await;
}

/// Passwords in all three URIs never appear in logs or error messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_output() {
    const V2_PW: &str = "v2-s3cret-pw";
    const V3_PW: &str = "v3-s3cret-pw";
    const AMQP_PW: &str = "amqp-s3cret-pw";
    let env = TestEnv::new("secrets").await;
    let port = env
        .mongo_base
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let v2 = format!("mongodb://migrator:{V2_PW}@127.0.0.1:{port}/vizhub2?serverSelectionTimeoutMS=2000&connectTimeoutMS=2000");
    let v3 = format!("mongodb://migrator:{V3_PW}@127.0.0.1:{port}/vizhub3?serverSelectionTimeoutMS=2000&connectTimeoutMS=2000");
    let amqp = env
        .amqp_uri
        .replace("guest:guest@", &format!("guest:{AMQP_PW}@"));
    let runs: Vec<(&str, Vec<&str>)> = vec![
        (
            "worker",
            vec!["--until-idle", "1", "--metrics-addr", "127.0.0.1:0"],
        ),
        ("worker", vec!["preview", LOADING_CSV]),
        ("planner", vec!["plan", "--all"]),
        ("planner", vec!["status"]),
        ("planner", vec!["verify", "--all"]),
        ("dlq", vec!["stats"]),
    ];
    for (bin, args) in runs {
        let exe = match bin {
            "worker" => env!("CARGO_BIN_EXE_worker"),
            "planner" => env!("CARGO_BIN_EXE_planner"),
            _ => env!("CARGO_BIN_EXE_dlq"),
        };
        for format in ["json", "text"] {
            let out = std::process::Command::new(exe)
                .args(&args)
                .env("V2_MONGO_URI", &v2)
                .env("V3_MONGO_URI", &v3)
                .env("AMQP_URI", &amqp)
                .env("QUEUE_PREFIX", &env.topology.prefix)
                .env("LOG_FORMAT", format)
                .env("RUST_LOG", "debug")
                .output()
                .unwrap();
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                !out.status.success(),
                "{bin} {args:?} cannot succeed with these credentials: {all}"
            );
            for pw in [V2_PW, V3_PW, AMQP_PW] {
                assert!(
                    !all.contains(pw),
                    "{bin} {args:?} ({format}) printed a password:\n{all}"
                );
            }
            assert!(!all.trim().is_empty(), "{bin} {args:?} says why it failed");
        }
    }
    env.cleanup().await;
}

/// A job whose transient failure sends it to a retry queue that was deleted mid-run: the
/// mandatory publish comes back, the delivery is requeued (never acked), and once the fault is
/// gone the job migrates. Nothing is lost, nothing dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_to_a_deleted_retry_queue_is_requeued_not_lost() {
    use std::sync::Arc;
    use vizhub_migrate::worker::{self, Options, Stats};
    let env = TestEnv::new("retry-deleted").await;
    let app = format!("{}-faulty", env.name);
    let client = env.client_named(&app, None).await;
    env.load_fixtures(&[]).await;
    let (stats, stop) = (
        Arc::new(Stats::default()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let run = {
        let (m, uri, t, s, stop) = (
            env.migrator_on(&client, 10_000),
            env.amqp_uri.clone(),
            env.topology.clone(),
            stats.clone(),
            stop.clone(),
        );
        let opts = Options {
            concurrency: 1,
            until_idle: None,
            drain_deadline: Duration::from_secs(5),
            ..Options::default()
        };
        tokio::spawn(async move {
            worker::run(m, &uri, &t, &opts, s, async move { stop.notified().await }).await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stats.broker_connected.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "the worker did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The worker has declared its queues; the first retry queue now goes away, and every V3
    // insert of the worker fails as in an election.
    let conn = vizhub_migrate::broker::connect(&env.amqp_uri)
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(env.topology.retry(0).as_str().into(), Default::default())
        .await
        .unwrap();
    env.fail_point(
        json!("alwaysOn"),
        json!({"failCommands": ["insert"], "errorCode": 91, "appName": app}),
    )
    .await;
    let conn2 = vizhub_migrate::broker::connect(&env.amqp_uri)
        .await
        .unwrap();
    let p = vizhub_migrate::broker::Publisher::new(&conn2)
        .await
        .unwrap();
    p.publish(
        &env.topology.work(),
        vizhub_migrate::broker::Message {
            body: serde_json::to_vec(&json!({"viz": LOADING_CSV, "batch": null})).unwrap(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    while stats.moves_failed.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "no failed move");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.fail_point_off().await;
    while env
        .ledger()
        .get(LOADING_CSV)
        .await
        .unwrap()
        .is_none_or(|r| r.outcome != Outcome::Migrated)
    {
        assert!(Instant::now() < deadline, "the job never migrated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.notify_one();
    run.await.unwrap().unwrap();
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 0);
    assert_eq!(env.queue_depth(&env.topology.work()).await, 0);
    let _ = conn.close(200, "".into()).await;
    let _ = conn2.close(200, "".into()).await;
    env.cleanup().await;
}
