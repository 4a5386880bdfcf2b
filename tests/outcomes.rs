//! Spec 3.5, table-driven: every outcome the pure core can decide, from the viz's own V2 docs.
//! (Transient errors, panics and the queues are the fleet's tests.)

mod common;
use common::{synthetic_viz, World};
use serde_json::json;
use vizhub_migrate::history::Mode;
use vizhub_migrate::outcome::{plan, LastMigration, Plan, V3Now};
use vizhub_migrate::translate::{self, Config, TranslateError};
use vizhub_migrate::{Disposition, Outcome};

const V: &str = "0123456789abcdef0123456789abcdef";

fn base() -> vizhub_migrate::v2::V2Viz {
    synthetic_viz(
        V,
        "68416",
        None,
        1_600_000_000,
        json!([{"name": "index.html", "text": "hi"}]),
        &[],
    )
}

fn with(f: impl FnOnce(&mut vizhub_migrate::v2::V2Viz)) -> vizhub_migrate::v2::V2Viz {
    let mut v = base();
    f(&mut v);
    v
}

/// Outcome of a job for this input: the error's disposition, or migrated.
fn outcome_of(w: &mut World, v: vizhub_migrate::v2::V2Viz) -> (Outcome, String) {
    w.translations.remove(V);
    w.v2.insert(V.into(), v);
    match w.migrate(V) {
        Ok(_) => (Outcome::Migrated, String::new()),
        Err(e) => (e.disposition().final_outcome(), e.to_string()),
    }
}

#[test]
fn outcomes_table() {
    let big = "x".repeat(Config::default().max_content_bytes + 1);
    let rows: Vec<(&str, vizhub_migrate::v2::V2Viz, Outcome, &str)> = vec![
        (
            "tombstone",
            with(|v| v.info = json!({"_id": V, "_type": null, "_v": 4, "forksCount": 1})),
            Outcome::Skipped,
            "tombstone",
        ),
        (
            "no id",
            with(|v| {
                v.info.as_object_mut().unwrap().remove("id");
            }),
            Outcome::Skipped,
            "no `id`",
        ),
        (
            "dataset",
            with(|v| v.info["documentType"] = json!("dataset")),
            Outcome::Skipped,
            "not a visualization",
        ),
        (
            "partial doc",
            with(
                |v| v.info = json!({"_id": V, "id": V, "_type": "http://sharejs.org/types/JSONv0", "imagesUpdatedTimestamp": 5}),
            ),
            Outcome::Skipped,
            "partial",
        ),
        (
            "no owner",
            with(|v| {
                v.info.as_object_mut().unwrap().remove("owner");
            }),
            Outcome::Skipped,
            "partial",
        ),
        (
            "only bundle.js",
            with(|v| {
                v.content.as_mut().unwrap()["files"] = json!([{"name": "bundle.js", "text": "b"}])
            }),
            Outcome::Skipped,
            "no files",
        ),
        (
            "content missing",
            with(|v| v.content = None),
            Outcome::Failed,
            "documentContent is missing",
        ),
        (
            "content tombstone",
            with(|v| v.content = Some(json!({"_id": V, "_type": null, "_v": 9}))),
            Outcome::Failed,
            "tombstone",
        ),
        (
            "content too large",
            with(|v| {
                v.content.as_mut().unwrap()["files"] = json!([{"name": "a.csv", "text": big}])
            }),
            Outcome::Failed,
            "over the",
        ),
        (
            "_id != id",
            with(|v| v.info["_id"] = json!("ffffffffffffffffffffffffffffffff")),
            Outcome::Failed,
            "differs from id",
        ),
        (
            "owner missing",
            with(|v| v.info["owner"] = json!("nobody")),
            Outcome::Failed,
            "owner nobody is missing",
        ),
        (
            "malformed info",
            with(|v| v.info["title"] = json!(42)),
            Outcome::Failed,
            "malformed",
        ),
        (
            "files not a list",
            with(|v| v.content.as_mut().unwrap()["files"] = json!("x")),
            Outcome::Failed,
            "malformed",
        ),
        (
            "upvoter missing",
            with(|v| v.info["upvotes"] = json!([{"userId": "ghost", "timestamp": 1_600_000_100}])),
            Outcome::Migrated,
            "",
        ),
        (
            "op log unusable",
            with(|v| {
                v.content.as_mut().unwrap()["_v"] = json!(8);
                v.ops = vec![
                    json!({"v": 7, "op": [{"p": ["files", 0, "text", 0], "si": "zzz"}], "m": {"ts": 1}}),
                ];
            }),
            Outcome::Migrated,
            "",
        ),
    ];
    let mut w = World::with_fixtures(&["ghost", "nobody"]);
    for (name, input, want, reason) in rows {
        let (got, msg) = outcome_of(&mut w, input);
        assert_eq!(got, want, "{name}: {msg}");
        assert!(
            msg.contains(reason),
            "{name}: reason {msg:?} lacks {reason:?}"
        );
        if want != Outcome::Migrated && name != "no id" {
            assert!(
                msg.contains(V) || msg.contains("ffffffff"),
                "{name}: reason names the viz: {msg}"
            );
        }
    }
}

