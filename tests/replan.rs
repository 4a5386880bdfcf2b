//! Re-migrating on demand (spec 4.4): `planner plan --viz ID…` publishes exactly those vizzes as
//! a new batch even if an earlier batch covered them, and `--force` does the same for a window,
//! while re-planning a window without it still publishes nothing.

mod common;
#[path = "common/env.rs"]
mod env;

use env::TestEnv;
use serde_json::Value;
use vizhub_migrate::planner::Selection;
use vizhub_migrate::Outcome;

const LOADING_CSV: &str = "3fd333e335fe4ecb9ee0c819802443b7";
const PENGUIN: &str = "a56e821963b849b897dd51db26067db9";
/// A window holding every fixture (created, updated or upvoted before 2100).
const EVERYTHING: Selection = Selection::Window {
    from: 0,
    to: 4_102_444_800,
};

impl TestEnv {
    /// The `planner` binary on this test's databases and queues, JSON logs; the caller adds
    /// arguments. Its stdout and stderr are captured by `output`.
    fn planner_command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_planner"));
        c.env("V2_MONGO_URI", self.v2_uri())
            .env("V3_MONGO_URI", self.v3_uri())
            .env("AMQP_URI", &self.amqp_uri)
            .env("QUEUE_PREFIX", &self.topology.prefix)
            .env("LOG_FORMAT", "json");
        c
    }

    /// Run the planner binary with `args`: its exit code, stdout and stderr.
    async fn planner(&self, args: &[&str]) -> (i32, String, String) {
        let mut c = self.planner_command();
        c.args(args);
        let out = tokio::task::spawn_blocking(move || c.output().expect("planner binary"))
            .await
            .unwrap();
        (
            out.status.code().expect("exited"),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viz_replans_a_migrated_viz_that_a_window_replan_does_not() {
    let env = TestEnv::new("replanviz").await;
    let ids = env.load_fixtures(&[]).await;
    let first = env.plan(EVERYTHING).await;
    assert_eq!(first.published as usize, ids.len());
    env.run_workers(1).await;
    for id in &ids {
        let r = env.record(id).await;
        assert_eq!(r.outcome, Outcome::Migrated, "{id}: {:?}", r.reason);
        assert_eq!(r.batch.as_deref(), Some(first.batch.as_str()), "{id}");
    }

    // The same window again: its batch id derives from the window, already published.
    let again = env.plan(EVERYTHING).await;
    assert_eq!(again.batch, first.batch);
    assert!(again.already_published);
    assert_eq!(again.published, 0);
    assert_eq!(env.queue_depth(&env.topology.work()).await, 0);

    // `--viz` one migrated viz: a new batch, published.
    let before = env.record(PENGUIN).await;
    let one = env.plan(Selection::Vizzes(vec![PENGUIN.into()])).await;
    assert_eq!((one.planned, one.published), (1, 1));
    assert!(one.forced && !one.already_published);
    assert!(one.batch.starts_with("viz-"), "{}", one.batch);
    assert_ne!(one.batch, first.batch);
    // The `migrationbatch` doc is recorded as for every other mode.
    let b = env
        .ledger()
        .batch(&one.batch)
        .await
        .unwrap()
        .expect("batch");
    assert_eq!((b.mode.as_str(), b.status.as_str()), ("viz", "published"));
    assert_eq!((b.planned, b.published), (1, 1));
    assert_eq!(b.params["vizzes"], serde_json::json!([PENGUIN]));
    env.run_workers(1).await;

    // The job ran: the ledger names the new batch, counts one more attempt, at a later time.
    let after = env.record(PENGUIN).await;
    assert_eq!(after.outcome, Outcome::Unchanged, "{:?}", after.reason);
    assert_eq!(after.batch.as_deref(), Some(one.batch.as_str()));
    assert_eq!(after.attempts, before.attempts + 1);
    assert!(after.time >= before.time);
    // No other viz was touched.
    let other = env.record(LOADING_CSV).await;
    assert_eq!(other.batch.as_deref(), Some(first.batch.as_str()));

    // The same viz again: yet another batch, published again.
    let two = env.plan(Selection::Vizzes(vec![PENGUIN.into()])).await;
    assert_eq!(two.published, 1);
    assert_ne!(two.batch, one.batch);
    env.run_workers(1).await;
    assert_eq!(
        env.record(PENGUIN).await.batch.as_deref(),
        Some(two.batch.as_str())
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_window_publishes_again_as_a_new_batch() {
    let env = TestEnv::new("replanforce").await;
    let ids = env.load_fixtures(&[]).await;
    let first = env.plan(EVERYTHING).await;
    assert_eq!(first.published as usize, ids.len());
    assert!(!first.forced);
    env.run_workers(1).await;
    let before = env.record(PENGUIN).await;

    let forced = env.plan(EVERYTHING.forced()).await;
    assert_eq!(forced.published as usize, ids.len());
    assert!(forced.forced && !forced.already_published);
    assert!(
        forced.batch.starts_with(&format!("{}-", first.batch)),
        "the forced batch id {} names the window's {}",
        forced.batch,
        first.batch
    );
    let b = env
        .ledger()
        .batch(&forced.batch)
        .await
        .unwrap()
        .expect("batch");
    assert_eq!(
        (b.mode.as_str(), b.status.as_str()),
        ("window", "published")
    );
    assert_eq!(b.published as usize, ids.len());
    assert!(b.params["run"].is_string(), "{}", b.params);
    env.run_workers(1).await;
    for id in &ids {
        let r = env.record(id).await;
        assert_eq!(r.outcome, Outcome::Unchanged, "{id}: {:?}", r.reason);
        assert_eq!(r.batch.as_deref(), Some(forced.batch.as_str()), "{id}");
    }
    assert_eq!(env.record(PENGUIN).await.attempts, before.attempts + 1);

    // Forced twice: two different batches. Not forced: the window's own batch, already published.
    let again = env.plan(EVERYTHING.forced()).await;
    assert_eq!(again.published as usize, ids.len());
    assert_ne!(again.batch, forced.batch);
    let plain = env.plan(EVERYTHING).await;
    assert!(plain.already_published);
    assert_eq!(plain.published, 0);
    env.run_workers(1).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planner_binary_viz_and_force() {
    let env = TestEnv::new("replanbin").await;
    env.load_fixtures(&[]).await;
    let work = env.topology.work();

    // Dry run: counts, publishes nothing, records nothing.
    let (code, out, err) = env
        .planner(&[
            "plan",
            "--viz",
            PENGUIN,
            "--viz",
            LOADING_CSV,
            "--dry-run",
            "--json",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let dry: Value = serde_json::from_str(out.trim()).expect("one JSON document");
    assert_eq!(dry["planned"], 2);
    assert_eq!(dry["published"], 0);
    assert_eq!(dry["dryRun"], true);
    assert!(env.ledger().batches().await.unwrap().is_empty());

    let (code, out, err) = env
        .planner(&["plan", "--viz", PENGUIN, "--viz", LOADING_CSV, "--json"])
        .await;
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(out.trim()).expect("one JSON document");
    assert_eq!(report["published"], 2, "{report}");
    assert_eq!(report["planned"], 2);
    assert_eq!(report["mode"], "viz");
    assert_eq!(report["forced"], true);
    let batch = report["batch"].as_str().unwrap().to_string();
    assert_eq!(env.queue_depth(&work).await, 2);
    env.run_workers(1).await;
    for id in [PENGUIN, LOADING_CSV] {
        let r = env.record(id).await;
        assert_eq!(r.outcome, Outcome::Migrated, "{id}: {:?}", r.reason);
        assert_eq!(r.batch.as_deref(), Some(batch.as_str()));
    }

    // An id V2 does not have: exit 2 naming it, nothing published, no batch recorded.
    let unknown = "00000000000000000000000000000bad";
    let (code, out, err) = env
        .planner(&["plan", "--viz", PENGUIN, "--viz", unknown, "--json"])
        .await;
    assert_eq!(code, 2, "stdout {out} stderr {err}");
    assert!(err.contains(unknown), "{err}");
    assert!(out.trim().is_empty(), "{out}");
    assert_eq!(env.queue_depth(&work).await, 0);
    assert_eq!(env.ledger().batches().await.unwrap().len(), 1);
    // The same with --dry-run.
    let (code, _, err) = env.planner(&["plan", "--viz", unknown, "--dry-run"]).await;
    assert_eq!(code, 2, "{err}");

    // A window: planned once, then nothing, then --force publishes again.
    let window = [
        "plan",
        "--from",
        "0",
        "--to",
        "2100-01-01T00:00:00Z",
        "--json",
    ];
    let (code, out, err) = env.planner(&window).await;
    assert_eq!(code, 0, "{err}");
    let w1: Value = serde_json::from_str(out.trim()).unwrap();
    assert!(w1["published"].as_u64().unwrap() > 2, "{w1}");
    let (_, out, _) = env.planner(&window).await;
    let w2: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (w2["published"].as_u64(), w2["alreadyPublished"].as_bool()),
        (Some(0), Some(true))
    );
    let forced: Vec<&str> = window.iter().copied().chain(["--force"]).collect();
    let (code, out, err) = env.planner(&forced).await;
    assert_eq!(code, 0, "{err}");
    let w3: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(w3["published"], w1["published"], "{w3}");
    assert_eq!(w3["forced"], true);
    assert!(w3["batch"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{}-", w1["batch"].as_str().unwrap())));
    env.run_workers(1).await;

    // --viz with another selection is a usage error (clap: exit 2).
    let (code, _, _) = env.planner(&["plan", "--viz", PENGUIN, "--all"]).await;
    assert_eq!(code, 2);
    env.cleanup().await;
}
