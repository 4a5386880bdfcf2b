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
use vizhub_migrate::v2::V2Viz;
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
            let diff = TestEnv::state_diff(&state, &clean);
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

/// A migrated user edited in V3 (profile, plan) keeps the V3 edit when a later job syncs the
/// user again with changed V2 data; a user V3 never edited follows V2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_edits_of_a_migrated_user_are_never_reverted() {
    use mongodb::bson::{doc, oid::ObjectId, Document};
    let env = TestEnv::new("v3users").await;
    env.load_fixtures(&[]).await;
    env.migrator().migrate(LOADING_CSV, None).await.unwrap();
    // V3 edits user 68416 the way sharedb-mongo writes: op first, then the snapshot.
    let users = env.v3.collection::<Document>("user");
    let snap = users
        .find_one(doc! {"_id": "68416"})
        .await
        .unwrap()
        .unwrap();
    let v = snap.get_i64("_v").unwrap();
    let op_id = ObjectId::new();
    env.v3
        .collection::<Document>("o_user")
        .insert_one(doc! {"_id": op_id, "src": "a-v3-browser", "seq": 1, "v": v,
        "op": [["bio", {"r": true, "i": "edited in V3"}], ["plan", {"r": true, "i": "premium"}]],
        "m": {"ts": 1_i64}, "c": "user", "d": "68416", "o": snap.get_object_id("_o").unwrap()})
        .await
        .unwrap();
    users
        .update_one(
            doc! {"_id": "68416"},
            doc! {"$set": {"bio": "edited in V3", "plan": "premium", "_v": v + 1, "_o": op_id}},
        )
        .await
        .unwrap();
    // V2 renames both owners; new jobs (a new pod: no user cache) sync them again.
    for (id, name) in [("68416", "Renamed In V2"), ("676445", "Also Renamed")] {
        let mut u = env.v2_user_doc(id).await;
        u["fullName"] = json!(name);
        env.put_v2("user", u).await;
    }
    let m = env.migrator();
    m.migrate(DANGLING, None).await.unwrap(); // owned by 68416
    m.migrate(PENGUIN, None).await.unwrap(); // owned by 676445
    let edited = env.v3_doc("user", "68416").await.unwrap();
    assert_eq!(edited["bio"], "edited in V3", "{edited}");
    assert_eq!(edited["plan"], "premium", "{edited}");
    assert_ne!(
        edited["displayName"], "Renamed In V2",
        "V3 owns an edited user"
    );
    let untouched = env.v3_doc("user", "676445").await.unwrap();
    assert_eq!(
        untouched["displayName"], "Also Renamed",
        "V2 owns it until V3 edits it"
    );
    assert_eq!(untouched["plan"], "free");
    env.cleanup().await;
}

/// A fork whose parent exists in V2 but fails (its content is missing) fails too, naming the
/// parent, instead of hanging from the primordial viz for good; once the parent is fixed and
/// both jobs run again, the fork sits under its real parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_of_a_failed_parent_fails_naming_it_then_migrates_under_it() {
    use vizhub_migrate::Disposition;
    let env = TestEnv::new("failedparent").await;
    env.load_fixtures(&[]).await;
    let fixtures = common::World::with_fixtures(&[]);
    let created = fixtures.v2[LOADING_CSV].info["createdTimestamp"]
        .as_i64()
        .unwrap();
    let (parent, fork) = ("a".repeat(32), "b".repeat(32));
    let mut broken = copy_of(
        &fixtures.v2[LOADING_CSV],
        &parent,
        PRIMORDIAL_VIZ_ID,
        created,
    );
    let content = broken.content.take().unwrap();
    env.load_viz(&broken).await;
    env.load_viz(&copy_of(&fixtures.v2[PENGUIN], &fork, &parent, created + 1))
        .await;
    let m = env.migrator();
    let e = m.migrate(&fork, None).await.unwrap_err();
    assert_eq!(e.disposition(), Disposition::DeadLetter, "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&fork) && msg.contains(&parent), "{msg}");
    assert!(env.v3_doc("info", &fork).await.is_none(), "nothing visible");
    // The parent is fixed in V2; both jobs are requeued.
    env.put_v2("documentContent", content).await;
    m.migrate(&fork, None).await.unwrap();
    m.migrate(&parent, None).await.unwrap();
    let info = env.v3_doc("info", &fork).await.unwrap();
    assert_eq!(info["forkedFrom"], json!(parent));
    env.cleanup().await;
}

