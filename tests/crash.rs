//! Jobs stopped between any two of their writes, and jobs racing over one parent, leave V3
//! exactly as one clean run does: page views counted once, snapshots as ShareDB writes them
//! (creation time kept), every fork under its real parent, counts right. The tests drive
//! [`Migrator::migrate`] directly (the function a worker runs per job) against the real
//! MongoDB-protocol server; the stop is the store's write budget, the moment a killed pod stops.

mod common;
#[path = "common/env.rs"]
mod env;

use env::TestEnv;
use serde_json::{json, Value};
use vizhub_migrate::migrate::Migrator;
use vizhub_migrate::translate::V2Viz;
use vizhub_migrate::verify::{self, Scope};
use vizhub_migrate::PRIMORDIAL_VIZ_ID;

const LOADING_CSV: &str = "3fd333e335fe4ecb9ee0c819802443b7";
const PENGUIN: &str = "a56e821963b849b897dd51db26067db9";
const DANGLING: &str = "366c38ba5ebc4631b4bd936f3b709744";

async fn verify_clean(m: &Migrator, compared: u64) {
    let report = verify::verify(m, Scope::All, |_, _| {}).await.unwrap();
    assert!(report.mismatches.is_empty(), "{}", report.render());
    assert_eq!(report.compared, compared, "{}", report.render());
}

/// The penguin's job migrates Loading CSV and the primordial viz first (its parent and
/// grandparent), so one job writes every kind of document: users, commits, contents, upvotes,
/// permissions, page views, infos and its parents' `forksCount`. Stopped after its n-th write
/// for every n, then run again with the other jobs — by a new pod (fresh caches) or the same
/// process (as after a failed ledger write), alternately — V3 is what a clean run leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stopped_between_any_two_writes_ends_as_a_clean_run() {
    let mut env = TestEnv::new("stops").await;
    let ids = env.load_fixtures(&[]).await;
    let views = env.load_page_views().await;
    let jobs = [PENGUIN, LOADING_CSV, PRIMORDIAL_VIZ_ID, DANGLING];
    let run_all = |m: Migrator| async move {
        for j in jobs {
            m.migrate(j, None)
                .await
                .unwrap_or_else(|e| panic!("{j}: {e}"));
        }
    };
    run_all(env.migrator()).await;
    let clean = env.v3_state().await;
    TestEnv::assert_views_equal_v2(&clean, &views, &ids);
    verify_clean(&env.migrator(), 4).await;
    assert_eq!(clean[&format!("info/{PRIMORDIAL_VIZ_ID}")]["forksCount"], 2);

    let base = env.v3.clone();
    let mut stops = 0;
    for n in 0.. {
        env.v3 = env.client.database(&format!("{}_s{n}", base.name()));
        let m = env.migrator();
        m.v3.stop_after_writes(Some(n));
        match m.migrate(PENGUIN, None).await {
            Ok(_) => {
                // The budget outlasted the job: every stop point is covered.
                env.v3.drop().await.unwrap();
                break;
            }
            Err(e) => assert!(e.to_string().contains("stopped before a V3 write"), "{e}"),
        }
        m.v3.stop_after_writes(None);
        let again = if n % 2 == 0 { env.migrator() } else { m };
        run_all(again).await;
        let state = env.v3_state().await;
        if state != clean {
            let diff: Vec<_> = state
                .iter()
                .filter(|(k, v)| clean.get(*k) != Some(*v))
                .map(|(k, v)| {
                    format!(
                        "{k}: {v}\n  clean: {}",
                        clean.get(k).unwrap_or(&Value::Null)
                    )
                })
                .chain(
                    clean
                        .keys()
                        .filter(|k| !state.contains_key(*k))
                        .map(|k| format!("{k}: missing")),
                )
                .collect();
            panic!(
                "stopped after write {n}, V3 differs from a clean run:\n{}",
                diff.join("\n")
            );
        }
        verify_clean(&env.migrator(), 4).await;
        env.v3.drop().await.unwrap();
        stops += 1;
    }
    assert!(stops >= 20, "the job was stopped at only {stops} points");
    env.v3 = base;
    env.cleanup().await;
}

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

/// Many forks of one hot parent (and forks of those), every one with page views, migrated at
/// once by four "pods": each fork's job migrates the parents it finds missing while their own
/// jobs run. Every page view is counted once, every count is right, verify (comparing values)
/// finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_racing_over_one_parent_count_every_page_view_once() {
    let env = TestEnv::new("racing").await;
    let mut ids = env.load_fixtures(&[]).await;
    let fixtures = common::World::with_fixtures(&[]);
    let created = fixtures.v2[LOADING_CSV].info["createdTimestamp"]
        .as_i64()
        .unwrap();
    for i in 0..24 {
        let id = format!("{i:032x}");
        let copy = if i % 3 == 2 {
            // A fork of an earlier copy: chains race too.
            let parent = format!("{:032x}", i - 1);
            copy_of(&fixtures.v2[PENGUIN], &id, &parent, created + i as i64 + 1)
        } else {
            copy_of(
                &fixtures.v2[LOADING_CSV],
                &id,
                PRIMORDIAL_VIZ_ID,
                created + i as i64,
            )
        };
        env.load_viz(&copy).await;
        ids.push(id);
    }
    let views = env.load_page_views().await;
    assert_eq!(views.len(), ids.len());
    env.check_v2().await;
    let pods: Vec<Migrator> = (0..4).map(|_| env.migrator()).collect();
    // Forks first, parents last in each pod's list: the parents' own jobs run while forks are
    // migrating them.
    let mut order = ids.clone();
    order.reverse();
    let jobs = order.iter().enumerate().map(|(i, viz)| {
        let m = pods[i % pods.len()].clone();
        let viz = viz.clone();
        tokio::spawn(async move {
            m.migrate(&viz, None)
                .await
                .unwrap_or_else(|e| panic!("{viz}: {e}"))
        })
    });
    for j in futures_util::future::join_all(jobs).await {
        j.unwrap();
    }
    env.check_v2().await;
    let state = env.v3_state().await;
    TestEnv::assert_views_equal_v2(&state, &views, &ids);
    // Hot parent: the primordial viz's forks are Loading CSV, the dangling-parent fixture and
    // 16 copies.
    assert_eq!(
        state[&format!("info/{PRIMORDIAL_VIZ_ID}")]["forksCount"],
        18
    );
    verify_clean(&env.migrator(), ids.len() as u64).await;
    env.cleanup().await;
}
