//! V2 read from a replica set: every query may go to another secondary, so a viz's op log can
//! come from a node behind the one its content snapshot came from, and lack the op the snapshot
//! names (`_o`, its head op). Read so, the history would fall back to the two-commit form for
//! good. Here the head op is withheld from the first read of the log (written right after that
//! read was answered, as the lagging node would have received it), and the job — alone or in a
//! batch — reads the log again and migrates the full history; a head op that never shows up
//! costs a bounded number of re-reads, then the fallback names it.

mod common;
#[path = "common/env.rs"]
mod env;

use env::TestEnv;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use mongodb::event::command::{CommandEvent, CommandStartedEvent};
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use vizhub_migrate::job::Job;
use vizhub_migrate::ledger::Ledger;
use vizhub_migrate::migrate::Migrator;
use vizhub_migrate::translate::Config;
use vizhub_migrate::v2::reader::{Reader, HEAD_OP_REREADS};
use vizhub_migrate::v3::store::Store;
use vizhub_migrate::{Outcome, PRIMORDIAL_VIZ_ID};

const JSON0: &str = "http://sharejs.org/types/JSONv0";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A viz whose op log holds v1..v3 (three edits, an hour apart: three sessions), each op
/// linking the one before, and whose snapshot (v4) names op v3. The snapshot was last written
/// `age_ms` ago. Inserted into V2 without op v3, which is returned.
async fn viz_without_head(env: &TestEnv, n: u32, age_ms: i64) -> (String, Document) {
    let id = format!("{:032x}", 0x1a6_0000 + n);
    let mtime = now_ms() - age_ms;
    let created = mtime / 1000 - 4 * 3600;
    let oids: Vec<ObjectId> = (0..3).map(|_| ObjectId::new()).collect();
    let ops: Vec<Document> = (0..3_usize)
        .map(|k| {
            let prev = k
                .checked_sub(1)
                .map_or(Bson::Null, |p| Bson::ObjectId(oids[p]));
            let text = ["a", "b", "c"][k];
            doc! {"_id": oids[k], "src": "live", "seq": k as i64 + 1, "v": k as i64 + 1, "d": &id,
            "o": prev, "m": {"ts": (created + 3600 * (k as i64 + 1)) * 1000},
            "op": [{"p": ["files", 0, "text", k as i64], "si": text}]}
        })
        .collect();
    let v2 = |c: &str| env.v2.collection::<Document>(c);
    v2("documentInfo")
        .insert_one(doc! {"_id": &id, "id": &id, "_type": JSON0, "_v": 1_i64,
        "documentType": "visualization", "owner": "68416", "title": format!("Live {n}"),
        "createdTimestamp": created, "lastUpdatedTimestamp": mtime / 1000,
        "forkedFrom": PRIMORDIAL_VIZ_ID})
        .await
        .unwrap();
    v2("documentContent")
        .insert_one(
            doc! {"_id": &id, "id": &id, "_type": JSON0, "_v": 4_i64, "_o": oids[2],
            "_m": {"ctime": created * 1000, "mtime": mtime}, "documentType": "visualization",
            "files": [{"name": "index.html", "text": "abc"}]},
        )
        .await
        .unwrap();
    v2("o_documentContent")
        .insert_many(ops[..2].to_vec())
        .await
        .unwrap();
    env.wrote_v2().await;
    (id, ops[2].clone())
}

/// A V2 command monitor: records the filter of each `find` of `viz`'s op log (a job's own,
/// `{d}`, or a batch's, `{d: {$in}}`), and, when `hold`, blocks the reader right after the first
/// was answered until the test lets it go ([`Reads::wait`], [`Reads::release`]): the head op is
/// written in between, without sleeps.
struct Reads {
    filters: Arc<Mutex<Vec<Document>>>,
    held: tokio::sync::mpsc::UnboundedReceiver<()>,
    go: std::sync::mpsc::Sender<()>,
}

impl Reads {
    fn of(viz: &str, hold: bool) -> (EventHandler<CommandEvent>, Reads) {
        let (held_tx, held) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let filters: Arc<Mutex<Vec<Document>>> = Arc::default();
        let seen = filters.clone();
        let viz = viz.to_string();
        let reads_log = move |s: &CommandStartedEvent| {
            if s.command_name != "find" || s.command.get_str("find") != Ok("o_documentContent") {
                return None;
            }
            let filter = s.command.get_document("filter").ok()?;
            let d = filter.get("d")?;
            let mentions = match d {
                Bson::String(one) => one == &viz,
                Bson::Document(q) => q
                    .get_array("$in")
                    .is_ok_and(|ids| ids.iter().any(|i| i.as_str() == Some(viz.as_str()))),
                _ => false,
            };
            mentions.then(|| filter.clone())
        };
        let first: Mutex<Option<i32>> = Mutex::default();
        let left = Mutex::new(hold);
        let handler = EventHandler::callback(move |e: CommandEvent| match e {
            CommandEvent::Started(s) => {
                if let Some(filter) = reads_log(&s) {
                    let mut seen = seen.lock().unwrap();
                    if seen.is_empty() {
                        *first.lock().unwrap() = Some(s.request_id);
                    }
                    seen.push(filter);
                }
            }
            CommandEvent::Succeeded(s) if *first.lock().unwrap() == Some(s.request_id) => {
                let mut left = left.lock().unwrap();
                if std::mem::take(&mut *left) {
                    held_tx.send(()).unwrap();
                    go_rx.lock().unwrap().recv().unwrap();
                }
            }
            _ => {}
        });
        (handler, Reads { filters, held, go })
    }

