//! Access to the real V2 documents in `shared/fixtures/v2/` (`vizV2-<id>.json` as `{info, content,
//! ops}`, `userV2-<id>.json` as raw `user` snapshots). Used by tests, benchmarks and the demo
//! seeder; never by the production path. The directory defaults to `../shared/fixtures/v2` next to
//! the crate (see [`shared_dir`]) and can be moved with `VIZHUB_FIXTURES_DIR`.

use serde_json::Value;
use std::path::PathBuf;

/// A fixture file's `{info, content, ops}` as the V2 documents of one viz.
pub fn v2_viz(raw: &Value) -> crate::v2::V2Viz {
    crate::v2::V2Viz {
        info: raw.get("info").cloned().unwrap_or(Value::Null),
        content: raw.get("content").filter(|c| !c.is_null()).cloned(),
        ops: raw
            .get("ops")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        ops_withheld: None,
    }
}

/// The primordial viz, "Hello VizHub": root of every fork chain.
pub const PRIMORDIAL_VIZ: &str = crate::PRIMORDIAL_VIZ_ID;

/// The workplace's `shared/` directory (spec, fixtures, conformance vectors):
/// `$VIZHUB_SHARED_DIR`, else a `shared/` beside the crate or beside any of its ancestors (a
/// checkout at `/work/main` finds `/work/shared`), else `/work/shared`.
pub fn shared_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VIZHUB_SHARED_DIR") {
        return PathBuf::from(d);
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared"))
        .find(|s| s.join("fixtures").is_dir())
        .unwrap_or_else(|| PathBuf::from("/work/shared"))
}

/// The V2 fixtures: `$VIZHUB_FIXTURES_DIR`, else `shared/fixtures/v2`.
pub fn dir() -> PathBuf {
    std::env::var_os("VIZHUB_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared_dir().join("fixtures/v2"))
}

fn load(prefix: &str) -> Vec<(String, Value)> {
    let dir = dir();
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fixtures directory {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name
                .strip_prefix(prefix)?
                .strip_suffix(".json")?
                .to_string();
            let text = std::fs::read_to_string(e.path()).ok()?;
            Some((id, serde_json::from_str(&text).ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every `vizV2-<id>.json`, as (viz id, raw `{info, content, ops}`), sorted by id.
pub fn viz_fixtures() -> Vec<(String, Value)> {
    load("vizV2-")
}

/// Every `userV2-<id>.json`, as (user id, raw snapshot), sorted by id.
pub fn user_fixtures() -> Vec<(String, Value)> {
    load("userV2-")
}

/// One viz fixture by id. Panics when absent: fixtures are test inputs.
pub fn viz_fixture(id: &str) -> Value {
    viz_fixtures()
        .into_iter()
        .find(|(i, _)| i == id)
        .unwrap_or_else(|| panic!("no fixture vizV2-{id}.json in {}", dir().display()))
        .1
}

/// `documentInfo-sample-2019.json`: 2,264 real `documentInfo` payloads (no envelope).
pub fn info_sample_2019() -> Vec<Value> {
    let path = dir().join("documentInfo-sample-2019.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
        Value::Array(a) => a,
        _ => panic!("{}: not a JSON array", path.display()),
    }
}
