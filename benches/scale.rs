//! The scale benchmark (issue "Prove it"): a generated V2 data set of `BENCH_VIZZES` vizzes
//! (default 5,000, plus the real fixtures) in SecantusDB, measured in one run against baselines
//! on the same servers:
//!
//! - end-to-end migration (vizzes/s, V3 documents/s) with real `worker` processes at a few
//!   worker × concurrency settings, each into a fresh V3 database, vs a **raw copy**: every V2
//!   document of the set read with bulk cursors and the same V3 documents (same count, same
//!   bytes, taken from the migrated database) written with unordered bulk inserts;
//! - `planner plan --all` publish rate vs a raw pipelined confirmed publish of as many messages
//!   of the same size to the same broker;
//! - translation CPU per viz vs deserializing the same documents (every viz translated as a root:
//!   its first commit diffs from `{}`, the costliest case);
//! - peak RSS (`VmHWM`) of each worker process;
//! - database round trips per viz, counted by command monitoring on an in-process migration of
//!   a sample (V2 and V3 separately).
//!
//! `scripts/bench` runs it on fresh servers; `cargo bench --bench scale` uses `MONGO_URI` /
//! `AMQP_URI`. The table is printed and written to `target/bench-scale.json`. Under
//! `cargo test` it runs once at a small scale as a smoke test (no figures claimed).

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document, RawDocumentBuf};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vizhub_migrate::broker::{self, Topology};
use vizhub_migrate::ledger::Ledger;
use vizhub_migrate::migrate::Migrator;
use vizhub_migrate::planner::{self, Selection};
use vizhub_migrate::seed::{self, Dataset, Options};
use vizhub_migrate::translate::{self, Config, Context, Parent};
use vizhub_migrate::v2::reader::Reader;
use vizhub_migrate::v2::V2Viz;
use vizhub_migrate::v3::store::Store;

/// How long any one phase may take before the benchmark gives up.
const PATIENCE: Duration = Duration::from_secs(1800);

struct Env {
    client: Client,
    mongo_base: String,
    amqp_uri: String,
    tag: String,
}