    /// Until the first read of the log is answered and held (at most 2 minutes: a bound, not a
    /// synchronization, so a job that never reads it fails the test instead of hanging CI).
    async fn wait(&mut self) {
        tokio::time::timeout(std::time::Duration::from_secs(120), self.held.recv())
            .await
            .expect("the op log read within 2 minutes")
            .expect("the op log read");
    }

    fn release(&self) {
        self.go.send(()).unwrap();
    }

    fn filters(&self) -> Vec<Document> {
        self.filters.lock().unwrap().clone()
    }
}

/// A migrator of `env` whose V2 commands pass through `handler`.
async fn migrator(env: &TestEnv, handler: EventHandler<CommandEvent>) -> Migrator {
    let mut o = ClientOptions::parse(&env.mongo_base).await.unwrap();
    o.command_event_handler = Some(handler);
    let client = mongodb::Client::with_options(o).unwrap();
    Migrator::new(
        Reader::new(
            client.database(env.v2.name()),
            NonZeroU32::new(10_000).unwrap(),
        ),
        Store::new(env.v3.clone()),
        Ledger::new(env.v3.clone()),
        Config::default(),
    )
}

/// The fixtures in V2 and the primordial viz migrated, so a job on a fork of it finishes in a
/// batch's fast path, not alone.
async fn with_primordial(test: &str) -> TestEnv {
    let env = TestEnv::new(test).await;
    env.load_fixtures(&[]).await;
    env.migrator()
        .migrate(PRIMORDIAL_VIZ_ID, None)
        .await
        .expect("the primordial viz migrates");
    env
}

async fn run(m: &Migrator, viz: &str, batch: bool) -> Outcome {
    let done = if batch {
        let job = Job {
            viz: viz.to_string(),
            batch: Some("b1".into()),
        };
        m.migrate_batch(&[job]).await.remove(0)
    } else {
        m.migrate(viz, Some("b1")).await
    };
    done.unwrap_or_else(|e| panic!("{viz}: {e}")).outcome
}

/// Whether every read of the log was a batch's (`{d: {$in}}`): the batch did not hand the viz
/// to a job of its own, whose fresh read would find the head op without any re-read.
fn all_batch_reads(filters: &[Document]) -> bool {
    filters.iter().all(|f| f.get_document("d").is_ok())
}

async fn head_written_after_the_first_read(batch: bool) {
    let env = with_primordial(if batch { "headlagbatch" } else { "headlagone" }).await;
    let (viz, head) = viz_without_head(&env, u32::from(batch), 5_000).await;
    let (handler, mut reads) = Reads::of(&viz, true);
    let m = migrator(&env, handler).await;
    let job = {
        let viz = viz.clone();
        tokio::spawn(async move { run(&m, &viz, batch).await })
    };
    reads.wait().await;
    // The op reaches the node the log was read from only now.
    env.v2
        .collection::<Document>("o_documentContent")
        .insert_one(head)
        .await
        .unwrap();
    env.wrote_v2().await;
    reads.release();
    assert_eq!(job.await.unwrap(), Outcome::Migrated);
    let r = env.record(&viz).await;
    let history = r.migrated.as_ref().map(|m| m.history.clone());
    assert_eq!(r.reason, None, "not the fallback: {history:?}");
    let history = history.expect("migrated");
    assert!(history.starts_with("replayed 3 ops from v1"), "{history}");
    let filters = reads.filters();
    assert_eq!(filters.len(), 2, "read, then read again once: {filters:?}");
    if batch {
        assert!(all_batch_reads(&filters), "{filters:?}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_reads_a_log_lacking_its_head_op_again_and_migrates_the_full_history() {
    head_written_after_the_first_read(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_reads_a_log_lacking_its_head_op_again_and_migrates_the_full_history() {
    head_written_after_the_first_read(true).await;
}

/// A head op that never shows up: the log is read again [`HEAD_OP_REREADS`] times, no more, and
/// the viz migrates with the fallback history, its reason naming the op. A snapshot older than
/// any replica's lag whose log lacks its head (a truncated log) costs no re-read at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_op_that_never_shows_up_costs_bounded_rereads_then_the_fallback_names_it() {
    let env = with_primordial("headlost").await;
    let three_days = 3 * 24 * 3600 * 1000;
    for (n, batch, age_ms, reads) in [
        (10, false, 5_000, 1 + HEAD_OP_REREADS as usize),
        (11, true, 5_000, 1 + HEAD_OP_REREADS as usize),
        (12, false, three_days, 1),
        (13, true, three_days, 1),
    ] {
        let (viz, head) = viz_without_head(&env, n, age_ms).await;
        let (handler, counted) = Reads::of(&viz, false);
        let m = migrator(&env, handler).await;
        assert_eq!(run(&m, &viz, batch).await, Outcome::Migrated, "{n}");
        let reason = env.record(&viz).await.reason.unwrap_or_default();
        let head = head.get_object_id("_id").unwrap().to_hex();
        assert!(
            reason.contains("head op") && reason.contains(&head) && reason.contains("v3"),
            "{n}: {reason}"
        );
        let filters = counted.filters();
        assert_eq!(filters.len(), reads, "{n}: {filters:?}");
        if batch {
            assert!(all_batch_reads(&filters), "{n}: {filters:?}");
        }
    }
    env.cleanup().await;
}