#[test]
fn fallback_and_skipped_entries_are_recorded() {
    let mut w = World::with_fixtures(&["ghost"]);
    let mut v = base();
    v.content.as_mut().unwrap()["_v"] = json!(8);
    v.ops =
        vec![json!({"v": 7, "op": [{"p": ["files", 0, "text", 0], "si": "zzz"}], "m": {"ts": 1}})];
    v.info["upvotes"] =
        json!([{"userId": "ghost", "timestamp": 1}, {"userId": "68416", "timestamp": 2}]);
    v.info["collaborators"] = json!([{"userId": "ghost"}]);
    w.add(v);
    let t = w.migrate(V).unwrap();
    match &t.history {
        Mode::Fallback { reason } => assert!(
            reason.contains("v7") && reason.contains("does not match"),
            "{reason}"
        ),
        other => panic!("expected fallback, got {other:?}"),
    }
    assert_eq!(t.upvotes.len(), 1);
    assert_eq!(t.skipped.len(), 2);
    assert!(t
        .skipped
        .iter()
        .all(|s| s.user == "ghost" && s.reason.contains(V)));
}

#[test]
fn entries_without_a_user_id_are_skipped_with_a_note_not_dead_lettered() {
    let mut w = World::with_fixtures(&[]);
    let mut v = base();
    v.info["upvotes"] = json!([{"timestamp": 1}, {"userId": null, "timestamp": 2},
        {"userId": "68416", "timestamp": 3}]);
    v.info["collaborators"] = json!([{}, {"userId": "68416"}]);
    w.add(v);
    let t = w.migrate(V).unwrap();
    assert_eq!(t.upvotes.len(), 1);
    assert_eq!(t.permissions.len(), 1);
    assert_eq!(t.skipped.len(), 3, "{:?}", t.skipped);
    assert!(
        t.skipped
            .iter()
            .all(|s| s.reason.contains("has no userId") && s.reason.contains(V)),
        "{:?}",
        t.skipped
    );
}

#[test]
fn unchanged_resync_and_deleted_in_v3() {
    let cfg = Config::default();
    let fp = translate::prepare(&base(), &cfg)
        .unwrap()
        .source_fingerprint();
    let last = LastMigration {
        fingerprint: &fp,
        analytics: None,
    };
    let v3 = V3Now::Live;
    assert_eq!(plan(Some(&last), &fp, None, v3), Plan::Unchanged);
    let changed = translate::prepare(&with(|v| v.info["title"] = json!("New")), &cfg).unwrap();
    assert_eq!(
        plan(Some(&last), &changed.source_fingerprint(), None, v3),
        Plan::Resync
    );
    // An hourly score rewrite bumps info `_v` but changes nothing we migrate.
    let rescored = translate::prepare(
        &with(|v| {
            v.info["_v"] = json!(99);
            v.info["scoreWilson"] = json!(0.5);
        }),
        &cfg,
    )
    .unwrap();
    assert_eq!(
        plan(Some(&last), &rescored.source_fingerprint(), None, v3),
        Plan::Unchanged
    );
    // V3's users deleted the viz: never re-created, whatever V2 did (spec 3.4). Edits in V3
    // are merged field by field by the re-sync (`merge`), not refused here.
    assert_eq!(
        plan(
            Some(&last),
            &changed.source_fingerprint(),
            None,
            V3Now::Deleted
        ),
        Plan::DeletedInV3
    );
}

#[test]
fn dispositions() {
    let e = TranslateError::OwnerMissing {
        viz: V.into(),
        owner: "x".into(),
    };
    assert_eq!(e.disposition(), Disposition::DeadLetter);
    assert_eq!(e.kind(), "owner_missing");
    assert_eq!(
        TranslateError::NoFiles { viz: V.into() }.disposition(),
        Disposition::Skip
    );
}

/// The `end@updated` commit (a re-sync with no content change, only a later `updated`) names
/// its parent in its id: a retry that hangs it elsewhere never reuses a commit pointing at the
/// old place.
#[test]
fn the_end_commit_id_depends_on_what_it_hangs_from() {
    use vizhub_migrate::translate::{Context, Parent, Previous};
    let mut w = World::with_fixtures(&[]);
    w.add(base());
    let first = w.migrate(V).unwrap().clone();
    let cfg = Config::default();
    let later = with(|v| v.info["lastUpdatedTimestamp"] = json!(1_600_000_900));
    let p = translate::prepare(&later, &cfg).unwrap();
    let end_after = |end: &str| {
        let previous = Previous {
            content_v: first.content_v,
            start_commit: first.info.start.clone(),
            end_commit: end.to_string(),
            end_timestamp: first.info.updated,
            content: first.content.clone(),
            file_ids: first.file_ids.clone(),
            analytics: None,
            forked_from: first.info.forked_from.clone(),
            forked_from_is_backfilled: first.info.forked_from_is_backfilled,
        };
        let ctx = Context {
            parent: Parent::Root,
            users: &w.users,
            analytics: None,
            v3_analytics: None,
            previous: Some(&previous),
            deleted_users: &vizhub_migrate::translate::NO_DELETED_USERS,
            now: common::NOW,
        };
        let t = translate::translate(&p, &ctx, &cfg).unwrap();
        assert_eq!(t.commits.len(), 1, "{:?}", t.commits);
        assert_eq!(t.commits[0].parent.as_deref(), Some(end));
        t.commits[0].id.clone()
    };
    assert_eq!(end_after("e1"), end_after("e1"));
    assert_ne!(end_after("e1"), end_after("e2"));
}
