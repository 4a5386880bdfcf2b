//! Conformance with V3's real JavaScript libraries: every commit chain we produce — for every
//! real fixture and for generated edge cases — is checked by Node with `ot-json1` 1.0.2 /
//! `ot-text-unicode` 4 (what V3 runs): each op is normalized and applies, and the replayed chain
//! equals the content doc. This test fails (never skips) when Node or the npm packages are missing.

mod common;
use common::{synthetic_viz, World};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use vizhub_migrate::{json1, PRIMORDIAL_VIZ_ID};

const MIN: i64 = 60;

/// Edge cases: file added, removed, renamed, reordered, emptied; emoji edits; title and height
/// changes (via re-sync); a fork of a fork.
fn edge_world() -> World {
    let mut w = World::with_fixtures(&[]);
    let t0 = 1_600_000_000;
    let files = json!([
        {"name": "bundle.js", "text": "(function(){})()"},
        {"name": "index.html", "text": "<p>Dancing 🐧</p>"},
        {"name": "index.js", "text": "x"},
        {"name": "README.md", "text": "hi"}
    ]);
    let log = vec![
        (
            t0 + MIN,
            json!([{"p": ["files", 4], "li": {"name": "new.js", "text": "let a = 1;"}}]),
        ),
        (
            t0 + 20 * MIN,
            json!([{"p": ["files", 3], "ld": {"name": "README.md", "text": "hi"}}]),
        ),
        (
            t0 + 40 * MIN,
            json!([{"p": ["files", 2], "ld": {"name": "index.js", "text": "x"}, "li": {"name": "main.js", "text": "x"}}]),
        ),
        (
            t0 + 60 * MIN,
            json!([{"p": ["files", 1], "ld": {"name": "index.html", "text": "<p>Dancing 🐧</p>"}},
                              {"p": ["files", 2], "li": {"name": "index.html", "text": "<p>Dancing 🐧</p>"}}]),
        ),
        (
            t0 + 80 * MIN,
            json!([{"p": ["files", 3, "text", 0], "sd": "let a = 1;"}]),
        ),
        // "<p>Dancing 🐧" is 13 UTF-16 units: insert a cat right after the penguin.
        (
            t0 + 100 * MIN,
            json!([{"p": ["files", 2, "text", 13], "si": "🐱"}]),
        ),
        (
            t0 + 101 * MIN,
            json!([{"p": ["files", 2, "text", 11], "sd": "🐧"}]),
        ),
        (
            t0 + 120 * MIN,
            json!([{"p": ["files", 0, "text", 0], "sd": "(function(){})()"}, {"p": ["files", 0, "text", 0], "si": "rebuilt"}]),
        ),
    ];
    let a = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut va = synthetic_viz(a, "68416", None, t0, files, &log);
    va.info["title"] = json!("  Edge cases  ");
    va.info["height"] = json!(0);
    w.add(va);
    // A fork of `a` created between its commits, with its own edits; and a fork of that fork.
    let b = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let b_files = json!([{"name": "index.html", "text": "<p>Dancing 🐧</p>"}, {"name": "main.js", "text": "x"}]);
    let b_log = vec![(
        t0 + 70 * MIN,
        json!([{"p": ["files", 1, "text", 1], "si": "\ny = 2; // ünïcödé 𝔘"}]),
    )];
    w.add(synthetic_viz(
        b,
        "68416",
        Some(a),
        t0 + 50 * MIN,
        b_files.clone(),
        &b_log,
    ));
    let c = "cccccccccccccccccccccccccccccccc";
    w.add(synthetic_viz(
        c,
        "68416",
        Some(b),
        t0 + 90 * MIN,
        b_files,
        &[],
    ));
    for id in [a, b, c] {
        w.migrate(id).unwrap();
    }
    // Re-sync `a`: more edits, a new title and height.
    let mut va = w.v2[a].clone();
    let v = va.content.as_ref().unwrap()["_v"].as_u64().unwrap();
    let op = json!([{"p": ["files", 2, "text", 0], "si": "<!-- 👋 -->"}]);
    let mut content = va.content.take().unwrap();
    let parsed = vizhub_migrate::json0::parse_op(&op).unwrap();
    vizhub_migrate::json0::apply(&mut content, &parsed).unwrap();
    content["_v"] = json!(v + 1);
    va.content = Some(content);
    va.ops
        .push(json!({"v": v, "op": op, "m": {"ts": (t0 + 300 * MIN) * 1000}, "d": a}));
    va.info["title"] = json!("Edge cases, renamed");
    va.info["height"] = json!(720);
    va.info["lastUpdatedTimestamp"] = json!(t0 + 300 * MIN);
    w.v2.insert(a.to_string(), va);
    w.resync(a).unwrap();
    w
}

