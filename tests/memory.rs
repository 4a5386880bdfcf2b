//! Memory bounded in bytes: the real `worker` binary at its default concurrency (64 jobs in
//! flight, batches of 32) on a V2 holding a viz with a 50 MB op log and eight vizzes of ~4.5 MiB content each stays within the pod memory
//! limit the Kubernetes manifest declares (peak RSS, `VmHWM`), and the huge log ends as a
//! migrated viz with the fallback history and its reason, not a crash. And 16 vizzes whose op
//! logs are ~12 MiB each, every one past a batch's byte budget and so run alone, 16 at once:
//! each job takes its memory share from the documents' sizes before it reads them.

mod common;
#[path = "common/env.rs"]
mod env;

use env::TestEnv;
use mongodb::bson::{doc, Document};
use std::time::{Duration, Instant};
use vizhub_migrate::planner::Selection;
use vizhub_migrate::Outcome;

const JSON0: &str = "http://sharejs.org/types/JSONv0";

/// The worker container's memory limit in `k8s/worker-deployment.yaml`, in bytes.
fn pod_memory_limit() -> u64 {
    let manifest = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/worker-deployment.yaml"),
    )
    .unwrap();
    let limits = &manifest[manifest.find("limits:").expect("resources.limits")..];
    let line = limits
        .lines()
        .find(|l| l.trim_start().starts_with("memory:"))
        .expect("a memory limit");
    let mi: u64 = line
        .trim()
        .trim_start_matches("memory:")
        .trim()
        .trim_end_matches("Mi")
        .parse()
        .expect("a limit in Mi");
    mi << 20
}

/// Peak resident memory of a process so far (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn info(id: &str, created: i64) -> Document {
    doc! {"_id": id, "id": id, "_type": JSON0, "_v": 1_i64, "documentType": "visualization",
    "owner": "68416", "title": format!("Big {id}"), "createdTimestamp": created,
    "lastUpdatedTimestamp": created + 60, "forkedFrom": vizhub_migrate::PRIMORDIAL_VIZ_ID}
}

