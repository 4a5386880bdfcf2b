//! Every real V2 fixture translates; the primordial viz gets its real revision history back; the
//! commit chains replay (in Rust) to the content; V3's invariants hold; emoji survive.

mod common;
use common::World;
use serde_json::Value;
use vizhub_migrate::history::Mode;
use vizhub_migrate::{json0, v2, v3, PRIMORDIAL_VIZ_ID};

const LOADING_CSV: &str = "3fd333e335fe4ecb9ee0c819802443b7";
const PENGUIN: &str = "a56e821963b849b897dd51db26067db9";
const DANGLING: &str = "366c38ba5ebc4631b4bd936f3b709744";

fn migrated_world() -> World {
    let mut w = World::with_fixtures(&[]);
    let ids: Vec<String> = w.v2.keys().cloned().collect();
    for id in ids {
        w.migrate(&id).unwrap_or_else(|e| panic!("{id}: {e}"));
    }
    w
}

#[test]
fn every_fixture_translates_and_satisfies_v3_invariants() {
    let w = migrated_world();
    assert_eq!(
        w.translations.len(),
        vizhub_migrate::fixtures::viz_fixtures().len()
    );
    for viz in w.translations.keys() {
        assert_eq!(w.violations(viz), Vec::<String>::new(), "{viz}");
    }
}