/// A 200-deep chain of forks whose leaf's job runs first migrates every ancestor under its
/// real parent (no depth limit relinking the 33rd ancestor to the primordial viz), on a
/// bounded stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_deep_chain_published_leaf_first_keeps_every_link() {
    let env = TestEnv::new("deepchain").await;
    env.load_fixtures(&[]).await;
    let fixtures = common::World::with_fixtures(&[]);
    let created = fixtures.v2[LOADING_CSV].info["createdTimestamp"]
        .as_i64()
        .unwrap();
    let id = |k: usize| format!("{:032x}", 0xc4a1_0000 + k);
    const DEPTH: usize = 200;
    for k in 0..DEPTH {
        let parent = if k == 0 {
            PRIMORDIAL_VIZ_ID.to_string()
        } else {
            id(k - 1)
        };
        env.load_viz(&copy_of(
            &fixtures.v2[LOADING_CSV],
            &id(k),
            &parent,
            created + k as i64,
        ))
        .await;
    }
    env.migrator().migrate(&id(DEPTH - 1), None).await.unwrap();
    let commits: std::collections::HashMap<String, Value> = env
        .v3_docs("commit")
        .await
        .into_iter()
        .map(|c| (c["_id"].as_str().unwrap().to_string(), c))
        .collect();
    for k in 0..DEPTH {
        let info = env.v3_doc("info", &id(k)).await.unwrap();
        let parent = if k == 0 {
            PRIMORDIAL_VIZ_ID.to_string()
        } else {
            id(k - 1)
        };
        assert_eq!(info["forkedFrom"], json!(parent), "link {k}");
        assert!(
            info.get("forkedFromIsBackfilled").is_none(),
            "link {k}: {info}"
        );
        let start = &commits[info["start"].as_str().unwrap()];
        let fork_point = &commits[start["parent"].as_str().unwrap()];
        assert_eq!(fork_point["viz"], json!(parent), "link {k}");
    }
    // The jobs of the ancestors (published too) find them migrated; verify replays every chain
    // from the root, 200 vizzes deep.
    let m = env.migrator();
    for k in 0..DEPTH - 1 {
        m.migrate(&id(k), None).await.unwrap();
    }
    m.migrate(PRIMORDIAL_VIZ_ID, None).await.unwrap();
    let report = verify::verify(&m, Scope::All, |_, _| {}).await.unwrap();
    let chains: Vec<_> = report
        .mismatches
        .iter()
        .filter(|x| x.category == "history")
        .collect();
    assert!(chains.is_empty(), "{chains:?}");
    env.cleanup().await;
}