impl Env {
    fn db_uri(&self, db: &str) -> String {
        let (base, query) = self
            .mongo_base
            .split_once('?')
            .unwrap_or((&self.mongo_base, ""));
        let base = base.trim_end_matches('/');
        if query.is_empty() {
            format!("{base}/{db}")
        } else {
            format!("{base}/{db}?{query}")
        }
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("BENCH_VIZZES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 5_000 } else { 40 });
    // BENCH_CONFIGS: `workers x concurrency` runs, comma-separated (e.g. `1x64,2x64`), to measure
    // one setting alone (profiling, a quick check) instead of the default set.
    let configs: Vec<(usize, usize)> = match std::env::var("BENCH_CONFIGS") {
        Ok(v) if !v.trim().is_empty() => {
            v.split(',')
                .map(|c| {
                    let (w, k) = c.trim().split_once('x').unwrap_or_else(|| {
                        panic!("BENCH_CONFIGS: `{c}` is not WORKERSxCONCURRENCY")
                    });
                    (
                        w.parse().expect("BENCH_CONFIGS: workers"),
                        k.parse().expect("BENCH_CONFIGS: concurrency"),
                    )
                })
                .collect()
        }
        // Batches of 32 (the worker's default); 64 in flight per worker is the default too.
        _ if full => vec![(1, 32), (1, 64), (2, 64)],
        _ => vec![(1, 4)],
    };
    let (Ok(mongo_base), Ok(amqp_uri)) = (std::env::var("MONGO_URI"), std::env::var("AMQP_URI"))
    else {
        panic!(
            "the scale benchmark needs MONGO_URI and AMQP_URI (`eval \"$(scripts/services start)\"`, \
             or scripts/bench, which starts fresh servers)"
        );
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let client = Client::with_uri_str(&mongo_base).await.unwrap();
            let env = Env {
                client,
                mongo_base,
                amqp_uri,
                tag: format!("bench{}", std::process::id()),
            };
            run(&env, n, &configs, full).await;
        });
}

async fn run(env: &Env, n: usize, configs: &[(usize, usize)], full: bool) {
    println!("scale benchmark: {n} generated vizzes + the real fixtures");
    let mut data = Dataset::fixtures();
    let roots: Vec<String> = data
        .vizzes
        .iter()
        .filter_map(|v| v.info["_id"].as_str().map(str::to_string))
        .collect();
    data.extend(Dataset::generate(
        &Options {
            vizzes: n,
            ..Options::default()
        },
        &roots,
    ));
    let vizzes = data.vizzes.len();

    // V2, seeded once for the whole run.
    let v2_name = format!("{}_v2", env.tag);
    let v2 = env.client.database(&v2_name);
    let t = Instant::now();
    let seeded = seed::write(&v2, &data, |_| {}).await.unwrap();
    let seed_secs = t.elapsed().as_secs_f64();
    let v2_docs = data.doc_count();
    println!(
        "seeded {vizzes} vizzes ({v2_docs} V2 docs, {} ops, {:.1} MiB content) in {seed_secs:.1}s",
        seeded.ops,
        seeded.content_bytes as f64 / 1048576.0
    );

    let expected_dead: usize = seed::BAD_KINDS
        .iter()
        .filter(|(_, outcome)| *outcome == "failed")
        .map(|(kind, _)| data.bad.get(kind).map_or(0, Vec::len))
        .sum();
    println!(
        "planted bad inputs: {:?}; expected dead letters: {expected_dead}",
        seeded.bad_inputs
    );
    let cpu = translation_cpu(&data);
    println!(
        "translation CPU: {:.1} µs/viz vs deserialization {:.1} µs/viz = {:.2}×",
        cpu.translate_us, cpu.deserialize_us, cpu.ratio
    );

    // Migrations, each into a fresh V3 and under fresh queues.
    let mut runs = Vec::new();
    let mut planner_rate = None;
    let mut last_v3 = None;
    for (k, &(workers, concurrency)) in configs.iter().enumerate() {
        let v3_name = format!("{}_v3_{k}", env.tag);
        let topology = Topology::new(&format!("{}.{k}", env.tag));
        let (planned, plan_secs) = plan(env, &v2, &env.client.database(&v3_name), &topology).await;
        planner_rate.get_or_insert((planned, plan_secs));
        let r = migrate(
            env,
            &v2_name,
            &v3_name,
            &topology,
            planned,
            workers,
            concurrency,
        )
        .await;
        println!(
            "{workers} worker(s) × concurrency {concurrency}: {planned} jobs in {:.1}s = {:.1} vizzes/s, {:.0} V3 docs/s, peak RSS {:.0} MiB; {} recorded, {} dead letters",
            r.secs,
            r.vizzes_per_sec,
            r.docs_per_sec,
            r.peak_rss_mib,
            r.recorded,
            r.dead
        );
        runs.push(r);
        delete_queues(env, &topology).await;
        if let Some(old) = last_v3.replace(v3_name) {
            env.client.database(&old).drop().await.unwrap();
        }
    }
    let v3_name = last_v3.expect("at least one run");
    let v3 = env.client.database(&v3_name);
    let checked = verify_run(env, &v2, &v3).await;
    println!(
        "verify (planner verify's code, in-process) of the last run: {} vizzes compared in {:.1}s = {:.1} vizzes/s, {} mismatches",
        checked.compared, checked.secs, checked.compared as f64 / checked.secs, checked.mismatches
    );

    let raw = raw_copy(env, &v2, &v3, false).await;
    println!(
        "raw copy: {} V2 docs read, {} V3 docs ({:.1} MiB) written in {:.1}s = {:.1} vizzes/s",
        raw.v2_docs,
        raw.v3_docs,
        raw.v3_bytes as f64 / 1048576.0,
        raw.secs,
        vizzes as f64 / raw.secs
    );
    let raw_indexed = raw_copy(env, &v2, &v3, true).await;
    println!(
        "raw copy into V3's indexes: {:.1}s = {:.1} vizzes/s",
        raw_indexed.secs,
        vizzes as f64 / raw_indexed.secs
    );

    // After the raw copies: the catch-up adds to the V3 they copy.
    let det = detection(env, &v2, &v3, if full { 100 } else { 5 }).await;
    println!(
        "change detection (--since-last) over {} vizzes: {} V2 queries ({:.4}/viz), {:.2}s = {:.3}s per 1,000; \
         {} false positives on the unchanged set; {} of {} changed found",
        det.scanned, det.v2_queries, det.v2_per_viz, det.secs, det.secs * 1000.0 / det.scanned as f64,
        det.false_positives, det.found, det.changed
    );
    println!(
        "  projected for 100,000 vizzes: {:.0} V2 queries ({:.2}s of the default 200/s budget), ~{:.0}s; \
         catch-up of the {} changed (batches of {BATCH}, the planner's pass included): V2 {:.2}, V3 {:.2} commands per changed viz, {:.2}s",
        det.v2_per_viz * 100_000.0, det.v2_per_viz * 100_000.0 / 200.0, det.secs * 100_000.0 / det.scanned as f64,
        det.changed, det.catch_up_v2_per_viz, det.catch_up_v3_per_viz, det.catch_up_secs
    );

    let (planned, plan_secs) = planner_rate.expect("planned");
    let raw_publish_secs = raw_publish(env, planned).await;
    let plan_rate = planned as f64 / plan_secs;
    let raw_rate = planned as f64 / raw_publish_secs;
    println!(
        "planner: {planned} jobs in {plan_secs:.2}s = {plan_rate:.0}/s; raw confirmed publish {raw_rate:.0}/s"
    );

    let trips = round_trips(env, &v2, &data, if full { 300 } else { 20 }).await;
    println!(
        "round trips per viz ({} vizzes, in-process): batches of {BATCH}: V2 {:.2}, V3 {:.2}; one job at a time: V2 {:.1}, V3 {:.1}",
        trips.vizzes, trips.v2_per_viz, trips.v3_per_viz, trips.alone_v2_per_viz, trips.alone_v3_per_viz
    );
    let hot: Vec<Hot> = if full {
        vec![hot_parent(env, 60).await, hot_parent(env, 240).await]
    } else {
        vec![hot_parent(env, 12).await]
    };
    for h in &hot {
        println!(
            "hot parent, {} forks (2 pods, batches of {BATCH}): {:.1} vizzes/s = {:.2} ms/viz; raw copy {:.1} vizzes/s ({:.2}×), into V3's indexes {:.1} ({:.2}×); parent's info at v{} with {} ops ({} lost-race ops)",
            h.forks, h.vizzes_per_sec, 1000.0 / h.vizzes_per_sec, h.raw_per_sec,
            h.vizzes_per_sec / h.raw_per_sec, h.raw_indexed_per_sec, h.vizzes_per_sec / h.raw_indexed_per_sec,
            h.parent_v, h.parent_ops, h.parent_ops - h.parent_v
        );
    }
    let hot_ratio = hot
        .iter()
        .map(|h| h.vizzes_per_sec / h.raw_per_sec)
        .fold(f64::INFINITY, f64::min);
    let hot_flat = hot.last().unwrap().vizzes_per_sec / hot[0].vizzes_per_sec;
    let lost_race_ops: i64 = hot.iter().map(|h| h.parent_ops - h.parent_v).sum();

    let hot_ratio_indexed = hot
        .iter()
        .map(|h| h.vizzes_per_sec / h.raw_indexed_per_sec)
        .fold(f64::INFINITY, f64::min);
    let raw_rate_vizzes = vizzes as f64 / raw.secs;
    let raw_indexed_rate = vizzes as f64 / raw_indexed.secs;
    let best = runs
        .iter()
        .map(|r| r.vizzes_per_sec)
        .fold(0.0_f64, f64::max);
    let peak_rss = runs.iter().map(|r| r.peak_rss_mib).fold(0.0_f64, f64::max);
    let rss16 = runs
        .iter()
        .filter(|r| r.concurrency == 64)
        .map(|r| r.peak_rss_mib)
        .fold(0.0_f64, f64::max);
    let rows = [
        (
            "end-to-end / raw copy (best run)",
            best / raw_rate_vizzes,
            "≥ 0.5",
            best / raw_rate_vizzes >= 0.5,
        ),
        (
            "end-to-end / raw copy into V3's indexes (best)",
            best / raw_indexed_rate,
            "≥ 0.5",
            best / raw_indexed_rate >= 0.5,
        ),
        (
            "planner / raw confirmed publish",
            plan_rate / raw_rate,
            "≥ 0.5",
            plan_rate / raw_rate >= 0.5,
        ),
        (
            "translation / deserialization",
            cpu.ratio,
            "≤ 3",
            cpu.ratio <= 3.0,
        ),
        (
            "worker peak RSS MiB (concurrency 64, else max)",
            if rss16 > 0.0 { rss16 } else { peak_rss },
            "≤ 150",
            (if rss16 > 0.0 { rss16 } else { peak_rss }) <= 150.0,
        ),
        (
            "V2 queries per viz (batches of 32)",
            trips.v2_per_viz,
            "≤ 0.5",
            trips.v2_per_viz <= 0.5,
        ),
        (
            "V3 commands per viz (batches of 32)",
            trips.v3_per_viz,
            "≤ 3",
            trips.v3_per_viz <= 3.0,
        ),
        (
            "hot parent: end-to-end / raw copy (worst size)",
            hot_ratio,
            "≥ 0.5",
            hot_ratio >= 0.5,
        ),
        (
            "hot parent: / raw copy into V3's indexes (worst)",
            hot_ratio_indexed,
            "≥ 0.5",
            hot_ratio_indexed >= 0.5,
        ),
        (
            "hot parent: vizzes/s largest / smallest set",
            hot_flat,
            "≥ 0.8",
            hot_flat >= 0.8,
        ),
        (
            "hot parent: lost-race ops in the parent's log",
            lost_race_ops as f64,
            "0",
            lost_race_ops == 0,
        ),
        (
            "change detection: V2 queries per viz scanned",
            det.v2_per_viz,
            "≤ 0.01",
            det.v2_per_viz <= 0.01,
        ),
        (
            "catch-up: V2 commands per changed viz",
            det.catch_up_v2_per_viz,
            "≤ 1",
            det.catch_up_v2_per_viz <= 1.0,
        ),
        (
            "catch-up: V3 commands per changed viz",
            det.catch_up_v3_per_viz,
            "≤ 3",
            det.catch_up_v3_per_viz <= 3.0,
        ),
        (
            "change detection: changed vizzes missed + false",
            (det.changed - det.found + det.false_positives) as f64,
            "0",
            det.found == det.changed && det.false_positives == 0,
        ),
        (
            "vizzes/s vs the original Node migration (~2/s)",
            best / 2.0,
            "≥ 10",
            best / 2.0 >= 10.0,
        ),
    ];
    println!("\n{:<48} {:>10}  {:>7}  met", "figure", "value", "target");
    for (name, value, target, met) in &rows {
        println!(
            "{name:<48} {value:>10.2}  {target:>7}  {}",
            if *met { "yes" } else { "NO" }
        );
    }
    let report = json!({
        "vizzes": vizzes, "generated": n, "v2Docs": v2_docs, "ops": seeded.ops,
        "contentBytes": seeded.content_bytes, "seedSecs": seed_secs,
        "translation": {"translateUsPerViz": cpu.translate_us, "deserializeUsPerViz": cpu.deserialize_us, "ratio": cpu.ratio},
        "runs": runs.iter().map(|r| json!({"workers": r.workers, "concurrency": r.concurrency, "secs": r.secs,
            "vizzesPerSec": r.vizzes_per_sec, "v3DocsPerSec": r.docs_per_sec, "v3Docs": r.v3_docs, "peakRssMiB": r.peak_rss_mib, "recorded": r.recorded, "deadLetters": r.dead})).collect::<Vec<_>>(),
        "rawCopy": {"secs": raw.secs, "v2Docs": raw.v2_docs, "v3Docs": raw.v3_docs, "v3Bytes": raw.v3_bytes, "vizzesPerSec": raw_rate_vizzes},
        "rawCopyIndexed": {"secs": raw_indexed.secs, "vizzesPerSec": raw_indexed_rate},
        "verify": {"compared": checked.compared, "secs": checked.secs, "mismatches": checked.mismatches},
        "planner": {"jobs": planned, "secs": plan_secs, "perSec": plan_rate, "rawPublishPerSec": raw_rate},
        "roundTrips": {"vizzes": trips.vizzes, "batch": BATCH, "v2PerViz": trips.v2_per_viz, "v3PerViz": trips.v3_per_viz,
            "aloneV2PerViz": trips.alone_v2_per_viz, "aloneV3PerViz": trips.alone_v3_per_viz},
        "hotParent": hot.iter().map(|h| json!({"forks": h.forks, "vizzesPerSec": h.vizzes_per_sec, "rawPerSec": h.raw_per_sec, "rawIndexedPerSec": h.raw_indexed_per_sec,
            "parentV": h.parent_v, "parentOps": h.parent_ops})).collect::<Vec<_>>(),
        "detection": {"scanned": det.scanned, "v2Queries": det.v2_queries, "v2PerViz": det.v2_per_viz, "secs": det.secs,
            "falsePositives": det.false_positives, "changed": det.changed, "found": det.found,
            "catchUp": {"v2PerViz": det.catch_up_v2_per_viz, "v3PerViz": det.catch_up_v3_per_viz, "secs": det.catch_up_secs}},
        "ratios": rows.iter().map(|(name, value, target, met)| json!({"figure": name, "value": value, "target": target, "met": met})).collect::<Vec<_>>(),
    });
    if full {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-scale.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
        println!("\nwritten to {}", path.display());
    } else {
        // Smoke run: the pipeline works end to end at a small scale.
        assert!(runs.iter().all(|r| r.secs > 0.0 && r.v3_docs > 0));
        assert!(trips.v3_per_viz > 0.0 && cpu.ratio > 0.0);
        assert_eq!((det.found, det.false_positives), (det.changed, 0));
    }
    v2.drop().await.unwrap();
    v3.drop().await.unwrap();
}

struct Detected {
    scanned: u64,
    v2_queries: u64,
    v2_per_viz: f64,
    secs: f64,
    /// Vizzes planned although nothing changed since the migration.
    false_positives: u64,
    /// Vizzes V2 then changed (privacy only: no timestamp moves), and how many the pass found.
    changed: u64,
    found: u64,
    catch_up_v2_per_viz: f64,
    catch_up_v3_per_viz: f64,
    catch_up_secs: f64,
}

/// `--since-last`'s change detection (in-process, as a dry run) over a migrated set: once as
/// migrated (anything it finds is a false positive), then after V2 made `changed` migrated
/// vizzes private (as V2 does: no timestamp moves; the bench's own V2 copy is written, as a
/// live V2 would be), and the catch-up of those through the worker's batch step, its commands
/// counted per database. The changes are undone afterwards: later phases read V2 as seeded.
async fn detection(env: &Env, v2: &Database, v3: &Database, changed: usize) -> Detected {
    let ledger = Ledger::new(v3.clone());
    let topology = Topology::new(&format!("{}.detect", env.tag));
    let dry_run = |reader: Reader, ledger: Ledger| {
        let topology = topology.clone();
        async move {
            let selection = Selection::SinceLast {
                overlap_secs: 0,
                settle_secs: 0,
            };
            planner::plan(&reader, &ledger, None, &topology, &selection, true)
                .await
                .unwrap()
                .detection
                .unwrap()
        }
    };
    let reader = || Reader::new(v2.clone(), NonZeroU32::new(10_000).unwrap());
    let unchanged = dry_run(reader(), ledger.clone()).await;
    let migrated: Vec<String> = ledger
        .recorded_sources()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.viz)
        .filter(|v| v != vizhub_migrate::PRIMORDIAL_VIZ_ID)
        .collect();
    let infos = v2.collection::<Document>("documentInfo");
    // Vizzes V2 has public: making them private is a change.
    let public: std::collections::HashSet<String> = infos
        .find(doc! {"privacy": {"$ne": "private"}})
        .projection(doc! {"_id": 1})
        .await
        .unwrap()
        .try_collect::<Vec<Document>>()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
        .collect();
    let migrated: Vec<String> = migrated
        .into_iter()
        .filter(|v| public.contains(v))
        .collect();
    let targets: Vec<String> = migrated
        .iter()
        .step_by((migrated.len() / changed).max(1))
        .take(changed)
        .cloned()
        .collect();
    let was: Vec<Document> = infos
        .find(doc! {"_id": {"$in": &targets}})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    infos
        .update_many(
            doc! {"_id": {"$in": &targets}},
            doc! {"$set": {"privacy": "private"}},
        )
        .await
        .unwrap();
    // The daily run as it runs: the planner's pass (counted too), then the catch-up.
    let (client, counts) = counting_client(env).await;
    let counted = || Reader::new(client.database(v2.name()), NonZeroU32::new(10_000).unwrap());
    let found = dry_run(counted(), Ledger::new(client.database(v3.name()))).await;
    let m = Migrator::new(
        Reader::new(
            client.database(v2.name()),
            NonZeroU32::new(100_000).unwrap(),
        ),
        Store::new(client.database(v3.name())),
        Ledger::new(client.database(v3.name())),
        Config::default(),
    );
    let jobs: Vec<vizhub_migrate::job::Job> = targets
        .iter()
        .map(|viz| vizhub_migrate::job::Job {
            viz: viz.clone(),
            batch: None,
        })
        .collect();
    let t = Instant::now();
    for chunk in jobs.chunks(BATCH) {
        for (job, r) in chunk.iter().zip(m.migrate_batch(chunk).await) {
            let done = r.unwrap_or_else(|e| panic!("catch-up of {}: {e}", job.viz));
            assert_eq!(
                done.outcome,
                vizhub_migrate::Outcome::Migrated,
                "{}",
                job.viz
            );
        }
    }
    let catch_up_secs = t.elapsed().as_secs_f64();
    let c = counts.lock().unwrap().clone();
    // Per changed viz, the planner's pass included (its V2 queries scan all vizzes, its ledger
    // reads are V3's).
    let per = |db: &str| *c.get(db).unwrap_or(&0) as f64 / targets.len().max(1) as f64;
    for d in was {
        infos
            .replace_one(doc! {"_id": d.get_str("_id").unwrap()}, d.clone())
            .await
            .unwrap();
    }
    Detected {
        scanned: unchanged.scanned,
        v2_queries: unchanged.v2_queries,
        v2_per_viz: unchanged.v2_queries as f64 / unchanged.scanned.max(1) as f64,
        secs: unchanged.seconds,
        false_positives: unchanged.changes.len() as u64,
        changed: targets.len() as u64,
        found: found
            .changes
            .iter()
            .filter(|c| targets.contains(&c.viz) && c.fields == ["visibility"])
            .count() as u64,
        catch_up_v2_per_viz: per(v2.name()),
        catch_up_v3_per_viz: per(v3.name()),
        catch_up_secs,
    }
}