/// An edit a V3 user makes right after migration: append "!" right after the first 🐧.
fn emoji_edit(content: &Value) -> Option<Value> {
    let (id, text) = content["files"].as_object()?.iter().find_map(|(id, f)| {
        let t = f["text"].as_str()?;
        t.contains('🐧').then(|| (id.clone(), t.to_string()))
    })?;
    let cp = text.chars().position(|c| c == '🐧')? + 1;
    let op = json!(["files", id, "text", {"es": [cp, "!"]}]);
    let result = json1::apply(content.clone(), &op).unwrap();
    let new_text = result["files"][&id]["text"].as_str().unwrap().to_string();
    assert!(
        new_text.contains("🐧!"),
        "Rust apply counts code points: {new_text}"
    );
    Some(json!({"op": op, "result": result}))
}

fn cases(w: &World) -> Vec<Value> {
    let mut ids: Vec<&String> = w.translations.keys().collect();
    ids.sort();
    ids.into_iter()
        .map(|viz| {
            let t = &w.translations[viz];
            json!({
                "name": viz,
                "chain": w.chain_ops(viz),
                "content": t.content,
                "extraEdits": emoji_edit(&t.content).into_iter().collect::<Vec<_>>(),
            })
        })
        .collect()
}

fn run_node(cases: Vec<Value>) -> Value {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        js.join("node_modules/ot-json1").is_dir(),
        "npm packages missing: run `npm ci --prefix tests/js` (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("chains.json");
    std::fs::write(
        &input,
        serde_json::to_vec(&json!({ "cases": cases })).unwrap(),
    )
    .unwrap();
    let out = Command::new("node")
        .arg(js.join("check-chains.js"))
        .arg(&input)
        .output()
        .expect("Node.js is required for the V3 conformance test (node not found on PATH)");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "node output {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success(),
        "ot-json1 rejected our output: {report:#}"
    );
    report
}

#[test]
fn every_fixture_chain_is_accepted_by_ot_json1() {
    let mut w = World::with_fixtures(&[]);
    let ids: Vec<String> = w.v2.keys().cloned().collect();
    for id in &ids {
        w.migrate(id).unwrap();
    }
    let cases = cases(&w);
    assert_eq!(cases.len(), ids.len());
    assert!(cases.iter().any(|c| c["name"] == PRIMORDIAL_VIZ_ID));
    assert!(
        cases
            .iter()
            .any(|c| !c["extraEdits"].as_array().unwrap().is_empty()),
        "the penguin edit ran"
    );
    let report = run_node(cases);
    assert!(report["ops"].as_u64().unwrap() > 10, "{report}");
}

#[test]
fn edge_case_chains_are_accepted_by_ot_json1() {
    let w = edge_world();
    let a = &w.translations["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"];
    assert_eq!(a.content["title"], "Edge cases, renamed");
    assert_eq!(a.content["height"], 720);
    assert!(
        w.chains["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"].len() >= 8,
        "one commit per session"
    );
    for viz in [
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        "cccccccccccccccccccccccccccccccc",
    ] {
        assert_eq!(w.violations(viz), Vec::<String>::new(), "{viz}");
    }
    let report = run_node(cases(&w));
    assert_eq!(report["failures"], json!([]));
}

/// A broken chain must be caught by the checker (guards against a checker that accepts anything).
#[test]
fn the_checker_rejects_a_wrong_chain() {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/check-chains.js");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.json");
    let bad = json!({"cases": [
        {"name": "unnormalized", "chain": [["title", {"i": "x"}, ]], "content": {"title": "y"}},
        {"name": "not normalized es", "chain": [[["title", {"i": "ab"}]], ["title", {"es": [0, "x"]}]], "content": {"title": "xab"}}
    ]});
    std::fs::write(&input, bad.to_string()).unwrap();
    let out = Command::new("node")
        .arg(js)
        .arg(&input)
        .output()
        .expect("node");
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failures"].as_array().unwrap().len(), 2, "{report}");
}