/// `planner verify` compares values: a doubled page-view count, a wrong `forksCount`, a
/// snapshot without its creation time or whose `_o` names another doc's op are mismatches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_compares_values_not_presence() {
    use mongodb::bson::{doc, Document};
    let env = TestEnv::new("verifyvalues").await;
    env.load_fixtures(&[]).await;
    let views = env.load_page_views().await;
    let m = env.migrator();
    for j in [PENGUIN, LOADING_CSV, PRIMORDIAL_VIZ_ID, DANGLING] {
        m.migrate(j, None).await.unwrap();
    }
    verify_clean(&m, 4).await;
    let event = views.keys().find(|k| k.ends_with(LOADING_CSV)).unwrap();
    let coll = |c: &str| env.v3.collection::<Document>(c);
    coll("analyticsevent")
        .update_one(doc! {"_id": event}, doc! {"$mul": {"intervals.all.all": 2}})
        .await
        .unwrap();
    coll("info")
        .update_one(
            doc! {"_id": PRIMORDIAL_VIZ_ID},
            doc! {"$set": {"forksCount": 7}},
        )
        .await
        .unwrap();
    coll("content")
        .update_one(doc! {"_id": PENGUIN}, doc! {"$set": {"_m.ctime": null}})
        .await
        .unwrap();
    let other = coll("info")
        .find_one(doc! {"_id": LOADING_CSV})
        .await
        .unwrap()
        .unwrap();
    coll("info")
        .update_one(
            doc! {"_id": DANGLING},
            doc! {"$set": {"_o": other.get_object_id("_o").unwrap()}},
        )
        .await
        .unwrap();
    let report = verify::verify(&m, Scope::All, |_, _| {}).await.unwrap();
    let found: Vec<(&str, &str)> = report
        .mismatches
        .iter()
        .map(|x| (x.viz.as_str(), x.category))
        .collect();
    for want in [
        (LOADING_CSV, "analytics"),
        (PRIMORDIAL_VIZ_ID, "info"),
        (PENGUIN, "envelope"),
        (DANGLING, "envelope"),
    ] {
        assert!(found.contains(&want), "{want:?} not in {}", report.render());
    }
    assert_eq!(found.len(), 4, "{}", report.render());
    // A commit changed behind the migration's back: its chain no longer replays to the content.
    let start = env.record(LOADING_CSV).await.migrated.unwrap().start;
    coll("commit")
        .update_one(
            doc! {"_id": &start},
            doc! {"$set": {"ops": ["title", {"r": true, "i": "broken"}]}},
        )
        .await
        .unwrap();
    let report = verify::verify(&env.migrator(), Scope::All, |_, _| {})
        .await
        .unwrap();
    assert!(
        report
            .mismatches
            .iter()
            .any(|x| x.viz == LOADING_CSV && x.category == "history"),
        "{}",
        report.render()
    );
    // Documents a translation writes besides info and content: each one missing is named.
    coll("user")
        .delete_one(doc! {"_id": "676445"})
        .await
        .unwrap();
    coll("upvote")
        .delete_one(doc! {"viz": PRIMORDIAL_VIZ_ID})
        .await
        .unwrap();
    coll("permission").delete_many(doc! {}).await.unwrap();
    let report = verify::verify(&env.migrator(), Scope::All, |_, _| {})
        .await
        .unwrap();
    for want in [
        (PENGUIN, "users"),
        (PRIMORDIAL_VIZ_ID, "upvotes"),
        (PRIMORDIAL_VIZ_ID, "permissions"),
    ] {
        assert!(
            report
                .mismatches
                .iter()
                .any(|x| (x.viz.as_str(), x.category) == want),
            "{want:?} not in {}",
            report.render()
        );
    }
    env.cleanup().await;
}

/// A fork whose job ends failed after its info became visible (its writes stopped right after
/// the info, before its parent's recount) is still counted in its parent's `forksCount`: the
/// failure's record settles the count (spec 3.4, "counts stay exact").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_failed_after_its_info_became_visible_is_still_counted() {
    let mut env = TestEnv::new("failed_fork").await;
    env.load_fixtures(&[]).await;
    let base = env.v3.clone();
    let mut found = false;
    for n in 0..80u64 {
        env.v3 = env.client.database(&format!("{}_f{n}", base.name()));
        let m = env.migrator();
        for parent in [PRIMORDIAL_VIZ_ID, LOADING_CSV] {
            m.migrate(parent, None).await.unwrap();
        }
        m.v3.stop_after_writes(Some(n));
        let err = match m.migrate(PENGUIN, None).await {
            Ok(_) => break,
            Err(e) => e,
        };
        m.v3.stop_after_writes(None);
        let visible = env
            .v3_doc("info", PENGUIN)
            .await
            .is_some_and(|i| !i["_type"].is_null());
        let counted = env.v3_doc("info", LOADING_CSV).await.unwrap()["forksCount"].clone();
        if visible && counted == json!(0) {
            found = true;
            m.record_failure(PENGUIN, &err, None).await.unwrap();
            let counted = env.v3_doc("info", LOADING_CSV).await.unwrap()["forksCount"].clone();
            assert_eq!(
                counted,
                json!(1),
                "stopped after write {n}: the fork is not counted"
            );
        }
        env.v3.drop().await.unwrap();
        if found {
            break;
        }
    }
    assert!(found, "no stop point left the fork visible and uncounted");
    env.v3 = base;
    env.cleanup().await;
}