/// A client whose commands are counted per database name.
async fn counting_client(env: &Env) -> (Client, Arc<Mutex<HashMap<String, u64>>>) {
    let counts: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let seen = counts.clone();
    let mut o = ClientOptions::parse(&env.mongo_base).await.unwrap();
    o.command_event_handler = Some(EventHandler::callback(move |e: CommandEvent| {
        if let CommandEvent::Started(s) = e {
            *seen.lock().unwrap().entry(s.db.clone()).or_default() += 1;
        }
    }));
    (Client::with_options(o).unwrap(), counts)
}

struct Verified {
    compared: u64,
    secs: f64,
    mismatches: usize,
}

/// `planner verify --all` of a migrated V3, timed (reads only).
async fn verify_run(env: &Env, v2: &Database, v3: &Database) -> Verified {
    let m = Migrator::new(
        Reader::new(
            env.client.database(v2.name()),
            NonZeroU32::new(100_000).unwrap(),
        ),
        Store::new(v3.clone()),
        Ledger::new(v3.clone()),
        Config::default(),
    );
    let t = Instant::now();
    let report = vizhub_migrate::verify::verify(&m, vizhub_migrate::verify::Scope::All, |_, _| {})
        .await
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    for (category, n) in &report.by_category {
        let some: Vec<String> = report
            .mismatches
            .iter()
            .filter(|m| m.category == category)
            .take(3)
            .map(|m| format!("{}: {}", m.viz, m.detail))
            .collect();
        println!("verify mismatch {category}: {n}, e.g. {}", some.join("; "));
    }
    Verified {
        compared: report.compared,
        secs,
        mismatches: report.mismatches.len(),
    }
}