#[test]
fn primordial_history_is_rebuilt_and_replays_exactly() {
    let w = migrated_world();
    let t = &w.translations[PRIMORDIAL_VIZ_ID];
    assert_eq!(
        t.history,
        Mode::Replayed {
            base_v: 111,
            ops: 372
        }
    );
    assert!(t.commits.len() > 2, "only {} commits", t.commits.len());
    assert_eq!(t.info.forked_from, None);
    assert_eq!(t.commits[0].parent, None);
    assert_eq!(t.commits[0].timestamp, t.info.created);
    assert_eq!(t.commits.last().unwrap().timestamp, t.info.updated);
    // Timestamps never go backwards.
    assert!(t
        .commits
        .windows(2)
        .all(|c| c[0].timestamp <= c[1].timestamp));
    // Rust json1 replay of the commits equals the final V3 content.
    assert_eq!(v3::content_at(&w.commits, &t.info.end).unwrap(), t.content);

    // Forward replay of the V2 log from the rebuilt oldest state reproduces the snapshot exactly.
    let raw = vizhub_migrate::fixtures::viz_fixture(PRIMORDIAL_VIZ_ID);
    let snapshot = v2::payload(&raw["content"]);
    let ops: Vec<json0::Op> = raw["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| json0::parse_op(&o["op"]).unwrap())
        .collect();
    let mut state = snapshot.clone();
    for op in ops.iter().rev() {
        json0::apply(&mut state, &json0::invert(op)).unwrap();
    }
    assert_ne!(state, snapshot, "v111 differs from v483");
    for op in &ops {
        json0::apply(&mut state, op).unwrap();
    }
    assert_eq!(state, snapshot);
}

#[test]
fn content_keeps_every_file_but_bundle_js() {
    let w = migrated_world();
    for (id, raw) in vizhub_migrate::fixtures::viz_fixtures() {
        let files = raw["content"]["files"].as_array().unwrap();
        let mut want: Vec<(&str, &str)> = files
            .iter()
            .filter(|f| f["name"] != "bundle.js")
            .map(|f| (f["name"].as_str().unwrap(), f["text"].as_str().unwrap()))
            .collect();
        let got_map = w.translations[&id].content["files"].as_object().unwrap();
        let mut got: Vec<(&str, &str)> = got_map
            .values()
            .map(|f| (f["name"].as_str().unwrap(), f["text"].as_str().unwrap()))
            .collect();
        assert!(got_map
            .keys()
            .all(|k| k.len() == 8 && k.chars().all(|c| c.is_ascii_hexdigit())));
        // Same files, same order as V2's array.
        assert_eq!(got, want, "{id}");
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }
}

#[test]
fn forks_hang_from_the_right_parents() {
    let w = migrated_world();
    let csv = &w.translations[LOADING_CSV];
    assert_eq!(csv.info.forked_from.as_deref(), Some(PRIMORDIAL_VIZ_ID));
    assert_eq!(csv.info.forked_from_is_backfilled, None);
    // No op log: the two-commit fallback form.
    assert!(matches!(csv.history, Mode::Fallback { .. }));
    assert_eq!(csv.commits.len(), 2);
    assert_eq!(csv.commits[1].ops, Value::Null);
    let fork_commit = w.commits[csv.commits[0].parent.as_ref().unwrap()].clone();
    assert_eq!(fork_commit.viz, PRIMORDIAL_VIZ_ID);
    assert!(fork_commit.timestamp <= csv.info.created);

    // Fork of a fork, flagged backfilled in V2.
    let penguin = &w.translations[PENGUIN];
    assert_eq!(penguin.info.forked_from.as_deref(), Some(LOADING_CSV));
    assert_eq!(penguin.info.forked_from_is_backfilled, Some(true));
    assert_eq!(penguin.content["height"], 500, "no height in V2 -> 500");

    // Dangling parent: hung from the primordial viz, backfilled.
    let dangling = &w.translations[DANGLING];
    assert_eq!(
        dangling.info.forked_from.as_deref(),
        Some(PRIMORDIAL_VIZ_ID)
    );
    assert_eq!(dangling.info.forked_from_is_backfilled, Some(true));
}

#[test]
fn fork_reuses_parent_file_ids_by_name() {
    let w = migrated_world();
    let csv = &w.translations[LOADING_CSV];
    let parent_content =
        v3::content_at(&w.commits, csv.commits[0].parent.as_ref().unwrap()).unwrap();
    let by_name = |c: &Value, name: &str| {
        c["files"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(_, f)| f["name"] == name)
            .map(|(k, _)| k.clone())
    };
    for name in ["index.html", "index.js", "README.md"] {
        if let Some(parent_id) = by_name(&parent_content, name) {
            assert_eq!(by_name(&csv.content, name), Some(parent_id), "{name}");
        }
    }
}

#[test]
fn the_penguin_keeps_its_emoji() {
    let w = migrated_world();
    let t = &w.translations[PENGUIN];
    assert_eq!(t.info.title, "Dancing Penguin!");
    let texts: String = t.content["files"]
        .as_object()
        .unwrap()
        .values()
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    assert!(texts.contains('🐧'), "the penguin is gone");
    let raw = vizhub_migrate::fixtures::viz_fixture(PENGUIN);
    let v2_penguins = raw["content"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["name"] != "bundle.js")
        .map(|f| f["text"].as_str().unwrap().matches('🐧').count())
        .sum::<usize>();
    assert_eq!(texts.matches('🐧').count(), v2_penguins);
}

#[test]
fn users_upvotes_and_permissions() {
    let w = migrated_world();
    let t = &w.translations[PRIMORDIAL_VIZ_ID];
    assert_eq!(t.upvotes.len(), 35);
    assert!(t
        .upvotes
        .iter()
        .all(|u| u.id == format!("{}-{}", u.user, PRIMORDIAL_VIZ_ID) && u.migrated_from_v2));
    assert_eq!(t.info.upvotes_count, 35);
    assert_eq!(t.permissions.len(), 1);
    assert_eq!(t.permissions[0].user, "13540669");
    assert_eq!(t.permissions[0].granted_by, "68416");
    assert_eq!(t.permissions[0].role, "editor");
    let owner = t.users.iter().find(|u| u.id == "68416").unwrap();
    assert_eq!(owner.user_name, "curran");
    assert_eq!(owner.display_name, "Curran Kelleher");
    assert_eq!(owner.plan, "free", "V2 pro plans do not carry over");
    assert_eq!(
        owner.picture,
        "https://avatars.githubusercontent.com/u/68416?v=4"
    );
}

#[test]
fn translation_is_deterministic() {
    let a = migrated_world();
    let b = migrated_world();
    for (viz, t) in &a.translations {
        let u = &b.translations[viz];
        assert_eq!(
            serde_json::to_string(&t.commits).unwrap(),
            serde_json::to_string(&u.commits).unwrap()
        );
        assert_eq!(t.content.to_string(), u.content.to_string());
        assert_eq!(t.info, u.info);
    }
}

/// Content at a fork's end from the content at an ancestor commit (what a worker that has it
/// cached does) equals the full replay from `{}`, and needs none of the commits above it.
#[test]
fn content_from_a_known_ancestor_equals_the_full_replay() {
    let w = migrated_world();
    let (csv, penguin) = (&w.translations[LOADING_CSV], &w.translations[PENGUIN]);
    let base = csv.commits[0]
        .parent
        .clone()
        .expect("the csv viz is a fork");
    let base_content = v3::content_at(&w.commits, &base).unwrap();
    let below: std::collections::HashMap<String, v3::Commit> = w
        .commits
        .iter()
        .filter(|(_, c)| c.viz == LOADING_CSV || c.viz == PENGUIN)
        .map(|(id, c)| (id.clone(), c.clone()))
        .collect();
    assert!(below.len() < w.commits.len());
    let full = v3::content_at(&w.commits, &penguin.info.end).unwrap();
    assert_eq!(full, penguin.content);
    assert_eq!(
        v3::content_after((&base, base_content), &below, &penguin.info.end).unwrap(),
        full
    );
    // Without the base, the commits below it do not reach the root.
    assert!(v3::content_at(&below, &penguin.info.end).is_err());
}
