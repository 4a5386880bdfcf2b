//! The worker's batches ([`Migrator::migrate_batch`]) against the real MongoDB-protocol server:
//! a batch writes exactly what one job at a time writes (snapshots, commits, op logs, ledger
//! outcomes) with a few V2 queries per batch, not per viz; a batch stopped between any two of
//! its writes and run again ends as a clean run; forks of one hot parent migrated by racing
//! pods leave no lost-race op in the parent's op log.

mod common;
#[path = "common/env.rs"]
mod env;

use env::TestEnv;
use serde_json::json;
use std::collections::BTreeMap;
use vizhub_migrate::job::Job;
use vizhub_migrate::migrate::Migrator;
use vizhub_migrate::v2::V2Viz;
use vizhub_migrate::verify::{self, Scope};
use vizhub_migrate::{Outcome, PRIMORDIAL_VIZ_ID};

const LOADING_CSV: &str = "3fd333e335fe4ecb9ee0c819802443b7";
const PENGUIN: &str = "a56e821963b849b897dd51db26067db9";
/// A fixture with a few ops in its log (Loading CSV and Penguin have none).
const DANGLING: &str = "366c38ba5ebc4631b4bd936f3b709744";

/// `viz` as a new V2 viz `id` forked from `parent`.
fn copy_of(viz: &V2Viz, id: &str, parent: &str, created: i64) -> V2Viz {
    let mut c = viz.clone();
    for field in ["_id", "id"] {
        c.info[field] = json!(id);
        c.content.as_mut().unwrap()[field] = json!(id);
    }
    c.info["forkedFrom"] = json!(parent);
    c.info["createdTimestamp"] = json!(created);
    for op in &mut c.ops {
        op["d"] = json!(id);
    }
    c
}