struct Cpu {
    translate_us: f64,
    deserialize_us: f64,
    ratio: f64,
}

/// Deserialize (JSON text → typed V2 model) and translate (as roots) every viz that prepares.
fn translation_cpu(data: &Dataset) -> Cpu {
    let cfg = Config::default();
    let users: HashMap<String, Value> = data
        .users
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let good: Vec<&V2Viz> = data
        .vizzes
        .iter()
        .filter(|v| translate::prepare(v, &cfg).is_ok())
        .collect();
    let texts: Vec<String> = good
        .iter()
        .map(|v| json!({"info": v.info, "content": v.content, "ops": v.ops}).to_string())
        .collect();
    let t = Instant::now();
    for text in &texts {
        let v: Value = serde_json::from_str(black_box(text)).unwrap();
        black_box(vizhub_migrate::v2::parse_viz_docs(&v).unwrap());
    }
    let deserialize = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for v in &good {
        let p = translate::prepare(black_box(v), &cfg).unwrap();
        let ctx = Context {
            parent: Parent::Root,
            users: &users,
            analytics: None,
            v3_analytics: None,
            previous: None,
            deleted_users: &vizhub_migrate::translate::NO_DELETED_USERS,
            now: 1_700_000_000,
        };
        let _ = black_box(translate::translate(&p, &ctx, &cfg));
    }
    let translate = t.elapsed().as_secs_f64();
    let n = good.len() as f64;
    Cpu {
        translate_us: translate / n * 1e6,
        deserialize_us: deserialize / n * 1e6,
        ratio: translate / deserialize,
    }
}