/// Run the `worker` binary with `args` until idle; its peak RSS (`VmHWM`, polled: a high-water
/// mark, so the poll only reads it) checked against the pod limit, and returned.
async fn peak_of_worker(env: &TestEnv, args: &[&str], what: &str) -> u64 {
    let mut worker = env
        .worker_command()
        .args(["--until-idle", "2", "--metrics-addr", "127.0.0.1:0"])
        .args(args)
        .spawn()
        .expect("worker binary");
    let pid = worker.id();
    let (mut peak, deadline) = (0, Instant::now() + Duration::from_secs(600));
    let status = loop {
        if let Some(rss) = peak_rss(pid) {
            peak = peak.max(rss);
        }
        if let Some(s) = worker.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the worker did not finish");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(status.success(), "{status:?}");
    let limit = pod_memory_limit();
    eprintln!(
        "peak RSS {:.1} MiB (pod limit {} MiB): {what}",
        peak as f64 / (1 << 20) as f64,
        limit >> 20
    );
    assert!(peak > 0, "VmHWM was read");
    assert!(
        peak <= limit,
        "peak RSS {peak} B over the pod limit {limit} B: {what}"
    );
    peak
}

/// 16 vizzes whose op logs are ~12 MiB (256 ops of 48 KB, each inserting a block the next
/// deletes, so the content stays small): each is past a batch's byte budget, so each runs
/// alone. In batches of 8 at the default concurrency (64), two batches run at once, each with
/// its 8 jobs alone at once: 16 jobs that, reading before they took their memory share, held
/// up to 16 logs at once (measured: 299 MiB peak, over the limit). Taking the share from a size
/// query first, they read one after another, as their shares say (160–171 MiB, measured; most
/// of it the batches' own reads and the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_jobs_run_alone_with_12_mib_op_logs_stay_within_the_pod_memory_limit() {
    let env = TestEnv::new("memory-alone").await;
    env.load_fixtures(&[]).await;
    env.wrote_v2().await;
    let created = 1_600_000_000;
    let block = "y".repeat(48_000);
    let mut ids = Vec::new();
    for k in 0..16_i64 {
        let id = format!("{:032x}", 0xa10_0000 + k);
        let ops: Vec<Document> = (0..256_i64)
            .map(|v| {
                let c = if v % 2 == 0 {
                    doc! {"p": ["files", 0, "text", 0], "si": &block}
                } else {
                    doc! {"p": ["files", 0, "text", 0], "sd": &block}
                };
                doc! {"_id": format!("{id}-{v}"), "v": v, "d": &id, "op": [c],
                "m": {"ts": (created + v) * 1000}}
            })
            .collect();
        env.v2
            .collection::<Document>("o_documentContent")
            .insert_many(ops)
            .await
            .unwrap();
        env.v2
            .collection::<Document>("documentInfo")
            .insert_one(info(&id, created + k))
            .await
            .unwrap();
        env.v2
            .collection::<Document>("documentContent")
            .insert_one(doc! {"_id": &id, "id": &id, "_type": JSON0, "_v": 256_i64,
            "documentType": "visualization",
            "files": [{"name": "index.html", "text": format!("<p>{k}</p>")}]})
            .await
            .unwrap();
        ids.push(id);
    }
    env.plan(Selection::All).await;
    peak_of_worker(
        &env,
        &["--concurrency", "64", "--batch-size", "8"],
        "16 jobs alone at once, 12 MiB op logs",
    )
    .await;
    for id in &ids {
        let r = env.record(id).await;
        assert_eq!(r.outcome, Outcome::Migrated, "{id}: {:?}", r.reason);
        let history = r.migrated.map(|m| m.history).unwrap_or_default();
        assert!(history.starts_with("replayed 256 ops"), "{id}: {history}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_at_default_concurrency_stays_within_the_pod_memory_limit() {
    let env = TestEnv::new("memory").await;
    env.load_fixtures(&[]).await;
    env.wrote_v2().await;
    let created = 1_600_000_000;
    // A viz whose op log is 50 MB: 5,000 ops of 10 KB, each inserting then the next deleting
    // a 10 KB block, so its content stays small.
    let long = format!("{:032x}", 0x10_9000);
    let block = "x".repeat(10_000);
    let ops: Vec<Document> = (0..5_000_i64)
        .map(|v| {
            let c = if v % 2 == 0 {
                doc! {"p": ["files", 0, "text", 0], "si": &block}
            } else {
                doc! {"p": ["files", 0, "text", 0], "sd": &block}
            };
            doc! {"_id": format!("{long}-{v}"), "v": v, "d": &long, "op": [c],
            "m": {"ts": (created + v) * 1000}}
        })
        .collect();
    for chunk in ops.chunks(500) {
        env.v2
            .collection::<Document>("o_documentContent")
            .insert_many(chunk.to_vec())
            .await
            .unwrap();
    }
    let v2 = |d: Document, c: &str| {
        let coll = env.v2.collection::<Document>(c);
        async move { coll.insert_one(d).await.unwrap() }
    };
    v2(info(&long, created), "documentInfo").await;
    v2(
        doc! {"_id": &long, "id": &long, "_type": JSON0, "_v": 5_000_i64, "documentType": "visualization",
        "files": [{"name": "index.html", "text": "<p>small</p>"}]},
        "documentContent",
    )
    .await;
    // Eight vizzes of ~4.5 MiB content (the limit is 5 MiB), no op log.
    let big_text = "<p>big 🐧</p>\n".repeat(4_500_000 / 16);
    let mut ids = vec![long.clone()];
    for k in 0..8 {
        let id = format!("{:032x}", 0xb16_0000 + k);
        v2(info(&id, created + k), "documentInfo").await;
        v2(
            doc! {"_id": &id, "id": &id, "_type": JSON0, "_v": 3_i64, "documentType": "visualization",
            "files": [{"name": "index.html", "text": format!("{k}{big_text}")},
                      {"name": "README.md", "text": "big"}]},
            "documentContent",
        )
        .await;
        ids.push(id);
    }
    env.plan(Selection::All).await;

    peak_of_worker(
        &env,
        &["--concurrency", "64"],
        "concurrency 64, 50 MB op log, 8 × 4.5 MiB contents",
    )
    .await;
    for id in &ids {
        let r = env.record(id).await;
        assert_eq!(r.outcome, Outcome::Migrated, "{id}: {:?}", r.reason);
    }
    let r = env.record(&long).await;
    let reason = r.reason.unwrap_or_default();
    assert!(reason.contains("op log larger than"), "{reason}");
    env.cleanup().await;
}