/// The fixtures and `n` copies: forks of Loading CSV, of the primordial viz, and of the copy
/// before (a chain inside one batch). Returns the jobs in the planner's order (creation time).
async fn load(env: &TestEnv, n: usize) -> Vec<String> {
    env.load_fixtures(&[]).await;
    let fixtures = common::World::with_fixtures(&[]);
    let created = fixtures.v2[LOADING_CSV].info["createdTimestamp"]
        .as_i64()
        .unwrap();
    for i in 0..n {
        let id = format!("{i:032x}");
        let at = created + 1 + i as i64;
        let copy = match i % 3 {
            0 => copy_of(&fixtures.v2[PENGUIN], &id, LOADING_CSV, at),
            1 => copy_of(&fixtures.v2[LOADING_CSV], &id, PRIMORDIAL_VIZ_ID, at),
            _ => copy_of(&fixtures.v2[PENGUIN], &id, &format!("{:032x}", i - 1), at),
        };
        env.load_viz(&copy).await;
    }
    // A fork created before its parent (copy 4) had any commit: no fork point, so it hangs
    // from the primordial viz; planned before its parent.
    let early = copy_of(
        &fixtures.v2[PENGUIN],
        &format!("{:032x}", 0xea),
        &format!("{:032x}", 4),
        created - 10,
    );
    env.load_viz(&early).await;
    env.load_page_views().await;
    let mut infos: Vec<(i64, String)> = env
        .v2_docs("documentInfo")
        .await
        .iter()
        .map(|d| {
            (
                d["createdTimestamp"].as_f64().unwrap_or(0.0) as i64,
                d["_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    infos.sort();
    infos.into_iter().map(|(_, id)| id).collect()
}

fn jobs(ids: &[String]) -> Vec<Job> {
    jobs_of(ids, "b1")
}

fn jobs_of(ids: &[String], batch: &str) -> Vec<Job> {
    ids.iter()
        .map(|viz| Job {
            viz: viz.clone(),
            batch: Some(batch.into()),
        })
        .collect()
}

/// Every op log: `collection/doc` → the versions of its ops, in order.
async fn op_logs(env: &TestEnv) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for coll in vizhub_migrate::v3::collections::SHAREDB {
        for op in env.v3_docs(&format!("o_{coll}")).await {
            let key = format!("{coll}/{}", op["d"].as_str().unwrap());
            out.entry(key).or_default().push(op["v"].as_i64().unwrap());
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// Ledger outcomes and reasons, by viz.
async fn outcomes(env: &TestEnv) -> BTreeMap<String, (Outcome, Option<String>)> {
    env.records()
        .await
        .into_iter()
        .map(|r| (r.viz, (r.outcome, r.reason)))
        .collect()
}

async fn run_batches(m: &Migrator, ids: &[String], size: usize) -> Vec<Outcome> {
    run_batches_of(m, ids, size, "b1").await
}

async fn run_batches_of(m: &Migrator, ids: &[String], size: usize, batch: &str) -> Vec<Outcome> {
    let mut out = Vec::new();
    for chunk in jobs_of(ids, batch).chunks(size) {
        for (job, r) in chunk.iter().zip(m.migrate_batch(chunk).await) {
            let done = r.unwrap_or_else(|e| panic!("{}: {e}", job.viz));
            out.push(done.outcome);
        }
    }
    out
}

async fn verify_clean(m: &Migrator, compared: usize) {
    let report = verify::verify(m, Scope::All, |_, _| {}).await.unwrap();
    assert!(report.mismatches.is_empty(), "{}", report.render());
    assert_eq!(report.compared, compared as u64, "{}", report.render());
}

/// The fixtures migrated, and `parents.len()` copies of Penguin loaded in V2 (not migrated),
/// copy `i` forking `parents[i]`, its id counting up from `first_id`. Returns the copies' ids,
/// Loading CSV's `forksCount` after the fixtures, and how many fixtures there are.
async fn fixtures_then_forks(
    env: &TestEnv,
    first_id: u32,
    parents: &[&str],
) -> (Vec<String>, i64, usize) {
    env.load_fixtures(&[]).await;
    let fixtures = common::World::with_fixtures(&[]);
    let created = fixtures.v2[LOADING_CSV].info["createdTimestamp"]
        .as_i64()
        .unwrap();
    let ids: Vec<String> = (0..parents.len())
        .map(|i| format!("{:032x}", first_id as usize + i))
        .collect();
    for (i, (id, parent)) in ids.iter().zip(parents).enumerate() {
        let copy = copy_of(&fixtures.v2[PENGUIN], id, parent, created + 1 + i as i64);
        env.load_viz(&copy).await;
    }
    let mut first: Vec<String> = fixtures.v2.keys().cloned().collect();
    first.sort_by_key(|id| fixtures.v2[id].info["createdTimestamp"].as_i64());
    run_batches(&env.migrator(), &first, 8).await;
    let counted = env.v3_doc("info", LOADING_CSV).await.unwrap()["forksCount"]
        .as_i64()
        .unwrap();
    (ids, counted, fixtures.v2.len())
}

/// A V3 command monitor counting full recounts of a `forksCount` (aggregates matching on
/// `forkedFrom`), the fallback of a parent whose count cannot be moved by its new forks.
fn full_recounts() -> (
    mongodb::event::EventHandler<mongodb::event::command::CommandEvent>,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use mongodb::bson::Bson;
    use mongodb::event::command::CommandEvent;
    use std::sync::atomic::{AtomicU64, Ordering};
    let recounts = std::sync::Arc::new(AtomicU64::new(0));
    let seen = recounts.clone();
    let handler = mongodb::event::EventHandler::callback(move |e: CommandEvent| {
        if let CommandEvent::Started(s) = e {
            let counts_forks = s.command_name == "aggregate"
                && s.command.get_array("pipeline").is_ok_and(|p| {
                    p.iter().any(|stage| {
                        matches!(stage, Bson::Document(d) if d.get_document("$match")
                            .is_ok_and(|m| m.contains_key("forkedFrom")))
                    })
                });
            if counts_forks {
                seen.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    (handler, recounts)
}

/// A V3 command monitor that holds the migrator it watches: after each of the first `times`
/// commands `pick` selects has succeeded, it tells the test and blocks that migrator's command
/// until the test lets it go ([`Hold::wait`], [`Hold::release`]): a race set up without sleeps.
struct Hold {
    held: tokio::sync::mpsc::UnboundedReceiver<()>,
    go: std::sync::mpsc::Sender<()>,
}

impl Hold {
    fn after(
        pick: impl Fn(&mongodb::event::command::CommandStartedEvent) -> bool + Send + Sync + 'static,
        times: u32,
    ) -> (
        mongodb::event::EventHandler<mongodb::event::command::CommandEvent>,
        Hold,
    ) {
        use mongodb::event::command::CommandEvent;
        use std::sync::Mutex;
        let (held_tx, held) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let picked: Mutex<Vec<i32>> = Mutex::default();
        let left = Mutex::new(times);
        let handler = mongodb::event::EventHandler::callback(move |e: CommandEvent| match e {
            CommandEvent::Started(s) if pick(&s) => picked.lock().unwrap().push(s.request_id),
            CommandEvent::Succeeded(s) if picked.lock().unwrap().contains(&s.request_id) => {
                let mut left = left.lock().unwrap();
                if *left > 0 {
                    *left -= 1;
                    held_tx.send(()).unwrap();
                    go_rx.lock().unwrap().recv().unwrap();
                }
            }
            _ => {}
        });
        (handler, Hold { held, go })
    }

    /// Until the watched migrator is held (at most 2 minutes: a bound, not a synchronization,
    /// so a migrator that never gets there fails the test instead of hanging CI).
    async fn wait(&mut self, what: &str) {
        tokio::time::timeout(std::time::Duration::from_secs(120), self.held.recv())
            .await
            .unwrap_or_else(|_| panic!("not held within 2 minutes: {what}"))
            .unwrap_or_else(|| panic!("never held: {what}"));
    }

    fn release(&self) {
        self.go.send(()).unwrap();
    }
}

/// A client of `env`'s server whose commands pass through `handler`.
async fn client_with(
    env: &TestEnv,
    handler: mongodb::event::EventHandler<mongodb::event::command::CommandEvent>,
) -> mongodb::Client {
    let mut o = mongodb::options::ClientOptions::parse(&env.mongo_base)
        .await
        .unwrap();
    o.command_event_handler = Some(handler);
    mongodb::Client::with_options(o).unwrap()
}

/// A migrator of `env` reading V2 through `v2` and writing V3 through `v3`.
fn migrator_on(env: &TestEnv, v2: &mongodb::Client, v3: &mongodb::Client) -> Migrator {
    Migrator::new(
        vizhub_migrate::v2::reader::Reader::new(
            v2.database(env.v2.name()),
            std::num::NonZeroU32::new(10_000).unwrap(),
        ),
        vizhub_migrate::v3::store::Store::new(v3.database(env.v3.name())),
        vizhub_migrate::ledger::Ledger::new(v3.database(env.v3.name())),
        vizhub_migrate::translate::Config::default(),
    )
}

/// A migrator of `env` whose V3 commands pass through `handler` (V2 unmonitored).
async fn monitored_migrator(
    env: &TestEnv,
    handler: mongodb::event::EventHandler<mongodb::event::command::CommandEvent>,
) -> Migrator {
    migrator_on(env, &env.client, &client_with(env, handler).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_writes_what_one_job_at_a_time_writes() {
    let mut env = TestEnv::new("batchsame").await;
    let ids = load(&env, 60).await;
    // One job at a time, in the planner's order.
    let alone = env.migrator();
    for viz in &ids {
        alone
            .migrate(viz, Some("b1"))
            .await
            .unwrap_or_else(|e| panic!("{viz}: {e}"));
    }
    let (state, ops, ledger) = (
        env.v3_state().await,
        op_logs(&env).await,
        outcomes(&env).await,
    );
    let base = env.v3.clone();
    env.v3 = env.client.database(&format!("{}_b", base.name()));
    let m = env.migrator();
    let (v2_before, _) = m.v2.counters();
    let done = run_batches(&m, &ids, 32).await;
    assert!(done.iter().all(|o| *o == Outcome::Migrated), "{done:?}");
    let (v2_after, _) = m.v2.counters();
    // Five queries a batch (infos, contents, op logs, users, page views), plus the reads of
    // the vizzes that run alone (the fork of a viz missing from V2, ~6 each). One job at a
    // time costs six per viz: here ~380.
    let v2_queries = v2_after - v2_before;
    assert!(
        v2_queries * 2 <= ids.len() as u64,
        "{v2_queries} V2 queries for {} vizzes in batches of 32",
        ids.len()
    );
    let diff = TestEnv::state_diff(&env.v3_state().await, &state);
    assert!(diff.is_empty(), "batched V3 differs:\n{}", diff.join("\n"));
    assert_eq!(env.v3_state().await.len(), state.len());
    // Op logs: the same, but for the parents' infos, whose `forksCount` a batch recounts once
    // per batch for all its forks (one op) where one job at a time recounts once per fork.
    let batched = op_logs(&env).await;
    assert_eq!(
        batched.keys().collect::<Vec<_>>(),
        ops.keys().collect::<Vec<_>>()
    );
    for (doc, versions) in &batched {
        let alone = &ops[doc];
        if versions != alone {
            assert!(
                doc.starts_with("info/") && versions.len() < alone.len(),
                "{doc}: ops at {versions:?}, one job at a time {alone:?}"
            );
        }
    }
    let (parent, alone) = (
        format!("info/{LOADING_CSV}"),
        &ops[&format!("info/{LOADING_CSV}")],
    );
    assert!(
        batched[&parent].len() * 4 < alone.len(),
        "{parent}: {} ops batched, {} one job at a time",
        batched[&parent].len(),
        alone.len()
    );
    // Same outcomes and reasons; but a parent that one job at a time migrated first for a fork
    // planned before it says so, where the batch migrated it in its own job.
    let recorded = outcomes(&env).await;
    assert_eq!(recorded.len(), ledger.len());
    for (viz, (outcome, reason)) in &ledger {
        let (b_outcome, b_reason) = &recorded[viz];
        assert_eq!(b_outcome, outcome, "{viz}");
        if !reason
            .as_deref()
            .is_some_and(|r| r.starts_with("migrated earlier in this batch"))
        {
            assert_eq!(b_reason, reason, "{viz}");
        }
    }
    verify_clean(&env.migrator(), ids.len()).await;
    // Planned again (a later batch): every job unchanged, nothing written.
    let trips = m.v3.round_trips();
    let again = run_batches_of(&m, &ids, 32, "b2").await;
    assert!(again.iter().all(|o| *o == Outcome::Unchanged), "{again:?}");
    assert!(
        // Each batch reads its infos and contents (two queries), and writes nothing.
        m.v3.round_trips() - trips <= 2 * ids.len().div_ceil(32) as u64,
        "a re-run made {} V3 round trips",
        m.v3.round_trips() - trips
    );
    assert_eq!(op_logs(&env).await, batched);
    env.check_v2().await;
    env.v3.drop().await.unwrap();
    env.v3 = base;
    env.cleanup().await;
}

/// One batch stopped after its n-th write, for every n, then run again (by a new pod or the same
/// one, alternately): V3 ends as a clean run leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stopped_between_any_two_writes_ends_as_a_clean_run() {
    let mut env = TestEnv::new("batchstops").await;
    let ids = load(&env, 9).await;
    let m = env.migrator();
    run_batches(&m, &ids, 64).await;
    let clean = env.v3_state().await;
    let base = env.v3.clone();
    let mut stops = 0;
    for n in 0.. {
        env.v3 = env.client.database(&format!("{}_s{n}", base.name()));
        let m = env.migrator();
        m.v3.stop_after_writes(Some(n));
        let results = m.migrate_batch(&jobs(&ids)).await;
        if results.iter().all(Result::is_ok) {
            env.v3.drop().await.unwrap();
            break;
        }
        m.v3.stop_after_writes(None);
        let again = if n % 2 == 0 { env.migrator() } else { m };
        let done = run_batches(&again, &ids, 64).await;
        assert_eq!(done.len(), ids.len());
        let state = env.v3_state().await;
        let diff = TestEnv::state_diff(&state, &clean);
        assert!(
            diff.is_empty(),
            "stopped after write {n}, V3 differs from a clean run:\n{}",
            diff.join("\n")
        );
        verify_clean(&env.migrator(), ids.len()).await;
        env.v3.drop().await.unwrap();
        stops += 1;
    }
    assert!(stops >= 10, "the batch was stopped at only {stops} points");
    env.v3 = base;
    env.cleanup().await;
}

/// 80 forks of one parent, in batches of 8 spread over four racing pods: the parent's
/// `forksCount` is right and its op log holds one op per version (no lost-race op left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_batches_of_a_hot_parent_leave_no_lost_race_ops() {
    let env = TestEnv::new("batchhot").await;
    env.load_fixtures(&[]).await;
    let fixtures = common::World::with_fixtures(&[]);
    let created = fixtures.v2[LOADING_CSV].info["createdTimestamp"]
        .as_i64()
        .unwrap();
    let mut forks = Vec::new();
    for i in 0..80 {
        let id = format!("{i:032x}");
        let copy = copy_of(
            &fixtures.v2[PENGUIN],
            &id,
            LOADING_CSV,
            created + 1 + i as i64,
        );
        env.load_viz(&copy).await;
        forks.push(id);
    }
    let m = env.migrator();
    let mut first: Vec<String> = fixtures.v2.keys().cloned().collect();
    first.sort_by_key(|id| fixtures.v2[id].info["createdTimestamp"].as_i64());
    run_batches(&m, &first, 8).await;
    let before = env.v3_doc("info", LOADING_CSV).await.unwrap()["forksCount"]
        .as_i64()
        .unwrap();
    let pods: Vec<Migrator> = (0..4).map(|_| env.migrator()).collect();
    let runs = forks.chunks(8).enumerate().map(|(i, chunk)| {
        let m = pods[i % pods.len()].clone();
        let chunk = jobs(chunk);
        tokio::spawn(async move {
            for (job, r) in chunk.iter().zip(m.migrate_batch(&chunk).await) {
                r.unwrap_or_else(|e| panic!("{}: {e}", job.viz));
            }
        })
    });
    for r in futures_util::future::join_all(runs).await {
        r.unwrap();
    }
    let info = env.v3_doc("info", LOADING_CSV).await.unwrap();
    assert_eq!(info["forksCount"], before + 80, "{info}");
    let log = &op_logs(&env).await[&format!("info/{LOADING_CSV}")];
    let v = info["_v"].as_i64().unwrap();
    assert_eq!(
        log,
        &(0..v).collect::<Vec<i64>>(),
        "the parent's op log holds other ops than one per version"
    );
    verify_clean(&m, forks.len() + fixtures.v2.len()).await;
    env.cleanup().await;
}

/// Forks planned before their parents (leaf first, batches of 8): a batch migrates the parents
/// it finds neither in itself nor in V3 once for all their forks, generations up, and V3 ends
/// as one job at a time in creation order leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_planned_before_their_parents_migrate_them_first() {
    let mut env = TestEnv::new("batchleaf").await;
    let ids = load(&env, 24).await;
    let alone = env.migrator();
    for viz in &ids {
        alone
            .migrate(viz, Some("b1"))
            .await
            .unwrap_or_else(|e| panic!("{viz}: {e}"));
    }
    let state = env.v3_state().await;
    let base = env.v3.clone();
    env.v3 = env.client.database(&format!("{}_b", base.name()));
    let m = env.migrator();
    let mut leaf_first = ids.clone();
    leaf_first.reverse();
    let (v2_before, _) = m.v2.counters();
    let done = run_batches(&m, &leaf_first, 8).await;
    assert!(done.iter().all(|o| *o == Outcome::Migrated), "{done:?}");
    let v2_queries = m.v2.counters().0 - v2_before;
    // Batches fetch the missing parents with a few queries per generation, not ~6 per viz.
    assert!(
        (v2_queries as usize) < ids.len() * 3,
        "{v2_queries} V2 queries for {} vizzes",
        ids.len()
    );
    let diff = TestEnv::state_diff(&env.v3_state().await, &state);
    assert!(
        diff.is_empty(),
        "leaf-first batches differ:\n{}",
        diff.join("\n")
    );
    assert_eq!(env.v3_state().await.len(), state.len());
    verify_clean(&env.migrator(), ids.len()).await;
    env.check_v2().await;
    env.v3.drop().await.unwrap();
    env.v3 = base;
    env.cleanup().await;
}

/// A batch's V2 read ([`Reader::vizzes`], op logs a few vizzes per query, unsorted on the
/// server): every viz it returns has its whole op log in `v` order, as the one-viz read has it
/// (an op log stored newest first included; the order itself is unit-tested in `v2::reader`,
/// as a server may return index order anyway); a byte budget defers the vizzes past it, never
/// cuts a log; a log over the op-log cap is deferred, not truncated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_read_holds_whole_op_logs_in_version_order_within_its_budget() {
    use vizhub_migrate::v2::reader::{Reader, OP_LOG_IDS_PER_QUERY};
    let env = TestEnv::new("batchread").await;
    let mut ids = load(&env, 3 * OP_LOG_IDS_PER_QUERY).await;
    // A copy whose op log V2 holds newest first.
    let fixtures = common::World::with_fixtures(&[]);
    let mut reversed = copy_of(
        &fixtures.v2[LOADING_CSV],
        &format!("{:032x}", 0xbb),
        PRIMORDIAL_VIZ_ID,
        1,
    );
    reversed.ops.reverse();
    env.load_viz(&reversed).await;
    ids.push(format!("{:032x}", 0xbb));
    let reader = Reader::new(env.v2.clone(), std::num::NonZeroU32::new(10_000).unwrap());
    let mut alone = BTreeMap::new();
    for id in &ids {
        let v = reader.viz(id).await.unwrap().unwrap();
        assert!(v
            .ops
            .windows(2)
            .all(|w| w[0]["v"].as_i64() <= w[1]["v"].as_i64()));
        alone.insert(id.clone(), v);
    }
    let whole_bytes: usize = alone
        .values()
        .map(|v| {
            serde_json::to_vec(&v.ops).unwrap().len()
                + serde_json::to_vec(&v.content).unwrap().len()
        })
        .sum();
    let same = |read: &vizhub_migrate::v2::reader::BatchRead| {
        for (id, v) in &read.vizzes {
            assert_eq!(
                v.ops, alone[id].ops,
                "{id}: the batch read's op log differs from the one-viz read's"
            );
            assert_eq!(v.content, alone[id].content, "{id}");
        }
        let mut seen: Vec<&String> = read.vizzes.keys().chain(read.deferred.iter()).collect();
        seen.sort();
        let mut all: Vec<&String> = ids.iter().collect();
        all.sort();
        assert_eq!(seen, all, "every viz is read or deferred, once");
    };
    let read = reader.vizzes(&ids, usize::MAX).await.unwrap();
    same(&read);
    assert!(read.deferred.is_empty(), "{:?}", read.deferred);
    // Budgets from an eighth of the batch's bytes up: whatever is read is whole, and some
    // budget reads part of the batch and defers the rest.
    let mut split = false;
    for eighths in 1..8 {
        let read = reader
            .vizzes(&ids, whole_bytes * eighths / 8)
            .await
            .unwrap();
        same(&read);
        split |= !read.vizzes.is_empty() && !read.deferred.is_empty();
    }
    assert!(split, "no budget split the batch");
    // The primordial viz's log (372 ops) passes a 16 KiB cap: deferred, the others read whole.
    let capped = reader.clone().with_max_op_log_bytes(16 * 1024);
    let read = capped.vizzes(&ids, usize::MAX).await.unwrap();
    same(&read);
    assert!(
        read.deferred.contains(&PRIMORDIAL_VIZ_ID.to_string()),
        "{:?}",
        read.deferred
    );
    env.check_v2().await;
    env.cleanup().await;
}

/// One large viz never sends its batch-mates to be read alone: a viz whose content or op log
/// would take the batch's read past its byte budget is deferred by itself, and the read goes
/// on with the rest (a 5 MiB content in a batch of small vizzes used to defer every viz after
/// it: in a 2,004-viz run, its batch ran all 32 jobs alone, 1.8 s of a 34 s run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viz_past_the_batch_budget_is_deferred_alone_not_its_batch_mates() {
    use vizhub_migrate::v2::reader::{Reader, OP_LOG_IDS_PER_QUERY};
    let env = TestEnv::new("batchbig").await;
    let ids = load(&env, 2 * OP_LOG_IDS_PER_QUERY).await;
    let fixtures = common::World::with_fixtures(&[]);
    let created = fixtures.v2[LOADING_CSV].info["createdTimestamp"]
        .as_i64()
        .unwrap();
    // Budget: every small viz of the batch fits, with room to spare.
    let reader = Reader::new(env.v2.clone(), std::num::NonZeroU32::new(10_000).unwrap());
    let small = reader.vizzes(&ids, usize::MAX).await.unwrap();
    assert!(small.deferred.is_empty(), "{:?}", small.deferred);
    let bson_bytes = |v: &serde_json::Value| {
        mongodb::bson::to_vec(&mongodb::bson::to_document(v).unwrap())
            .unwrap()
            .len()
    };
    let small_bytes: usize = small
        .vizzes
        .values()
        .map(|v| {
            v.content.as_ref().map_or(0, bson_bytes) + v.ops.iter().map(bson_bytes).sum::<usize>()
        })
        .sum();
    let budget = small_bytes * 2;
    // Two large ones, each over the budget by itself: one by its content, first in the batch
    // and sorting before every small viz's id but one (33 zeros), so the server hands it over
    // before the small ones in `$in` order or in `_id` order; one by its op log, sorting last,
    // so its ops come after the small vizzes' in the last op-log query.
    let big_content_id = "0".repeat(33);
    let mut big_content = copy_of(
        &fixtures.v2[LOADING_CSV],
        &big_content_id,
        PRIMORDIAL_VIZ_ID,
        created + 1_000,
    );
    big_content.content.as_mut().unwrap()["files"][0]["text"] = json!("x".repeat(budget + 1));
    let big_log_id = "f".repeat(32);
    let mut big_log = copy_of(
        &fixtures.v2[DANGLING],
        &big_log_id,
        PRIMORDIAL_VIZ_ID,
        created + 1_001,
    );
    // Each op under the budget, the log over it.
    assert!(big_log.ops.len() >= 2);
    let pad = "y".repeat(budget / big_log.ops.len() + 1);
    for (i, op) in big_log.ops.iter_mut().enumerate() {
        op["_id"] = json!(format!("big-log-op-{i}"));
        op["m"]["padding"] = json!(pad);
    }
    env.load_viz(&big_content).await;
    env.load_viz(&big_log).await;
    let mut batch = vec![big_content_id.clone()];
    batch.extend(ids.iter().cloned());
    batch.push(big_log_id.clone());
    let read = reader.vizzes(&batch, budget).await.unwrap();
    let mut deferred = read.deferred.clone();
    deferred.sort();
    let mut expected = vec![big_content_id, big_log_id];
    expected.sort();
    assert_eq!(deferred, expected, "only the two large vizzes are deferred");
    for id in &ids {
        let v = read
            .vizzes
            .get(id)
            .unwrap_or_else(|| panic!("{id} not read"));
        assert_eq!(v.ops, small.vizzes[id].ops, "{id}: its op log is whole");
        assert_eq!(v.content, small.vizzes[id].content, "{id}");
    }
    env.check_v2().await;
    env.cleanup().await;
}

/// [`Ledger::record_many`]: a record inserted for a viz the batch read no record of is the
/// document the upsert of [`Ledger::record`] makes (fields, order and `batches`); one another
/// writer recorded meanwhile falls back to the upsert (its `batches` keep both batches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_record_inserted_is_the_document_an_upsert_makes() {
    use mongodb::bson::Document;
    use vizhub_migrate::ledger::{VizRecord, VIZ};
    let env = TestEnv::new("ledgerinsert").await;
    let ledger = env.ledger();
    let rec = |viz: &str, batch: &str| VizRecord {
        viz: viz.to_string(),
        outcome: Outcome::Migrated,
        reason: None,
        error_kind: None,
        batch: Some(batch.to_string()),
        attempts: 1,
        time: 1_700_000_000,
        migrated: None,
        skipped_entries: vec!["upvote u1".into()],
    };
    let raw = |id: &str| {
        let c = env.v3.collection::<Document>(VIZ);
        let id = id.to_string();
        async move {
            c.find_one(mongodb::bson::doc! {"_id": id})
                .await
                .unwrap()
                .unwrap()
        }
    };
    ledger.record(&rec("upserted", "b1")).await.unwrap();
    ledger.record(&rec("raced", "b0")).await.unwrap();
    let unrecorded = ["inserted", "raced"]
        .map(String::from)
        .into_iter()
        .collect();
    let refused = ledger
        .record_many(&[rec("inserted", "b1"), rec("raced", "b1")], &unrecorded)
        .await
        .unwrap();
    assert!(refused.is_empty(), "{refused:?}");
    let (inserted, upserted) = (raw("inserted").await, raw("upserted").await);
    let keys = |d: &Document| d.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(&inserted),
        keys(&upserted),
        "same fields in the same order"
    );
    let mut inserted_as_upserted = inserted.clone();
    inserted_as_upserted.insert("_id", "upserted");
    assert_eq!(inserted_as_upserted, upserted);
    let raced = raw("raced").await;
    assert_eq!(
        raced.get_array("batches").unwrap(),
        &vec![
            mongodb::bson::Bson::from("b0"),
            mongodb::bson::Bson::from("b1")
        ],
        "a viz recorded meanwhile is upserted: both batches kept"
    );
    assert_eq!(raced.get_str("batch").unwrap(), "b1");
    env.cleanup().await;
}

/// A recount that lost its race reads the parent again and counts its forks: the parent's
/// snapshot must be read *before* the count. Read the other way round, a count taken before
/// another pod's batch wrote its fork, and a snapshot taken after that batch moved the count
/// by it, can agree on a number that misses a fork, and no one counts it
/// again. The recounting job is held, without sleeps, right after each of its
/// fork counts: its command monitor blocks until the test has run a racing batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recount_racing_batches_counts_every_fork() {
    use mongodb::bson::Bson;
    let env = TestEnv::new("recountrace").await;
    let (ids, before, fixtures) = fixtures_then_forks(&env, 0x7ace, &[LOADING_CSV; 3]).await;
    let m = env.migrator();

    // The held job's V3 client: after each of its first two counts of the parent's forks,
    // tell the test and wait for its go-ahead.
    let counts_parent = |s: &mongodb::event::command::CommandStartedEvent| {
        s.command_name == "aggregate"
            && s.command.get_array("pipeline").is_ok_and(|p| {
                p.iter().any(|stage| {
                    matches!(stage, Bson::Document(d) if d.get_document("$match")
                        .is_ok_and(|m| m.get_str("forkedFrom") == Ok(LOADING_CSV)))
                })
            })
    };
    let (handler, mut hold) = Hold::after(counts_parent, 2);
    let held = monitored_migrator(&env, handler).await;
    let alone = {
        let viz = ids[0].clone();
        tokio::spawn(async move { held.migrate(&viz, Some("b1")).await })
    };
    // Each time the job is held, another pod's batch migrates the next fork.
    for fork in &ids[1..] {
        hold.wait("the job counts the parent's forks").await;
        run_batches(&m, std::slice::from_ref(fork), 8).await;
        hold.release();
    }
    alone.await.unwrap().unwrap();
    let info = env.v3_doc("info", LOADING_CSV).await.unwrap();
    assert_eq!(
        info["forksCount"].as_i64(),
        Some(before + 3),
        "every fork counted: {info}"
    );
    verify_clean(&m, fixtures + ids.len()).await;
    env.cleanup().await;
}

/// `planner verify` reads through the batch stages: V2 a few queries per chunk of vizzes, not
/// a few per viz (measured on this set: 0.22 V2 queries and 0.29 V3 commands per viz; the
/// per-viz verify took 5.02 and 11.09), and it
/// still finds the migration clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reads_a_few_queries_per_chunk_not_per_viz() {
    use mongodb::event::{command::CommandEvent, EventHandler};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let env = TestEnv::new("verifycost").await;
    let ids = load(&env, 60).await;
    run_batches(&env.migrator(), &ids, 16).await;
    let counter = |n: &Arc<AtomicU64>| {
        let n = n.clone();
        EventHandler::callback(move |e: CommandEvent| {
            if matches!(e, CommandEvent::Started(_)) {
                n.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let (v2_cmds, v3_cmds) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = |handler| {
        let base = env.mongo_base.clone();
        async move {
            let mut o = mongodb::options::ClientOptions::parse(&base).await.unwrap();
            o.command_event_handler = Some(handler);
            mongodb::Client::with_options(o).unwrap()
        }
    };
    let (v2, v3) = (
        client(counter(&v2_cmds)).await,
        client(counter(&v3_cmds)).await,
    );
    let m = Migrator::new(
        vizhub_migrate::v2::reader::Reader::new(
            v2.database(env.v2.name()),
            std::num::NonZeroU32::new(10_000).unwrap(),
        ),
        vizhub_migrate::v3::store::Store::new(v3.database(env.v3.name())),
        vizhub_migrate::ledger::Ledger::new(v3.database(env.v3.name())),
        vizhub_migrate::translate::Config::default(),
    );
    let report = verify::verify(&m, Scope::All, |_, _| {}).await.unwrap();
    assert!(report.mismatches.is_empty(), "{}", report.render());
    let n = report.in_scope as f64;
    assert!(n >= 60.0, "{}", report.render());
    let (v2_per_viz, v3_per_viz) = (
        v2_cmds.load(Ordering::Relaxed) as f64 / n,
        v3_cmds.load(Ordering::Relaxed) as f64 / n,
    );
    eprintln!(
        "verify: {n} vizzes, {v2_per_viz:.2} V2 queries and {v3_per_viz:.2} V3 commands per viz"
    );
    assert!(v2_per_viz <= 0.5, "V2 queries per viz: {v2_per_viz:.2}");
    assert!(v3_per_viz <= 4.0, "V3 commands per viz: {v3_per_viz:.2}");
    env.cleanup().await;
}

/// Two pods' batches each add one fork to the same parent from the same version of its info:
/// both moves are the same op body (`n` → `n + 1`). The second must lose its race, not take
/// the first's op for its own (the op's id covers the forks it adds), or one fork is counted
/// by no one. Pod A's batch moves two parents (Loading CSV and Penguin), so its moves go in
/// one `update` command, the path that took an identical op for its own; pod B's moves Loading
/// CSV alone. Pod A is held, without sleeps, right after it created its forks' infos; pod B's
/// batch runs from start to end meanwhile. Failed (one fork short) before op ids covered the
/// forks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_batches_moving_one_count_by_as_many_forks_count_both() {
    let env = TestEnv::new("samemove").await;
    let parents = [LOADING_CSV, PENGUIN, LOADING_CSV];
    let (ids, before, fixtures) = fixtures_then_forks(&env, 0x5a3e, &parents).await;
    let m = env.migrator();

    let creates_infos = |s: &mongodb::event::command::CommandStartedEvent| {
        s.command_name == "insert" && s.command.get_str("insert") == Ok("info")
    };
    let (handler, mut hold) = Hold::after(creates_infos, 1);
    let held = monitored_migrator(&env, handler).await;
    let a = {
        let chunk = jobs(&ids[..2]);
        tokio::spawn(async move { held.migrate_batch(&chunk).await })
    };
    hold.wait("pod A creates its forks' infos").await;
    run_batches(&m, &ids[2..], 8).await;
    hold.release();
    for r in a.await.unwrap() {
        r.unwrap();
    }
    let info = env.v3_doc("info", LOADING_CSV).await.unwrap();
    assert_eq!(
        info["forksCount"].as_i64(),
        Some(before + 2),
        "both forks counted: {info}"
    );
    verify_clean(&m, fixtures + ids.len()).await;
    env.cleanup().await;
}

/// Every read a run makes is served by an index, whatever the server: two pods racing over the
/// same batches (creates that find their docs there, lost races, recounts of parents migrated
/// in the batch, jobs run alone), then `verify`. Each `find`, `aggregate` and `count` they
/// sent with a filter is explained on the server and must not be a collection scan.
/// SecantusDB plans a filter with an index only when it names one field: `{forkedFrom: {$in},
/// _type}` scanned every info of V3 for each recount (20 % of the server's time in a
/// 2,000-viz bench, and growing with V3), as did the op-log and `_o` checks after a lost race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_of_a_racing_run_is_served_by_an_index() {
    use mongodb::bson::{self, Document};
    use mongodb::event::{command::CommandEvent, EventHandler};
    use std::sync::{Arc, Mutex};
    let env = TestEnv::new("indexed").await;
    let ids = load(&env, 45).await;
    // The indexes production has: V2's that `planner check` asks for, V3's that workers make.
    for q in vizhub_migrate::v2::reader::QUERIES {
        if q.index != ["_id"] {
            let mut keys = Document::new();
            for k in q.index {
                keys.insert(*k, 1);
            }
            let model = mongodb::IndexModel::builder().keys(keys).build();
            env.v2
                .collection::<Document>(q.collection)
                .create_index(model)
                .await
                .unwrap();
        }
    }
    env.migrator().v3.ensure_indexes().await.unwrap();
    let seen: Arc<Mutex<Vec<(String, String, Document)>>> = Arc::default();
    let handler = {
        let seen = seen.clone();
        EventHandler::callback(move |e: CommandEvent| {
            if let CommandEvent::Started(s) = e {
                if ["find", "aggregate", "count"].contains(&s.command_name.as_str()) {
                    seen.lock().unwrap().push((
                        s.db.clone(),
                        s.command_name.clone(),
                        s.command.clone(),
                    ));
                }
            }
        })
    };
    let mut o = mongodb::options::ClientOptions::parse(&env.mongo_base)
        .await
        .unwrap();
    o.command_event_handler = Some(handler);
    let client = mongodb::Client::with_options(o).unwrap();
    let pod = || {
        Migrator::new(
            vizhub_migrate::v2::reader::Reader::new(
                client.database(env.v2.name()),
                std::num::NonZeroU32::new(10_000).unwrap(),
            ),
            vizhub_migrate::v3::store::Store::new(client.database(env.v3.name())),
            vizhub_migrate::ledger::Ledger::new(client.database(env.v3.name())),
            vizhub_migrate::translate::Config::default(),
        )
    };
    let (a, b) = (pod(), pod());
    tokio::join!(run_batches(&a, &ids, 16), run_batches(&b, &ids, 16));
    verify_clean(&a, ids.len()).await;

    let commands = std::mem::take(&mut *seen.lock().unwrap());
    let mut checked = std::collections::BTreeSet::new();
    let mut scans = Vec::new();
    for (db, name, cmd) in commands {
        let coll = cmd.get_str(&name).unwrap_or_default().to_string();
        let explain = match name.as_str() {
            "find" => {
                let filter = cmd.get_document("filter").cloned().unwrap_or_default();
                if filter.is_empty() {
                    continue;
                }
                bson::doc! {"find": &coll, "filter": filter}
            }
            "count" => {
                let query = cmd.get_document("query").cloned().unwrap_or_default();
                if query.is_empty() {
                    continue;
                }
                bson::doc! {"count": &coll, "query": query}
            }
            _ => {
                let pipeline = cmd.get_array("pipeline").cloned().unwrap_or_default();
                let first = pipeline.first().and_then(|s| s.as_document());
                // A pipeline that does not start by selecting reads everything on purpose.
                if first.is_none_or(|s| !s.contains_key("$match")) {
                    continue;
                }
                bson::doc! {"aggregate": &coll, "pipeline": pipeline, "cursor": {}}
            }
        };
        if !checked.insert(format!("{db} {explain}")) {
            continue;
        }
        let plan = client
            .database(&db)
            .run_command(bson::doc! {"explain": explain.clone(), "verbosity": "queryPlanner"})
            .await
            .unwrap();
        if format!("{plan}").contains("\"COLLSCAN\"") {
            scans.push(format!("{db}.{coll}: {explain}"));
        }
    }
    assert!(checked.len() > 20, "{} reads explained", checked.len());
    assert!(
        scans.is_empty(),
        "{} of {} reads scan their collection:\n{}",
        scans.len(),
        checked.len(),
        scans.join("\n")
    );
    env.cleanup().await;
}

/// Two batches of one worker in flight at once, each with forks of the same parent: they
/// read V2 together but resolve and write in turn, so the second reads the parent as the
/// first left it and moves its count by its own forks. Neither recounts the parent in full
/// (the fallback of a batch that lost the parent to another writer) and the parent's op log
/// holds no lost-race op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_batches_in_flight_take_turns_at_a_shared_parent() {
    use std::sync::atomic::Ordering;
    let env = TestEnv::new("turns").await;
    let (ids, before, fixtures) = fixtures_then_forks(&env, 0x7e00, &[LOADING_CSV; 16]).await;

    let (handler, recounts) = full_recounts();
    let m = monitored_migrator(&env, handler).await;
    let (a, b) = (jobs(&ids[..8]), jobs(&ids[8..]));
    let (ra, rb) = tokio::join!(m.migrate_batch(&a), m.migrate_batch(&b));
    for r in ra.into_iter().chain(rb) {
        assert_eq!(r.unwrap().outcome, Outcome::Migrated);
    }
    let info = env.v3_doc("info", LOADING_CSV).await.unwrap();
    assert_eq!(info["forksCount"].as_i64(), Some(before + 16), "{info}");
    assert_eq!(
        recounts.load(Ordering::Relaxed),
        0,
        "a batch recounted the parent in full: it lost the parent to its sibling batch"
    );
    let ops = op_logs(&env).await;
    let parent_ops = &ops[&format!("info/{LOADING_CSV}")];
    assert_eq!(
        parent_ops.len() as i64,
        info["_v"].as_i64().unwrap(),
        "lost-race ops in the parent's log: {parent_ops:?}"
    );
    verify_clean(&env.migrator(), fixtures + ids.len()).await;
    env.cleanup().await;
}

/// A parent migrated in the same batch as its forks (created by the batch's info insert, with
/// no fork counted) moves its `forksCount` by those forks like a parent outside the batch,
/// instead of being recounted in full (an aggregate over its forks, then its own op and
/// replace: three commands a batch that the move shares with the other parents' moves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_created_with_its_forks_moves_its_count_without_a_recount() {
    use std::sync::atomic::Ordering;
    let env = TestEnv::new("createdparent").await;
    let first = 0x7f00;
    let parent = format!("{first:032x}");
    let mut parents = vec![LOADING_CSV];
    parents.extend([parent.as_str(); 8]);
    let (ids, before, fixtures) = fixtures_then_forks(&env, first, &parents).await;
    let (handler, recounts) = full_recounts();
    let m = monitored_migrator(&env, handler).await;
    for r in m.migrate_batch(&jobs(&ids)).await {
        assert_eq!(r.unwrap().outcome, Outcome::Migrated);
    }
    let info = env.v3_doc("info", &parent).await.unwrap();
    assert_eq!(info["forksCount"].as_i64(), Some(8), "{info}");
    let grandparent = env.v3_doc("info", LOADING_CSV).await.unwrap();
    assert_eq!(grandparent["forksCount"].as_i64(), Some(before + 1));
    assert_eq!(
        recounts.load(Ordering::Relaxed),
        0,
        "a parent of the batch was recounted in full"
    );
    let ops = op_logs(&env).await;
    assert_eq!(
        ops[&format!("info/{parent}")].len() as i64,
        info["_v"].as_i64().unwrap(),
        "lost-race ops in the parent's log"
    );
    verify_clean(&env.migrator(), fixtures + ids.len()).await;
    env.cleanup().await;
}

/// A migrator of `env` whose commands (V2 and V3 alike) are counted per database name.
async fn counting_migrator(
    env: &TestEnv,
) -> (
    Migrator,
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
) {
    use mongodb::event::command::CommandEvent;
    let counts: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>> =
        Default::default();
    let seen = counts.clone();
    let handler = mongodb::event::EventHandler::callback(move |e: CommandEvent| {
        if let CommandEvent::Started(s) = e {
            *seen.lock().unwrap().entry(s.db.clone()).or_default() += 1;
        }
    });
    let client = client_with(env, handler).await;
    (migrator_on(env, &client, &client), counts)
}

/// The daily catch-up: V2 changed half of a migrated set (content edited through its op log,
/// made private, retitled, upvoted, page views counted), V3's users deleted one of them, and
/// the changed vizzes are planned again. Run in batches
/// they end as one job at a time ends them (snapshots, commits, op logs, ledger outcomes), at
/// most 1 V2 and 3 V3 commands per changed viz (one job at a time spends ~7 and ~13).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_resyncs_what_one_job_at_a_time_resyncs() {
    let mut env = TestEnv::new("batchresync").await;
    let ids = load(&env, 60).await;
    let base = env.v3.clone();
    let other = env.client.database(&format!("{}_b", base.name()));
    for db in [&base, &other] {
        env.v3 = db.clone();
        let first = run_batches(&env.migrator(), &ids, 32).await;
        assert!(first.iter().all(|o| *o == Outcome::Migrated), "{first:?}");
    }
    env.v3 = base.clone();
    let upvoter = "resyncupvoter";
    env.insert_v2("user", vec![common::v2_user(upvoter)]).await;
    let at = 1_900_000_000;
    let changed: Vec<String> = ids.iter().step_by(2).cloned().collect();
    let views = env.v2.collection::<mongodb::bson::Document>("eventRecords");
    for (i, viz) in changed.iter().enumerate() {
        match i % 5 {
            0 => env.edit_v2_content(viz, "<!-- daily -->", at).await,
            4 => {
                // Page views only: no timestamp moves.
                let owner = env.v2_doc("documentInfo", viz).await["owner"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let id = vizhub_migrate::v2::pageview_event_id(&owner, viz);
                let more = mongodb::bson::doc! {"$inc": {"all.all": 5, "years.2021": 5,
                "months.2021-03": 5, "days.2021-03-02": 5}};
                let r = views
                    .update_one(mongodb::bson::doc! {"id": &id}, more)
                    .await
                    .unwrap();
                assert_eq!(r.matched_count, 1, "{viz}: page views {id}");
                env.wrote_v2().await;
            }
            1 => {
                env.edit_v2_info(viz, |d| d["privacy"] = json!("private"))
                    .await
            }
            2 => {
                env.edit_v2_info(viz, |d| d["title"] = json!("Renamed in V2"))
                    .await
            }
            _ => {
                env.edit_v2_info(viz, |d| {
                    let entry = json!({"userId": upvoter, "timestamp": at});
                    match d["upvotes"].as_array_mut() {
                        Some(u) => u.push(entry),
                        None => d["upvotes"] = json!([entry]),
                    }
                    d["lastUpdatedTimestamp"] = json!(at);
                })
                .await
            }
        }
    }
    // V3's users deleted one of the vizzes V2 edited: it stays deleted.
    let deleted = &changed[5];
    for db in [&base, &other] {
        let acts = json!([{"act": "deleteViz", "viz": deleted}]);
        let uri = env::with_db(&env.mongo_base, db.name());
        let (ok, report) = env::node("sharedb-v3-acts.js", &[&uri, db.name(), &acts.to_string()]);
        assert!(ok, "V3's acts: {report:#}");
    }
    let expected = |viz: &String| {
        if viz == deleted {
            Outcome::Skipped
        } else {
            Outcome::Migrated
        }
    };
    // One job at a time.
    let alone = env.migrator();
    for viz in &changed {
        let done = alone
            .migrate(viz, Some("b2"))
            .await
            .unwrap_or_else(|e| panic!("{viz}: {e}"));
        assert_eq!(done.outcome, expected(viz), "{viz}: {:?}", done.reason);
    }
    let (state, ops, ledger) = (
        env.v3_state().await,
        op_logs(&env).await,
        outcomes(&env).await,
    );
    // In batches, counted.
    env.v3 = other.clone();
    let (m, counts) = counting_migrator(&env).await;
    let done = run_batches_of(&m, &changed, 32, "b2").await;
    let want: Vec<Outcome> = changed.iter().map(expected).collect();
    assert_eq!(done, want);
    let c = counts.lock().unwrap().clone();
    let per = |db: &str| *c.get(db).unwrap_or(&0) as f64 / changed.len() as f64;
    let (v2, v3) = (per(env.v2.name()), per(other.name()));
    println!("a batched catch-up: {v2:.2} V2 and {v3:.2} V3 commands per changed viz");
    let diff = TestEnv::state_diff(&env.v3_state().await, &state);
    assert!(
        diff.is_empty(),
        "batched re-sync differs:\n{}",
        diff.join("\n")
    );
    assert_eq!(op_logs(&env).await, ops);
    assert_eq!(outcomes(&env).await, ledger);
    assert!(
        v2 <= 1.0 && v3 <= 3.0,
        "a batched catch-up of {} vizzes: {v2:.2} V2 and {v3:.2} V3 commands per viz",
        changed.len()
    );
    // Every viz but the one V3's users deleted.
    verify_clean(&env.migrator(), ids.len() - 1).await;
    env.check_v2().await;
    env.v3.drop().await.unwrap();
    env.v3 = base;
    env.cleanup().await;
}

/// A batch stopped after any one of its writes (a pod killed), then overtaken: another pod's
/// batch of forks of the same parent moves the parent's count, and only then are the stopped
/// batch's jobs redelivered. An op the stopped attempt wrote without its snapshot now sits at a
/// version another writer took; the redelivered jobs take it back, so no orphan op of ours is
/// left in any log (`verify`'s `oplog`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stopped_then_overtaken_leaves_no_orphan_op() {
    let mut env = TestEnv::new("batchovertaken").await;
    let (forks, _, fixtures) = fixtures_then_forks(&env, 0x300, &[LOADING_CSV; 8]).await;
    let mut first_ones: Vec<(i64, String)> = env
        .v2_docs("documentInfo")
        .await
        .iter()
        .map(|d| {
            let id = d["_id"].as_str().unwrap().to_string();
            (d["createdTimestamp"].as_f64().unwrap_or(0.0) as i64, id)
        })
        .filter(|(_, id)| !forks.contains(id))
        .collect();
    first_ones.sort();
    let first_ones: Vec<String> = first_ones.into_iter().map(|(_, id)| id).collect();
    let (forks_stopped, overtaking) = forks.split_at(4);
    // The stopped batch also re-syncs the parent: V2 retitled it (its info alone changes).
    let stopped: Vec<String> = std::iter::once(LOADING_CSV.to_string())
        .chain(forks_stopped.iter().cloned())
        .collect();
    let stopped = stopped.as_slice();
    let redelivered: std::collections::HashSet<String> = stopped.iter().cloned().collect();
    let base = env.v3.clone();
    let mut stops = 0;
    for n in 0.. {
        env.v3 = env.client.database(&format!("{}_o{n}", base.name()));
        let title = |t: String| move |d: &mut serde_json::Value| d["title"] = json!(t);
        env.edit_v2_info(LOADING_CSV, title(format!("Loading CSV {n}")))
            .await;
        run_batches(&env.migrator(), &first_ones, 8).await;
        env.edit_v2_info(LOADING_CSV, title(format!("Loading CSV {n}, renamed")))
            .await;
        let m = env.migrator();
        m.v3.stop_after_writes(Some(n));
        let results = m.migrate_batch(&jobs(stopped)).await;
        if results.iter().all(Result::is_ok) {
            env.v3.drop().await.unwrap();
            break;
        }
        m.v3.stop_after_writes(None);
        run_batches(&env.migrator(), overtaking, 8).await;
        let again = env.migrator();
        for (job, r) in jobs(stopped).iter().zip(
            again
                .migrate_batch_again(&jobs(stopped), &redelivered)
                .await,
        ) {
            r.unwrap_or_else(|e| panic!("stopped after write {n}: {}: {e}", job.viz));
        }
        let report = verify::verify(&env.migrator(), Scope::All, |_, _| {})
            .await
            .unwrap();
        assert!(
            report.mismatches.is_empty(),
            "stopped after write {n}, overtaken, redelivered:\n{}",
            report.render()
        );
        assert_eq!(report.compared as usize, fixtures + forks.len());
        env.v3.drop().await.unwrap();
        stops += 1;
    }
    assert!(stops >= 5, "the batch was stopped at only {stops} points");
    env.v3 = base;
    env.cleanup().await;
}