/// `planner plan --all` into `topology`: (published, seconds).
async fn plan(env: &Env, v2: &Database, v3: &Database, topology: &Topology) -> (u64, f64) {
    let conn = broker::connect(&env.amqp_uri).await.unwrap();
    broker::declare(&conn.create_channel().await.unwrap(), topology)
        .await
        .unwrap();
    let publisher = broker::Publisher::new(&conn).await.unwrap();
    let reader = Reader::new(v2.clone(), NonZeroU32::new(10_000).unwrap());
    let t = Instant::now();
    let report = planner::plan(
        &reader,
        &Ledger::new(v3.clone()),
        Some(&publisher),
        topology,
        &Selection::All,
        false,
    )
    .await
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let _ = conn.close(200, "planned".into()).await;
    (report.published, secs)
}

struct Run {
    workers: usize,
    concurrency: usize,
    secs: f64,
    vizzes_per_sec: f64,
    docs_per_sec: f64,
    v3_docs: u64,
    peak_rss_mib: f64,
    /// Dead letters at the end (the planted bad inputs, and anything else).
    dead: u32,
    /// Jobs with a ledger record.
    recorded: u64,
}

/// Peak resident set of a process (`VmHWM`), MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Real `worker` processes until every planned job has a ledger record.
async fn migrate(
    env: &Env,
    v2: &str,
    v3: &str,
    topology: &Topology,
    planned: u64,
    workers: usize,
    concurrency: usize,
) -> Run {
    let ledger = env
        .client
        .database(v3)
        .collection::<Document>(vizhub_migrate::ledger::VIZ);
    // Each worker serves /metrics on a port of its own; the clock stops when their `jobs`
    // counters add up to the jobs planned. Not a ledger count: on SecantusDB a count scans the
    // whole collection, and polling it every 100 ms took ~15 % of the server's time from the
    // migration being measured.
    let ports: Vec<u16> = (0..workers).map(|_| free_port()).collect();
    let t = Instant::now();
    let mut children: Vec<Child> = ports
        .iter()
        .map(|port| {
            Command::new(env!("CARGO_BIN_EXE_worker"))
                .args([
                    "--concurrency",
                    &concurrency.to_string(),
                    // BENCH_BATCH_SIZE: every run with that `--batch-size` (default: the worker's).
                    "--batch-size",
                    &std::env::var("BENCH_BATCH_SIZE")
                        .unwrap_or_else(|_| vizhub_migrate::worker::DEFAULT_BATCH_SIZE.to_string()),
                    "--until-idle",
                    "2",
                    "--metrics-addr",
                    &format!("127.0.0.1:{port}"),
                ])
                .env("V2_MONGO_URI", env.db_uri(v2))
                .env("V3_MONGO_URI", env.db_uri(v3))
                .env("AMQP_URI", &env.amqp_uri)
                .env("QUEUE_PREFIX", &topology.prefix)
                .env("V2_READS_PER_SEC", "100000")
                .env("LOG_FORMAT", "json")
                .env(
                    "RUST_LOG",
                    std::env::var("BENCH_WORKER_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stderr(match std::env::var_os("BENCH_WORKER_LOG") {
                    // Diagnostics: the workers' logs, appended to target/bench-workers.log.
                    Some(_) => std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(concat!(
                            env!("CARGO_MANIFEST_DIR"),
                            "/target/bench-workers.log"
                        ))
                        .map(Stdio::from)
                        .unwrap_or_else(|_| Stdio::null()),
                    None => Stdio::null(),
                })
                .stdout(Stdio::null())
                .spawn()
                .expect("worker binary")
        })
        .collect();
    let mut peak = 0.0_f64;
    loop {
        for c in &children {
            if let Some(m) = peak_rss_mib(c.id()) {
                peak = peak.max(m);
            }
        }
        let mut done = 0;
        for port in &ports {
            done += jobs_ended(*port).await;
        }
        // Every job ended, or every worker gone idle.
        let exited = children
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(Some(_))));
        if done >= planned || exited {
            break;
        }
        assert!(
            t.elapsed() < PATIENCE,
            "migration stalled at {done}/{planned}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    for c in &mut children {
        if let Some(m) = peak_rss_mib(c.id()) {
            peak = peak.max(m);
        }
        let status = c.wait().unwrap();
        assert!(status.success(), "worker exited {status:?}");
    }
    let dead = {
        let conn = broker::connect(&env.amqp_uri).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let d = broker::queue_depth(&ch, &topology.dead()).await.unwrap().0;
        let _ = conn.close(200, "".into()).await;
        d
    };
    let recorded = ledger.count_documents(doc! {}).await.unwrap();
    let db = env.client.database(v3);
    let mut v3_docs = 0;
    for name in db.list_collection_names().await.unwrap() {
        v3_docs += db
            .collection::<Document>(&name)
            .count_documents(doc! {})
            .await
            .unwrap();
    }
    Run {
        workers,
        concurrency,
        secs,
        vizzes_per_sec: planned as f64 / secs,
        docs_per_sec: v3_docs as f64 / secs,
        v3_docs,
        peak_rss_mib: peak,
        dead,
        recorded,
    }
}

