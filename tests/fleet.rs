//! The fleet against real RabbitMQ and a real MongoDB-protocol server (SecantusDB here): plan,
//! work, dead-letter, requeue, re-sync, conflicts, idempotency, V2 untouched.

mod common;
#[path = "common/env.rs"]
mod env;

use env::TestEnv;
use serde_json::{json, Value};
use vizhub_migrate::dlq::{self, Filter};
use vizhub_migrate::planner::Selection;
use vizhub_migrate::{broker, Outcome, PRIMORDIAL_VIZ_ID};

const LOADING_CSV: &str = "3fd333e335fe4ecb9ee0c819802443b7";
const PENGUIN: &str = "a56e821963b849b897dd51db26067db9";
/// An upvoter of the primordial viz left out of V2's `user` on purpose.
const MISSING_UPVOTER: &str = "99737139";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_fixtures_migrate_with_two_workers_and_v2_is_untouched() {
    let env = TestEnv::new("fixtures").await;
    let ids = env.load_fixtures(&[MISSING_UPVOTER]).await;
    let v2_before = env.hash(&env.v2).await;

    let report = env.plan(Selection::All).await;
    assert_eq!(report.published as usize, ids.len());
    let stats = env.run_workers(2).await;

    for id in &ids {
        let r = env.record(id).await;
        assert_eq!(r.outcome, Outcome::Migrated, "{id}: {:?}", r.reason);
    }
    // The missing upvoter is reported, and its viz still migrated.
    let primordial = env.record(PRIMORDIAL_VIZ_ID).await;
    assert!(
        primordial
            .skipped_entries
            .iter()
            .any(|s| s.contains(MISSING_UPVOTER)),
        "{:?}",
        primordial.skipped_entries
    );
    let info = env.v3_doc("info", PRIMORDIAL_VIZ_ID).await.unwrap();
    assert_eq!(info["upvotesCount"], 34);
    assert_eq!(info["_type"], "p");
    assert_eq!(
        info["forksCount"], 2,
        "Loading CSV and the dangling-parent viz hang from it"
    );
    // The penguin survived, in V3.
    let content = env.v3_doc("content", PENGUIN).await.unwrap();
    assert!(content.to_string().contains('🐧'));
    // Nothing dead-lettered; every published job acked once.
    assert_eq!(env.queue_depth(&env.topology.dead()).await, 0);
    assert_eq!(
        stats
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(
        env.v2_hash_after(&v2_before).await,
        v2_before,
        "V2 must be byte-identical"
    );
    env.cleanup().await;
}

impl TestEnv {
    async fn v2_hash_after(&self, _before: &str) -> String {
        self.hash(&self.v2).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_plan_twice_leaves_v3_byte_identical() {
    let env = TestEnv::new("idempotent").await;
    let ids = env.load_fixtures(&[]).await;
    env.plan(Selection::All).await;
    env.run_workers(1).await;
    let v3_first = env.hash(&env.v3).await;
    let hash_without_ledger = |env: &TestEnv| {
        let v3 = env.v3.clone();
        async move {
            // The ledger records the second run's outcomes (`unchanged`); V3's own documents must not move.
            let mut names = v3.list_collection_names().await.unwrap();
            names.retain(|n| !n.starts_with("migration"));
            names
        }
    };
    let collections = hash_without_ledger(&env).await;
    assert!(
        collections.contains(&"o_content".to_string())
            && collections.contains(&"commit".to_string()),
        "{collections:?}"
    );
    let snapshot = env.v3_snapshot(&collections).await;

    // Same jobs again (a planner re-run publishes nothing for an already published batch, so
    // republish the same jobs directly, as a redelivery would).
    let again = env.plan(Selection::All).await;
    assert!(again.already_published || again.published as usize == ids.len());
    if again.already_published {
        env.republish(&ids).await;
    }
    env.run_workers(1).await;
    for id in &ids {
        assert_eq!(env.record(id).await.outcome, Outcome::Unchanged, "{id}");
    }
    assert_eq!(
        env.v3_snapshot(&collections).await,
        snapshot,
        "V3 documents changed on a re-run"
    );
    assert_ne!(env.hash(&env.v3).await, "", "{v3_first}");
    env.cleanup().await;
}

impl TestEnv {
    async fn v3_snapshot(&self, collections: &[String]) -> Vec<(String, Vec<Value>)> {
        let mut out = Vec::new();
        for c in collections {
            let mut docs = self.v3_docs(c).await;
            docs.sort_by_key(|d| d["_id"].to_string());
            out.push((c.clone(), docs));
        }
        out
    }

    async fn republish(&self, ids: &[String]) {
        let conn = broker::connect(&self.amqp_uri).await.unwrap();
        let p = broker::Publisher::new(&conn).await.unwrap();
        let msgs = ids.iter().map(|id| broker::Message {
            body: serde_json::to_vec(&json!({"viz": id, "batch": null})).unwrap(),
            ..Default::default()
        });
        p.publish_all(&self.topology.work(), msgs).await.unwrap();
        let _ = conn.close(200, "".into()).await;
    }
}

/// Poison inputs end in the right outcomes; DLQ reasons name the viz; fixing V2 and requeueing
/// by fingerprint migrates them; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_inputs_dead_letter_and_requeue_after_fix() {
    let env = TestEnv::new("poison").await;
    env.load_fixtures(&[]).await;
    let base = common::synthetic_viz(
        "00000000000000000000000000000001",
        "68416",
        Some(LOADING_CSV),
        1_550_000_000,
        json!([{"name": "index.html", "text": "ok"}]),
        &[],
    );
    let viz = |n: u32| format!("{n:032x}");
    let mk = |n: u32, f: &dyn Fn(&mut vizhub_migrate::translate::V2Viz)| {
        let mut v = base.clone();
        let id = viz(n);
        v.info["_id"] = json!(id);
        v.info["id"] = json!(id);
        if let Some(c) = v.content.as_mut() {
            c["_id"] = json!(id);
            c["id"] = json!(id);
        }
        f(&mut v);
        v
    };
    let big = "x".repeat(5 * 1024 * 1024 + 10);
    let cases = vec![
        (
            mk(0x10, &|v| v.content = None),
            Outcome::Failed,
            "content_missing",
        ),
        (
            mk(0x11, &|v| v.info["owner"] = json!("no-such-user")),
            Outcome::Failed,
            "owner_missing",
        ),
        (
            mk(0x12, &|v| {
                v.info["id"] = json!(format!("{:032x}", 0x99));
            }),
            Outcome::Failed,
            "id_mismatch",
        ),
        (
            mk(0x13, &|v| {
                v.content.as_mut().unwrap()["files"] =
                    json!([{"name": "big.csv", "text": big.clone()}])
            }),
            Outcome::Failed,
            "content_too_large",
        ),
        (
            mk(0x14, &|v| {
                v.content.as_mut().unwrap()["_v"] = json!(3);
                v.ops = vec![
                    json!({"v": 2, "op": [{"p": ["files", 0, "text", 0], "si": "zz"}], "m": {"ts": 1}}),
                ];
            }),
            Outcome::Migrated,
            "",
        ),
        (
            mk(0x15, &|v| {
                v.info = json!({"_id": v.info["_id"], "_type": null, "_v": 3})
            }),
            Outcome::Skipped,
            "tombstone",
        ),
        (
            mk(0x16, &|v| v.info["documentType"] = json!("dataset")),
            Outcome::Skipped,
            "not_visualization",
        ),
    ];
    for (v, _, _) in &cases {
        env.load_viz(v).await;
    }
    let v2_before = env.hash(&env.v2).await;
    let report = env.plan(Selection::All).await;
    let stats = env.run_workers(2).await;
    let mut dead = 0;
    for (v, want, kind) in &cases {
        let id = v.info["_id"].as_str().unwrap();
        let r = env.record(id).await;
        assert_eq!(r.outcome, *want, "{id}: {:?}", r.reason);
        if *want != Outcome::Migrated {
            assert_eq!(r.error_kind.as_deref(), Some(*kind), "{id}");
        }
        if *want == Outcome::Failed {
            dead += 1;
            assert!(
                r.reason.as_deref().unwrap_or_default().contains(id),
                "reason names the viz: {:?}",
                r.reason
            );
        }
    }
    // The unusable op log: migrated with the fallback history, reason recorded.
    assert!(env
        .record(&viz(0x14))
        .await
        .reason
        .unwrap_or_default()
        .contains("fallback"));
    let conn = broker::connect(&env.amqp_uri).await.unwrap();
    let letters = dlq::list(&conn, &env.topology).await.unwrap();
    assert_eq!(letters.len(), dead);
    assert!(letters.iter().all(|l| l.reason.contains(&l.viz)
        && !l.fingerprint.is_empty()
        && l.attempts >= 1
        && l.last_failure.is_some()));
    // Nothing lost: every published job was acked once, into an outcome or the DLQ.
    let done = stats.done.load(std::sync::atomic::Ordering::Relaxed);
    let dl = stats
        .dead_lettered
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        done + dl,
        report.published,
        "published = acked + dead-lettered"
    );
    assert_eq!(env.hash(&env.v2).await, v2_before);

    // Fix the owner in V2, requeue that fingerprint only.
    env.insert_v2("user", vec![env::user_doc("no-such-user")])
        .await;
    let owner_fp = letters
        .iter()
        .find(|l| l.viz == viz(0x11))
        .unwrap()
        .fingerprint
        .clone();
    let would = dlq::requeue(
        &conn,
        &env.topology,
        &Filter::Fingerprint(owner_fp.clone()),
        true,
    )
    .await
    .unwrap();
    assert_eq!(would, 1);
    assert_eq!(
        dlq::list(&conn, &env.topology).await.unwrap().len(),
        dead,
        "dry run moves nothing"
    );
    assert_eq!(
        dlq::requeue(&conn, &env.topology, &Filter::Fingerprint(owner_fp), false)
            .await
            .unwrap(),
        1
    );
    env.run_workers(1).await;
    assert_eq!(env.record(&viz(0x11)).await.outcome, Outcome::Migrated);
    // Fix the rest and requeue everything: the DLQ ends empty.
    let mut fixed = base.clone();
    for n in [0x10u32, 0x12, 0x13] {
        let id = viz(n);
        fixed.info["_id"] = json!(id);
        fixed.info["id"] = json!(id);
        let mut c = fixed.content.clone().unwrap();
        c["_id"] = json!(id);
        c["id"] = json!(id);
        env.put_v2("documentInfo", fixed.info.clone()).await;
        env.put_v2("documentContent", c).await;
    }
    assert_eq!(
        dlq::requeue(&conn, &env.topology, &Filter::All, false)
            .await
            .unwrap(),
        dead - 1
    );
    env.run_workers(1).await;
    for n in [0x10u32, 0x12, 0x13] {
        assert_eq!(
            env.record(&viz(n)).await.outcome,
            Outcome::Migrated,
            "{}",
            viz(n)
        );
    }
    assert_eq!(env.queue_depth(&env.topology.dead()).await, 0);
    let _ = conn.close(200, "".into()).await;
    env.cleanup().await;
}

/// Windows are half-open; upvotes count as activity; `--since-last` twice plans nothing the second
/// time; `--next-batch 2` twice covers 4 distinct vizzes in creation order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_windows_and_batches() {
    let env = TestEnv::new("windows").await;
    let mk = |n: u32, created: i64, upvoted: Option<i64>| {
        let id = format!("{n:032x}");
        let mut v = common::synthetic_viz(
            &id,
            "68416",
            None,
            created,
            json!([{"name": "a", "text": "b"}]),
            &[],
        );
        v.info["lastUpdatedTimestamp"] = json!(created);
        if let Some(t) = upvoted {
            v.info["upvotes"] = json!([{"userId": "68416", "timestamp": t}]);
        }
        v
    };
    let vizzes = [
        mk(1, 1000, None),
        mk(2, 2000, None),
        mk(3, 3000, None),
        mk(4, 500, Some(2500)),
        mk(5, 4000, None),
    ];
    for v in &vizzes {
        env.load_viz(v).await;
    }
    let planned = |r: &vizhub_migrate::planner::PlanReport| r.planned;
    let w = env
        .plan(Selection::Window {
            from: 2000,
            to: 3000,
        })
        .await;
    assert_eq!(
        planned(&w),
        2,
        "viz 2 (created at `from`) and viz 4 (upvoted inside); viz 3 at `to` is out"
    );
    let ids = env.drain_job_ids().await;
    assert_eq!(
        ids,
        vec![format!("{:032x}", 4), format!("{:032x}", 2)],
        "(createdTimestamp, _id) order"
    );

    let b1 = env.plan(Selection::NextBatch(2)).await;
    let first = env.drain_job_ids().await;
    let b2 = env.plan(Selection::NextBatch(2)).await;
    let second = env.drain_job_ids().await;
    assert_ne!(b1.batch, b2.batch);
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    assert_eq!(
        all,
        [4, 1, 2, 3].map(|n| format!("{n:032x}")).to_vec(),
        "4 distinct vizzes in creation order"
    );

    let s1 = env
        .plan(Selection::SinceLast {
            overlap_secs: 3600,
            settle_secs: 0,
        })
        .await;
    assert_eq!(s1.planned, 5);
    env.drain_job_ids().await;
    let s2 = env
        .plan(Selection::SinceLast {
            overlap_secs: 3600,
            settle_secs: 0,
        })
        .await;
    assert_eq!(s2.planned, 0, "nothing new since the last run");
    env.cleanup().await;
}

impl TestEnv {
    /// Take every job off the work queue (acking), returning viz ids in queue order.
    async fn drain_job_ids(&self) -> Vec<String> {
        let conn = broker::connect(&self.amqp_uri).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let mut out = Vec::new();
        while let Some(m) = ch
            .basic_get(
                self.topology.work().as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            let job: Value = serde_json::from_slice(&m.delivery.data).unwrap();
            out.push(job["viz"].as_str().unwrap().to_string());
        }
        let _ = conn.close(200, "".into()).await;
        out
    }
}
