//! Nothing lost between queues, whatever the broker does: a move whose target queue is gone is
//! never acked, a job that kills its workers is recorded and dead-lettered by the worker itself
//! at its last allowed delivery, reading the DLQ never spends a dead letter's deliveries, and a
//! moved job does not carry the delivery count of the queue it left.

mod common;
#[path = "common/env.rs"]
mod env;

use env::TestEnv;
use lapin::options::BasicGetOptions;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vizhub_migrate::broker::{self, BrokerError, HeaderValue, Message};
use vizhub_migrate::dlq::{self, Filter};
use vizhub_migrate::worker::{self, Options, Stats};
use vizhub_migrate::Outcome;

const LOADING_CSV: &str = "3fd333e335fe4ecb9ee0c819802443b7";

impl TestEnv {
    async fn publish_jobs(&self, bodies: Vec<serde_json::Value>) {
        let conn = broker::connect(&self.amqp_uri).await.unwrap();
        broker::declare(&conn.create_channel().await.unwrap(), &self.topology)
            .await
            .unwrap();
        let p = broker::Publisher::new(&conn).await.unwrap();
        let msgs = bodies.into_iter().map(|b| Message {
            body: serde_json::to_vec(&b).unwrap(),
            ..Default::default()
        });
        p.publish_all(&self.topology.work(), msgs).await.unwrap();
        let _ = conn.close(200, "".into()).await;
    }

    /// One in-process worker until `stop` is notified.
    fn worker_until(
        &self,
        stats: Arc<Stats>,
        stop: Arc<tokio::sync::Notify>,
    ) -> tokio::task::JoinHandle<Result<(), BrokerError>> {
        let (m, uri, t) = (
            self.migrator(),
            self.amqp_uri.clone(),
            self.topology.clone(),
        );
        let opts = Options {
            concurrency: 2,
            until_idle: None,
            drain_deadline: Duration::from_secs(5),
            ..Options::default()
        };
        tokio::spawn(async move {
            worker::run(
                m,
                &uri,
                &t,
                &opts,
                stats,
                async move { stop.notified().await },
            )
            .await
        })
    }
}

async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A move to a queue that is gone (here the DLQ, deleted mid-run) comes back from the broker
/// (`mandatory`): the delivery is requeued, never acked, and once the queue exists again the
/// dead letter arrives with the worker's headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_to_a_deleted_queue_is_never_acked() {
    let env = TestEnv::new("deletedq").await;
    let conn = broker::connect(&env.amqp_uri).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let (stats, stop) = (
        Arc::new(Stats::default()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let run = env.worker_until(stats.clone(), stop.clone());
    // The worker declared its queues when it started consuming; then the DLQ goes.
    until("the worker consuming", async || {
        stats.broker_connected.load(Ordering::Relaxed)
    })
    .await;
    ch.queue_delete(env.topology.dead().as_str().into(), Default::default())
        .await
        .unwrap();
    // A job no worker can run: its move is to the DLQ. (Published without declaring the
    // topology, which would bring the DLQ back.)
    let p = broker::Publisher::new(&conn).await.unwrap();
    p.publish(
        &env.topology.work(),
        Message {
            body: br#"{"not": "a job"}"#.to_vec(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    until("a failed move", async || {
        stats.moves_failed.load(Ordering::Relaxed) >= 1
    })
    .await;
    // The job was not acked: it is back in the work queue (or in a worker's hands again).
    broker::declare(&ch, &env.topology).await.unwrap();
    until("the dead letter", async || {
        env.queue_depth(&env.topology.dead()).await == 1
    })
    .await;
    stop.notify_one();
    run.await.unwrap().unwrap();
    assert_eq!(env.queue_depth(&env.topology.work()).await, 0);
    let letters = dlq::list(&conn, &env.topology).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].error_kind, "bad_message", "{:?}", letters[0]);
    // Straight at the broker: a mandatory publish to a missing queue is an error, not a confirm.
    let e = p
        .publish(
            &format!("{}.no-such-queue", env.topology.prefix),
            Message::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, BrokerError::Returned { .. }), "{e}");
    let _ = conn.close(200, "".into()).await;
    env.cleanup().await;
}