/// A local TCP port free a moment ago (the worker binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// Jobs a worker has ended (its `vizhub_migrate_jobs_total` counters summed over outcomes),
/// read from its /metrics; 0 while it is not serving yet.
async fn jobs_ended(port: u16) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return 0;
    };
    let req = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut body = String::new();
    if s.read_to_string(&mut body).await.is_err() {
        return 0;
    }
    body.lines()
        .filter(|l| l.starts_with("vizhub_migrate_jobs_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

struct RawCopy {
    secs: f64,
    v2_docs: usize,
    v3_docs: usize,
    v3_bytes: usize,
}

struct Hot {
    forks: usize,
    vizzes_per_sec: f64,
    raw_per_sec: f64,
    raw_indexed_per_sec: f64,
    parent_v: i64,
    parent_ops: i64,
}

/// The hot-parent set ([`Dataset::hot_parent`]): the fixtures, then `n` copies forking the
/// primordial viz, migrated in-process by two "pods" at once in batches of [`BATCH`] (the
/// fixtures first, untimed), vs a raw copy of the same documents.
async fn hot_parent(env: &Env, n: usize) -> Hot {
    let parent = vizhub_migrate::PRIMORDIAL_VIZ_ID;
    let mut data = Dataset::fixtures();
    let created = data
        .vizzes
        .iter()
        .find(|v| v.info["_id"] == parent)
        .and_then(|v| v.info["createdTimestamp"].as_i64())
        .unwrap_or(0);
    let fixtures: Vec<String> = data
        .vizzes
        .iter()
        .filter_map(|v| v.info["_id"].as_str().map(str::to_string))
        .collect();
    data.extend(Dataset::hot_parent(n, parent, created));
    let v2 = env.client.database(&format!("{}_hot{n}_v2", env.tag));
    let v3 = env.client.database(&format!("{}_hot{n}_v3", env.tag));
    seed::write(&v2, &data, |_| {}).await.unwrap();
    let pod = || {
        Migrator::new(
            Reader::new(v2.clone(), NonZeroU32::new(100_000).unwrap()),
            Store::new(v3.clone()),
            Ledger::new(v3.clone()),
            Config::default(),
        )
    };
    let job = |viz: &String| vizhub_migrate::job::Job {
        viz: viz.clone(),
        batch: None,
    };
    let m = pod();
    m.v3.ensure_indexes().await.unwrap();
    let mut first: Vec<&V2Viz> = data
        .vizzes
        .iter()
        .filter(|v| fixtures.contains(&v.info["_id"].as_str().unwrap_or("").to_string()))
        .collect();
    first.sort_by_key(|v| v.info["createdTimestamp"].as_i64());
    let first: Vec<_> = first
        .iter()
        .filter_map(|v| v.info["_id"].as_str())
        .map(|s| job(&s.to_string()))
        .collect();
    let _ = m.migrate_batch(&first).await;
    let forks: Vec<vizhub_migrate::job::Job> = data
        .vizzes
        .iter()
        .filter_map(|v| v.info["_id"].as_str())
        .filter(|id| id.starts_with("ff"))
        .map(|id| job(&id.to_string()))
        .collect();
    let pods = [pod(), pod()];
    let t = Instant::now();
    let runs = pods.iter().enumerate().map(|(k, m)| {
        let mine: Vec<&[vizhub_migrate::job::Job]> = forks
            .chunks(BATCH)
            .enumerate()
            .filter(|(i, _)| i % 2 == k)
            .map(|(_, c)| c)
            .collect();
        async move {
            for chunk in mine {
                for r in m.migrate_batch(chunk).await {
                    r.unwrap();
                }
            }
        }
    });
    futures_util::future::join_all(runs).await;
    let secs = t.elapsed().as_secs_f64();
    let info = v3
        .collection::<Document>("info")
        .find_one(doc! {"_id": parent})
        .await
        .unwrap()
        .unwrap();
    let parent_v = info.get_i64("_v").unwrap_or(0);
    let parent_ops = v3
        .collection::<Document>("o_info")
        .count_documents(doc! {"d": parent})
        .await
        .unwrap() as i64;
    let raw = raw_copy(env, &v2, &v3, false).await;
    let raw_indexed = raw_copy(env, &v2, &v3, true).await;
    v2.drop().await.unwrap();
    v3.drop().await.unwrap();
    Hot {
        forks: n,
        vizzes_per_sec: n as f64 / secs,
        raw_per_sec: data.vizzes.len() as f64 / raw.secs,
        raw_indexed_per_sec: data.vizzes.len() as f64 / raw_indexed.secs,
        parent_v,
        parent_ops,
    }
}

/// Read every V2 doc of the set, write the migrated V3 docs again (same count and bytes) into a
/// scratch database with unordered bulk inserts; `indexed`: into collections with the V3
/// collections' secondary indexes. The V3 docs are loaded before the clock starts.
async fn raw_copy(env: &Env, v2: &Database, v3: &Database, indexed: bool) -> RawCopy {
    let mut v3_docs: Vec<(String, Vec<RawDocumentBuf>)> = Vec::new();
    for name in v3.list_collection_names().await.unwrap() {
        let mut cur = v3
            .collection::<RawDocumentBuf>(&name)
            .find(doc! {})
            .batch_size(1000)
            .await
            .unwrap();
        let mut docs = Vec::new();
        while cur.advance().await.unwrap() {
            docs.push(cur.current().to_raw_document_buf());
        }
        v3_docs.push((name, docs));
    }
    let scratch = env.client.database(&format!("{}_raw", env.tag));
    if indexed {
        // The V3 collections' own secondary indexes (the op logs' two sharedb-mongo indexes,
        // the lookups'), made before the clock starts: V3 needs them whoever writes the docs.
        for (name, _) in &v3_docs {
            let models: Vec<mongodb::IndexModel> = v3
                .collection::<Document>(name)
                .list_indexes()
                .await
                .unwrap()
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
                .into_iter()
                .filter(|m| m.keys != doc! {"_id": 1})
                .map(|m| mongodb::IndexModel::builder().keys(m.keys).build())
                .collect();
            if !models.is_empty() {
                scratch
                    .collection::<Document>(name)
                    .create_indexes(models)
                    .await
                    .unwrap();
            }
        }
    }
    let t = Instant::now();
    let mut read = 0;
    for name in v2.list_collection_names().await.unwrap() {
        let mut cur = v2
            .collection::<RawDocumentBuf>(&name)
            .find(doc! {})
            .batch_size(1000)
            .await
            .unwrap();
        while cur.advance().await.unwrap() {
            black_box(cur.current());
            read += 1;
        }
    }
    let (mut written, mut bytes) = (0, 0);
    for (name, docs) in &v3_docs {
        for chunk in docs.chunks(1000) {
            bytes += chunk.iter().map(|d| d.as_bytes().len()).sum::<usize>();
            written += chunk.len();
            scratch
                .collection::<RawDocumentBuf>(name)
                .insert_many(chunk)
                .ordered(false)
                .await
                .unwrap();
        }
    }
    let secs = t.elapsed().as_secs_f64();
    scratch.drop().await.unwrap();
    RawCopy {
        secs,
        v2_docs: read,
        v3_docs: written,
        v3_bytes: bytes,
    }
}

/// Seconds to publish `n` job-sized persistent messages to a scratch quorum queue, confirms
/// pipelined (all published, then all awaited), with lapin directly.
async fn raw_publish(env: &Env, n: u64) -> f64 {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let conn = broker::connect(&env.amqp_uri).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let queue = format!("{}.raw-publish", env.tag);
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    let body = json!({"viz": "86a75dc8bdbe4965ba353a79d4bd44c8", "batch": "all-0123456789abcdef"})
        .to_string()
        .into_bytes();
    let t = Instant::now();
    let mut confirms = Vec::with_capacity(n as usize);
    for _ in 0..n {
        confirms.push(
            ch.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
    let secs = t.elapsed().as_secs_f64();
    let _ = ch
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = conn.close(200, "done".into()).await;
    secs
}

async fn delete_queues(env: &Env, topology: &Topology) {
    let conn = broker::connect(&env.amqp_uri).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    for q in topology.all_queues() {
        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
    }
    let _ = conn.close(200, "done".into()).await;
}

struct Trips {
    vizzes: usize,
    /// Batches of [`BATCH`], as the worker runs them.
    v2_per_viz: f64,
    v3_per_viz: f64,
    /// One job at a time ([`Migrator::migrate`]), the same vizzes into another database.
    alone_v2_per_viz: f64,
    alone_v3_per_viz: f64,
}

/// The worker's default batch size.
const BATCH: usize = 32;

/// Migrate the first `k` vizzes (creation order) in-process, in batches of [`BATCH`] and one at
/// a time (each into a fresh V3), on clients whose commands are counted per database.
async fn round_trips(env: &Env, v2: &Database, data: &Dataset, k: usize) -> Trips {
    let batched = round_trips_of(env, v2, data, k, true).await;
    let alone = round_trips_of(env, v2, data, k, false).await;
    Trips {
        alone_v2_per_viz: alone.v2_per_viz,
        alone_v3_per_viz: alone.v3_per_viz,
        ..batched
    }
}

async fn round_trips_of(
    env: &Env,
    v2: &Database,
    data: &Dataset,
    k: usize,
    batched: bool,
) -> Trips {
    let counts: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    // Time per command kind (round-trip durations, summed): where a batch's time goes.
    let times: Arc<Mutex<HashMap<String, Duration>>> = Arc::default();
    let (seen, timed) = (counts.clone(), times.clone());
    let started: Arc<Mutex<HashMap<i32, String>>> = Arc::default();
    let mut o = ClientOptions::parse(&env.mongo_base).await.unwrap();
    o.command_event_handler = Some(EventHandler::callback(move |e: CommandEvent| match e {
        CommandEvent::Started(s) => {
            let coll = s.command.get_str(&s.command_name).unwrap_or("");
            let key = format!("{} {} {coll}", s.db, s.command_name);
            let mut c = seen.lock().unwrap();
            *c.entry(s.db.clone()).or_default() += 1;
            *c.entry(key.clone()).or_default() += 1;
            started.lock().unwrap().insert(s.request_id, key);
        }
        CommandEvent::Succeeded(s) => {
            if let Some(key) = started.lock().unwrap().remove(&s.request_id) {
                *timed.lock().unwrap().entry(key).or_default() += s.duration;
            }
        }
        CommandEvent::Failed(s) => {
            if let Some(key) = started.lock().unwrap().remove(&s.request_id) {
                *timed.lock().unwrap().entry(key).or_default() += s.duration;
            }
        }
        _ => {}
    }));
    let client = Client::with_options(o).unwrap();
    let v3_name = format!("{}_trips{}", env.tag, u8::from(batched));
    let v3 = client.database(&v3_name);
    let m = Migrator::new(
        Reader::new(
            client.database(v2.name()),
            NonZeroU32::new(100_000).unwrap(),
        ),
        Store::new(v3.clone()),
        Ledger::new(v3.clone()),
        Config::default(),
    );
    let mut vizzes: Vec<&V2Viz> = data
        .vizzes
        .iter()
        .filter(|v| v.info["createdTimestamp"].is_i64())
        .collect();
    vizzes.sort_by_key(|v| v.info["createdTimestamp"].as_i64());
    // Parents first: the fixtures (2015–2019) come before the generated vizzes (2018–2020)
    // where their dates say so; a fork whose parent is not migrated yet migrates it first
    // (counted with the fork, as in production).
    let sample: Vec<String> = vizzes
        .iter()
        .take(k)
        .filter_map(|v| v.info["_id"].as_str().map(str::to_string))
        .collect();
    // Warm up the connection pool, then count.
    m.migrate(vizhub_migrate::PRIMORDIAL_VIZ_ID, None)
        .await
        .unwrap();
    counts.lock().unwrap().clear();
    times.lock().unwrap().clear();
    let t = Instant::now();
    if batched {
        let jobs: Vec<vizhub_migrate::job::Job> = sample
            .iter()
            .map(|viz| vizhub_migrate::job::Job {
                viz: viz.clone(),
                batch: None,
            })
            .collect();
        for chunk in jobs.chunks(BATCH) {
            // Bad inputs cost their round trips too; their outcome does not matter here.
            let _ = m.migrate_batch(chunk).await;
        }
    } else {
        for id in &sample {
            let _ = m.migrate(id, None).await;
        }
    }
    let wall = t.elapsed();
    let c = counts.lock().unwrap().clone();
    let times = times.lock().unwrap().clone();
    v3.drop().await.unwrap();
    let per = |db: &str| *c.get(db).unwrap_or(&0) as f64 / sample.len().max(1) as f64;
    let mut by_command: Vec<(&String, &u64)> = c.iter().filter(|(k, _)| k.contains(' ')).collect();
    by_command.sort_by(|a, b| b.1.cmp(a.1));
    println!(
        "  {}:",
        if batched {
            "batched"
        } else {
            "one job at a time"
        }
    );
    let per_viz_ms = |d: Duration| d.as_secs_f64() * 1000.0 / sample.len().max(1) as f64;
    println!(
        "  {:.2} ms/viz wall, {:.2} ms/viz in commands",
        per_viz_ms(wall),
        per_viz_ms(times.values().sum())
    );
    for (k, n) in by_command {
        println!(
            "  {:>6.2}/viz {:>7.3} ms/viz  {k}",
            *n as f64 / sample.len().max(1) as f64,
            per_viz_ms(times.get(k).copied().unwrap_or_default())
        );
    }
    Trips {
        vizzes: sample.len(),
        v2_per_viz: per(v2.name()),
        v3_per_viz: per(&v3_name),
        alone_v2_per_viz: 0.0,
        alone_v3_per_viz: 0.0,
    }
}
