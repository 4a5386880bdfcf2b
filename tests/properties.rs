//! Property tests: for random V2 documents and random json0 edit sequences (text edits with
//! astral characters, files added, removed, replaced, a root key set and unset), history
//! reconstruction replays the whole log, and the json1 replay of the commits reproduces the final
//! V3 content.

use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use vizhub_migrate::history::Mode;
use vizhub_migrate::translate::{self, Config, Context, Parent};
use vizhub_migrate::v2::V2Viz;
use vizhub_migrate::{json0, v3, PRIMORDIAL_VIZ_ID};

const ALPHABET: &[&str] = &["a", "b", " ", "\n", "é", "🐧", "𝔘", "中", "👋🏽"];
const NAMES: &[&str] = &[
    "index.html",
    "index.js",
    "bundle.js",
    "README.md",
    "data.csv",
];

fn text(picks: &[u8]) -> String {
    picks
        .iter()
        .map(|p| ALPHABET[*p as usize % ALPHABET.len()])
        .collect()
}

/// UTF-16 offsets of char boundaries of `s`.
fn boundaries(s: &str) -> Vec<usize> {
    let mut out = vec![0];
    let mut n = 0;
    for c in s.chars() {
        n += c.len_utf16();
        out.push(n);
    }
    out
}

fn utf16_slice(s: &str, from: usize, to: usize) -> String {
    let mut n = 0;
    s.chars()
        .filter(|c| {
            let keep = n >= from && n < to;
            n += c.len_utf16();
            keep
        })
        .collect()
}

/// Turn raw random choices into one valid json0 op against `state` (and apply it).
fn make_op(state: &mut Value, kind: u8, a: u32, b: u32, picks: &[u8]) -> Value {
    let files = state["files"].as_array().unwrap().clone();
    let n = files.len();
    let op = match kind % 7 {
        0 | 1 if n > 0 => {
            let i = a as usize % n;
            let t = files[i]["text"].as_str().unwrap();
            let bs = boundaries(t);
            json!([{"p": ["files", i, "text", bs[b as usize % bs.len()]], "si": text(picks)}])
        }
        2 if n > 0 => {
            let i = a as usize % n;
            let t = files[i]["text"].as_str().unwrap();
            let bs = boundaries(t);
            let from = bs[b as usize % bs.len()];
            let to = bs[(b as usize + picks.len()) % bs.len()].max(from);
            json!([{"p": ["files", i, "text", from], "sd": utf16_slice(t, from, to)}])
        }
        3 => {
            let i = a as usize % (n + 1);
            json!([{"p": ["files", i], "li": {"name": NAMES[b as usize % NAMES.len()], "text": text(picks)}}])
        }
        4 if n > 1 => {
            let i = a as usize % n;
            json!([{"p": ["files", i], "ld": files[i]}])
        }
        5 if n > 0 => {
            let i = a as usize % n;
            json!([{"p": ["files", i], "ld": files[i], "li": {"name": NAMES[b as usize % NAMES.len()], "text": text(picks)}}])
        }
        _ => match state.get("owner") {
            Some(o) => json!([{"p": ["owner"], "od": o}]),
            None => json!([{"p": ["owner"], "oi": text(picks)}]),
        },
    };
    json0::apply(state, &json0::parse_op(&op).unwrap()).unwrap();
    op
}

type Step = (u8, u32, u32, Vec<u8>, u32);

fn viz_strategy() -> impl Strategy<Value = (Vec<(u8, Vec<u8>)>, Vec<Step>)> {
    (
        prop::collection::vec(
            (any::<u8>(), prop::collection::vec(any::<u8>(), 0..12)),
            1..5,
        ),
        prop::collection::vec(
            (
                any::<u8>(),
                any::<u32>(),
                any::<u32>(),
                prop::collection::vec(any::<u8>(), 0..6),
                0u32..3_000,
            ),
            0..40,
        ),
    )
}

fn build(files: &[(u8, Vec<u8>)], steps: &[Step]) -> (V2Viz, usize) {
    let created = 1_600_000_000i64;
    let files: Vec<Value> = files
        .iter()
        .map(|(n, t)| json!({"name": NAMES[*n as usize % NAMES.len()], "text": text(t)}))
        .collect();
    let mut state =
        json!({"id": PRIMORDIAL_VIZ_ID, "documentType": "visualization", "files": files});
    let mut ops = Vec::new();
    let mut ts = created * 1000;
    let base_v = 3u64;
    for (i, (kind, a, b, picks, gap)) in steps.iter().enumerate() {
        ts += *gap as i64 * 1000; // up to 50 minutes apart: sessions split at 15
        let op = make_op(&mut state, *kind, *a, *b, picks);
        ops.push(json!({"v": base_v + i as u64, "op": op, "m": {"ts": ts}}));
    }
    let mut content = state;
    content["_id"] = json!(PRIMORDIAL_VIZ_ID);
    content["_type"] = json!("http://sharejs.org/types/JSONv0");
    content["_v"] = json!(base_v + steps.len() as u64);
    let info = json!({"_id": PRIMORDIAL_VIZ_ID, "id": PRIMORDIAL_VIZ_ID, "_type": "http://sharejs.org/types/JSONv0",
        "documentType": "visualization", "owner": "1", "title": "t", "createdTimestamp": created,
        "lastUpdatedTimestamp": created + 10});
    (
        V2Viz {
            info,
            content: Some(content),
            ops,
            ..Default::default()
        },
        steps.len(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn history_replays_to_the_final_content((files, steps) in viz_strategy()) {
        let (viz, n_ops) = build(&files, &steps);
        let cfg = Config::default();
        let p = match translate::prepare(&viz, &cfg) {
            Ok(p) => p,
            // Every file may have ended up as bundle.js: a legitimate skip.
            Err(e) => { prop_assert_eq!(e.kind(), "no_files"); return Ok(()); }
        };
        let users = HashMap::from([("1".to_string(), json!({"_id": "1", "id": "1", "userName": "u", "_type": "x"}))]);
        let ctx = Context { parent: Parent::Root, users: &users, analytics: None, v3_analytics: None, previous: None, deleted_users: &translate::NO_DELETED_USERS, now: 0 };
        let t = translate::translate(&p, &ctx, &cfg).unwrap();
        if n_ops > 0 {
            prop_assert_eq!(&t.history, &Mode::Replayed { base_v: 3, ops: n_ops });
        }
        let commits: HashMap<String, v3::Commit> = t.commits.iter().map(|c| (c.id.clone(), c.clone())).collect();
        prop_assert_eq!(commits.len(), t.commits.len(), "commit ids are unique");
        let replayed = v3::content_at(&commits, &t.info.end).unwrap();
        prop_assert_eq!(&replayed, &t.content);
        prop_assert!(t.commits.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
        prop_assert!(v3::invariant_violations(&t.info, &t.content, &commits, |u| u == "1").is_empty());
        // Every V2 file but bundle.js survives, in order, texts intact.
        let v2_files: Vec<(String, String)> = viz.content.as_ref().unwrap()["files"].as_array().unwrap().iter()
            .filter(|f| f["name"] != "bundle.js")
            .map(|f| (f["name"].as_str().unwrap().to_string(), f["text"].as_str().unwrap().to_string())).collect();
        let v3_files: Vec<(String, String)> = t.content["files"].as_object().unwrap().values()
            .map(|f| (f["name"].as_str().unwrap().to_string(), f["text"].as_str().unwrap().to_string())).collect();
        prop_assert_eq!(v2_files, v3_files);
    }
}