/// A job whose every delivery ended with its worker dead (simulated: taken and the channel
/// closed without an ack, as a killed pod does) is, at its last allowed delivery, recorded as
/// `failed` and dead-lettered by the worker with its own headers — not dropped by the broker's
/// delivery limit with no record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_its_workers_is_recorded_and_dead_lettered_by_the_worker() {
    let env = TestEnv::new("crashloop").await;
    env.load_fixtures(&[]).await;
    env.publish_jobs(vec![json!({"viz": LOADING_CSV, "batch": null})])
        .await;
    let conn = broker::connect(&env.amqp_uri).await.unwrap();
    let limit = env.topology.delivery_limit;
    let mut seen = Vec::new();
    for _ in 0..limit {
        let ch = conn.create_channel().await.unwrap();
        let got = loop {
            if let Some(m) = ch
                .basic_get(
                    env.topology.work().as_str().into(),
                    BasicGetOptions::default(),
                )
                .await
                .unwrap()
            {
                break m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        seen.push(
            broker::headers_of(&got.delivery.properties)
                .get("x-delivery-count")
                .cloned(),
        );
        ch.close(200, "a worker dies".into()).await.unwrap();
    }
    // Each worker death counted (RabbitMQ 3.10 says 0 on a first delivery, 4.0 omits it).
    assert!(
        matches!(seen.last(), Some(Some(HeaderValue::Int(n))) if *n == i64::from(limit) - 1),
        "{seen:?}"
    );
    let (stats, stop) = (
        Arc::new(Stats::default()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let run = env.worker_until(stats.clone(), stop.clone());
    until("the dead letter", async || {
        env.queue_depth(&env.topology.dead()).await == 1
    })
    .await;
    stop.notify_one();
    run.await.unwrap().unwrap();
    let letters = dlq::list(&conn, &env.topology).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].error_kind, "crash_loop", "{:?}", letters[0]);
    assert!(letters[0].reason.contains(LOADING_CSV), "{:?}", letters[0]);
    let r = env.record(LOADING_CSV).await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(r.error_kind.as_deref(), Some("crash_loop"));
    assert!(
        env.v3_doc("info", LOADING_CSV).await.is_none(),
        "the job was not run again"
    );
    let _ = conn.close(200, "".into()).await;
    env.cleanup().await;
}

/// Thirty listings and a filtered requeue leave every other dead letter in place with the
/// attempts it had. (RabbitMQ before 4.3 counts each browse as a delivery; 4.0–4.2 would drop a
/// DLQ letter after 20 of them under the default quorum delivery limit: the DLQ declares its
/// own, which this checks the letters outlived.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_dlq_never_spends_its_letters() {
    let env = TestEnv::new("dlqreads").await;
    env.publish_jobs(vec![
        json!({"bad": 1}),
        json!({"bad": 2}),
        json!({"bad": 3}),
    ])
    .await;
    env.run_workers(1).await;
    let conn = broker::connect(&env.amqp_uri).await.unwrap();
    let before = dlq::list(&conn, &env.topology).await.unwrap();
    assert_eq!(before.len(), 3);
    for _ in 0..30 {
        assert_eq!(dlq::list(&conn, &env.topology).await.unwrap(), before);
    }
    let browsed = broker::browse(&conn, &env.topology.dead(), usize::MAX)
        .await
        .unwrap();
    let counts: Vec<Option<HeaderValue>> = browsed
        .iter()
        .map(|b| b.headers.get("x-delivery-count").cloned())
        .collect();
    assert!(
        counts
            .iter()
            .all(|c| matches!(c, Some(HeaderValue::Int(n)) if *n >= 30)),
        "the broker counted the browses: {counts:?}"
    );
    let moved = dlq::requeue(
        &conn,
        &env.topology,
        &Filter::Fingerprint("no-such-fingerprint".into()),
        false,
    )
    .await
    .unwrap();
    assert_eq!(moved, 0);
    assert_eq!(dlq::list(&conn, &env.topology).await.unwrap(), before);
    assert!(before.iter().all(|l| l.attempts == 1), "{before:?}");
    let _ = conn.close(200, "".into()).await;
    env.cleanup().await;
}

/// A job moved to another queue (the DLQ here; a retry queue alike) leaves the delivery count
/// of the queue it left behind: `x-delivery-count` is the broker's count of one queue's
/// deliveries. RabbitMQ 3.x replaced a published one on a first delivery; 4.0 delivers it as
/// published, so a copied count made the dead letter (or the job back from its retry) look
/// delivered that many times before in a queue that never delivered it. Failed on 4.0.5 (2,
/// not 0) before the move dropped it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_job_leaves_its_delivery_count_behind() {
    let env = TestEnv::new("movedcount").await;
    // A job the worker dead-letters at once (it is no job), after two worker deaths.
    env.publish_jobs(vec![json!({"not": "a job"})]).await;
    let conn = broker::connect(&env.amqp_uri).await.unwrap();
    for _ in 0..2 {
        let ch = conn.create_channel().await.unwrap();
        loop {
            let got = ch
                .basic_get(
                    env.topology.work().as_str().into(),
                    BasicGetOptions::default(),
                )
                .await
                .unwrap();
            if got.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ch.close(200, "a worker dies".into()).await.unwrap();
    }
    env.run_workers(1).await;
    let letters = broker::browse(&conn, &env.topology.dead(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        vizhub_migrate::job::deliveries_before(&letters[0].headers),
        0,
        "the dead letter's first delivery: {:?}",
        letters[0].headers
    );
    let _ = conn.close(200, "".into()).await;
    env.cleanup().await;
}
