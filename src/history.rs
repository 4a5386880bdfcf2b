//! Revision history: turns a V2 content snapshot plus its json0 op log into V3 commit drafts
//! (spec 3.1).
//!
//! 1. `usable_run` takes the ops the snapshot contains — the chain of `o` links back from its
//!    `_o`, as sharedb-mongo reads them, so ops a live V2 wrote past the snapshot and orphans of
//!    failed commits are left out — as far back as it runs consecutively (stopping at a gap, a
//!    link not in the log, a `del`, or just after a `create`).
//! 2. [`build`] inverts that run backwards from the snapshot to the oldest reachable state, then
//!    replays it forward once, cutting commits at editing-session boundaries (an idle gap, 15 min by
//!    default) and diffing each session's end state against the previous commit's V3 content with
//!    [`json1::diff`]. Only two contents are alive at a time, so memory stays O(content), not
//!    O(content × ops). The forward replay must land exactly on the snapshot; anything else —
//!    an op that does not parse, apply or invert, a replay that drifts — discards the drafts and
//!    falls back to a single diff from the base to the final content, with the reason recorded.
//! 3. File ids follow the V2 `files` array through `li`/`ld` (`ld`+`li` on one slot is an edit in
//!    place and keeps the id), so a file keeps its id while its index moves. The oldest state gets
//!    its ids by matching the base content (the fork parent's files, or our own previous content
//!    on re-sync): same name first, then same text, else a new deterministic id.
//!
//! Timestamps are returned raw (op times, seconds); [`crate::translate`] clamps them into
//! `[created, updated]` and pins the first and last commits, because those rules need Info.

use crate::json0;
use crate::json1;
use crate::v2::ContentOp;
use crate::{ids, v3};
use serde_json::{Map, Value};
use std::collections::HashSet;

/// Name of the build artifact V2 regenerated in the browser; never migrated.
pub const BUNDLE_JS: &str = "bundle.js";

/// Default idle gap that separates two editing sessions (two commits).
pub const DEFAULT_SESSION_GAP_SECS: i64 = 15 * 60;

/// How the V3 content of a V2 state is shaped: the parts that come from Info, not from the log.
#[derive(Debug, Clone)]
pub struct Shape<'a> {
    pub viz: &'a str,
    pub title: &'a str,
    pub height: Value,
}

/// Where file ids for the oldest reachable state come from.
#[derive(Debug, Clone)]
pub enum InitialIds {
    /// Match the base content's files: same name, then same text, else a new id.
    MatchBase,
    /// Ids recorded in the ledger, aligned with the V2 `files` array at `since_v`.
    Aligned(Vec<String>),
}

/// What [`build`] is asked to do.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub shape: Shape<'a>,
    /// V2 content payload (envelope stripped) at `snapshot_v`.
    pub snapshot: &'a Value,
    pub snapshot_v: u64,
    /// The snapshot's `_o`: the op its version came from (see `linked_chain`).
    pub head: Option<&'a str>,
    pub ops: &'a [ContentOp],
    /// Why the op log was not loaded (too large): history falls back with this reason.
    pub withheld: Option<&'a str>,
    /// V3 content the first draft diffs from: the fork parent's content at the fork commit (`{}`
    /// for the primordial viz), or on re-sync our own last migrated content.
    pub base: &'a Value,
    /// Re-sync: the V2 content version already migrated. History must start exactly there.
    pub since_v: Option<u64>,
    pub initial_ids: InitialIds,
    pub session_gap_secs: i64,
}

/// When a draft happened. Translation turns this into the commit timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// The viz's creation time (the first commit).
    Created,
    /// The time of the session's last op, seconds (clamped by the caller).
    Op(i64),
    /// The viz's last update time (a delta commit, or a session whose ops carry no time).
    Updated,
}

/// One commit to be, before ids and parents are assigned.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    /// V2 versions covered: ops `v_from..v_to` (empty range for a state with no ops).
    pub v_from: u64,
    pub v_to: u64,
    pub stamp: Stamp,
    /// json1 op from the previous draft's content (or the base); `None` = no change.
    pub ops: Option<Value>,
    pub purpose: &'static str,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// The op log was replayed: `base_v` is the oldest reachable version, `ops` ops were used.
    Replayed { base_v: u64, ops: usize },
    /// No usable op log: one diff from the base to the final content.
    Fallback { reason: String },
}

#[derive(Debug, Clone)]
pub struct History {
    pub drafts: Vec<Draft>,
    /// V3 content of the snapshot.
    pub content: Value,
    /// File ids aligned with the snapshot's V2 `files` array (bundle.js included): the ledger keeps
    /// them so a re-sync continues with the same ids.
    pub file_ids: Vec<String>,
    pub mode: Mode,
}

/// An op of the usable run, parsed.
struct RunOp {
    v: u64,
    ts_ms: Option<i64>,
    op: json0::Op,
}

/// The usable part of an op log.
struct Run {
    /// Version of the state the run starts from.
    base_v: u64,
    /// `Some(state)` when the run starts right after a `create` (the state is known, not inverted).
    created: Option<Value>,
    ops: Vec<RunOp>,
}

/// The ops the snapshot at `snapshot_v` contains, newest first, the way sharedb-mongo finds
/// them (`getLinkedOps`): from the op the snapshot names (`head`, its `_o`) follow each op's `o`
/// link back. V2 is live, so the log may hold ops at or past `snapshot_v` (written before their
/// snapshot, or by a commit that failed) and orphans beside the chain (a losing writer's op at a
/// version the chain passes): neither is on the chain. Without a `head` (snapshots older than op
/// linking) the chain is taken by version, as long as each version has one op. The chain stops at
/// a version gap, or where the link it follows is not in the log (truncated).
fn linked_chain<'a>(
    ops: &'a [ContentOp],
    snapshot_v: u64,
    head: Option<&str>,
) -> Vec<&'a ContentOp> {
    let mut sorted: Vec<&ContentOp> = ops.iter().filter(|o| o.v < snapshot_v).collect();
    sorted.sort_by_key(|o| o.v);
    let mut chain = Vec::new();
    let mut link = head.map(str::to_string);
    let mut expected = snapshot_v.checked_sub(1);
    let mut i = sorted.len();
    while let (Some(want), true) = (expected, i > 0) {
        // The ops at version `want` are contiguous in `sorted`, just below `i`.
        let lo = sorted[..i].partition_point(|o| o.v < want);
        let at = &sorted[lo..i];
        i = lo;
        let pick = match &link {
            Some(l) => at.iter().find(|o| o.op_id.as_deref() == Some(l.as_str())),
            // Not linked (an old snapshot, or an op without `o`): one op per version, or stop.
            None if at.len() == 1 => at.first(),
            None => None,
        };
        let Some(op) = pick else { break };
        chain.push(*op);
        // An op without `o` predates linking: below it, go by version.
        link = op.prev.clone();
        expected = want.checked_sub(1);
    }
    chain
}

/// How far behind the node that wrote it a V2 replica can be. A log that lacks its snapshot's
/// head op, when the snapshot was written longer ago than this, lacks it for good (the oldest
/// vizzes' logs were truncated, some to nothing): reading it again would only cost queries.
/// Generous on purpose: an Atlas secondary hours behind is already an incident, and the only
/// price of a long bound is a re-read for a viz edited within it whose log lost its head, which
/// V2 does not make (ops are written before their snapshot, and truncation was a one-off).
pub const REPLICATION_LAG_BOUND_MS: i64 = 24 * 3600 * 1000;

/// The op a snapshot names as its newest (`_o`, at `v = _v - 1`) is not in the op log read with
/// it. V2 writes each op *before* the snapshot that contains it, so on the node that served the
/// snapshot the op exists: a log that lacks it was read from a node behind that one (reads go to
/// any secondary, per query) — or, for a snapshot older than any replica's lag, it was truncated.
/// Read as is, the chain breaks on its first step and the viz gets the fallback history for
/// good (commits are never rewritten), so the reader reads the log again first
/// ([`MissingHead::is_retryable`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the op log lacks the snapshot's head op {head} (v{v})")]
pub struct MissingHead {
    pub head: String,
    pub v: u64,
}

impl MissingHead {
    /// Whether reading the log again can find the head op: the snapshot was written (`mtime`,
    /// ms) within [`REPLICATION_LAG_BOUND_MS`] of `now_ms`, so a lagging node may lack its op.
    /// A snapshot without `mtime` predates the live V2 that sets it on every commit: its log is
    /// as it will stay.
    pub fn is_retryable(&self, mtime_ms: Option<i64>, now_ms: i64) -> bool {
        mtime_ms.is_some_and(|t| now_ms.saturating_sub(t) <= REPLICATION_LAG_BOUND_MS)
    }
}

/// The head op the snapshot at `snapshot_v` names (`head`, its `_o`) when no op of the log has
/// that id (`op_ids`). `None` when the log has it, or when the snapshot names none (version 0,
/// or older than op linking: nothing to tell a lagging read by).
pub fn missing_head<S: AsRef<str>>(
    snapshot_v: u64,
    head: Option<&str>,
    op_ids: impl IntoIterator<Item = S>,
) -> Option<MissingHead> {
    let head = head?;
    let v = snapshot_v.checked_sub(1)?;
    if op_ids.into_iter().any(|id| id.as_ref() == head) {
        return None;
    }
    Some(MissingHead {
        head: head.to_string(),
        v,
    })
}

/// Pick and parse the usable run (step 1). `Err` carries the reason history falls back.
fn usable_run(
    ops: &[ContentOp],
    snapshot_v: u64,
    head: Option<&str>,
    since_v: Option<u64>,
) -> Result<Run, String> {
    if snapshot_v == 0 {
        return Err("snapshot has version 0".into());
    }
    // Named as such, not as a log that "does not reach the snapshot": the reader has re-read
    // the log before giving up on it (see [`MissingHead`]), and the ledger says which op it was.
    if let Some(m) = missing_head(
        snapshot_v,
        head,
        ops.iter().filter_map(|o| o.op_id.as_deref()),
    ) {
        return Err(if ops.is_empty() {
            format!("no op log ({m})")
        } else {
            m.to_string()
        });
    }
    let mut picked: Vec<&ContentOp> = Vec::new();
    let mut created = None;
    for op in linked_chain(ops, snapshot_v, head) {
        if let Some(create) = &op.create {
            created = Some(create.get("data").cloned().unwrap_or(Value::Null));
            break;
        }
        if op.del == Some(true) || op.op.is_none() {
            break;
        }
        picked.push(op);
        if op.v == 0 || since_v == Some(op.v) {
            break;
        }
    }
    picked.reverse();
    let base_v = picked.first().map_or(snapshot_v, |o| o.v);
    if let Some(since) = since_v {
        if since > snapshot_v {
            return Err(format!(
                "ledger version {since} is newer than the snapshot's {snapshot_v}"
            ));
        }
        if base_v > since {
            return Err(format!(
                "op log covers only v{base_v}..{snapshot_v}, not the migrated v{since}"
            ));
        }
    } else if picked.is_empty() && created.is_none() {
        return Err(if ops.is_empty() {
            "no op log".to_string()
        } else {
            format!("op log does not reach the snapshot version {snapshot_v}")
        });
    }
    let ops = picked
        .into_iter()
        .map(|o| {
            let raw = o.op.as_ref().expect("picked ops have an op");
            json0::parse_op(raw)
                .map(|op| RunOp {
                    v: o.v,
                    ts_ms: o.ts_ms(),
                    op,
                })
                .map_err(|e| format!("op v{} is malformed: {e}", o.v))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Run {
        base_v,
        created,
        ops,
    })
}

/// Follows file ids through list edits of `files`, handing out fresh deterministic ids.
struct IdTracker<'a> {
    viz: &'a str,
    ids: Vec<String>,
    used: HashSet<String>,
}

impl<'a> IdTracker<'a> {
    fn new(viz: &'a str, base: &Value) -> Self {
        let used = base
            .get("files")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        IdTracker {
            viz,
            ids: Vec::new(),
            used,
        }
    }

    fn fresh(&mut self, version: u64, slot: usize) -> String {
        let id = (0..)
            .map(|salt| ids::file_id(self.viz, version, slot, salt))
            .find(|id| !self.used.contains(id))
            .expect("an unbounded salt finds a free id");
        self.used.insert(id.clone());
        id
    }

    /// Ids for `files` matched against `base`: same name, then same text, else fresh.
    fn match_base(&mut self, files: &[Value], base: &Value, version: u64) {
        let empty = Map::new();
        let base_files = base
            .get("files")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let mut taken: HashSet<&str> = HashSet::new();
        let mut out: Vec<Option<String>> = vec![None; files.len()];
        for field in ["name", "text"] {
            for (slot, f) in files.iter().enumerate() {
                if out[slot].is_some() || f.get("name").and_then(Value::as_str) == Some(BUNDLE_JS) {
                    continue;
                }
                let want = f.get(field);
                if let Some((id, _)) = base_files
                    .iter()
                    .find(|(id, bf)| !taken.contains(id.as_str()) && bf.get(field) == want)
                {
                    taken.insert(id);
                    out[slot] = Some(id.clone());
                }
            }
        }
        self.ids = out
            .into_iter()
            .enumerate()
            .map(|(slot, id)| id.unwrap_or_else(|| self.fresh(version, slot)))
            .collect();
    }

    /// Update ids for one json0 op about to be applied at version `v`.
    fn follow(&mut self, op: &json0::Op, v: u64) -> Result<(), String> {
        use json0::Key;
        for c in op {
            match c.p.as_slice() {
                [Key::Name(f), Key::Index(i)] if f == "files" => {
                    let i = *i;
                    match (c.ld.is_some(), c.li.is_some()) {
                        (true, true) => {}
                        (true, false) if i < self.ids.len() => {
                            self.ids.remove(i);
                        }
                        (false, true) if i <= self.ids.len() => {
                            let id = self.fresh(v, i);
                            self.ids.insert(i, id);
                        }
                        (false, false) => {}
                        _ => return Err(format!("op v{v} edits files[{i}] outside the list")),
                    }
                }
                [Key::Name(f)] if f == "files" && (c.oi.is_some() || c.od.is_some()) => {
                    let n = c.oi.as_ref().and_then(Value::as_array).map_or(0, Vec::len);
                    self.ids = (0..n).map(|slot| self.fresh(v, slot)).collect();
                }
                [] => return Err(format!("op v{v} replaces the whole document")),
                _ => {}
            }
        }
        Ok(())
    }
}

/// The V2 `files` array of a state.
fn files_of(state: &Value) -> Result<&[Value], String> {
    match state.get("files") {
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(format!("files is not a list: {}", short(other))),
        None => Err("state has no files".into()),
    }
}

fn short(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 80 {
        let cut = (0..=80).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// V3 content of a V2 state: `files` keyed by the aligned ids, `bundle.js` dropped, order kept.
pub fn to_v3(state: &Value, file_ids: &[String], shape: &Shape) -> Result<Value, String> {
    let files = files_of(state)?;
    if files.len() != file_ids.len() {
        return Err(format!(
            "{} files but {} tracked ids",
            files.len(),
            file_ids.len()
        ));
    }
    let mut out = Map::with_capacity(files.len());
    for (f, id) in files.iter().zip(file_ids) {
        let name = f.get("name").and_then(Value::as_str);
        let text = match f.get("text") {
            Some(Value::String(s)) => Some(s.as_str()),
            None | Some(Value::Null) => Some(""),
            _ => None,
        };
        let (Some(name), Some(text)) = (name, text) else {
            return Err(format!("file is not {{name, text}}: {}", short(f)));
        };
        if name == BUNDLE_JS {
            continue;
        }
        let mut file = Map::with_capacity(2);
        file.insert("name".into(), Value::String(name.to_string()));
        file.insert("text".into(), Value::String(text.to_string()));
        out.insert(id.clone(), Value::Object(file));
    }
    Ok(v3::content(shape.viz, out, shape.title, &shape.height))
}

/// Build the commit drafts for a viz (steps 1–3 of spec 3.1). Never fails: an unusable log
/// yields [`Mode::Fallback`]. `Err` only when the *snapshot itself* cannot become V3 content,
/// which the caller reports as a failure of the viz.
pub fn build(req: &Request) -> Result<History, String> {
    match replayed(req) {
        Ok(h) => Ok(h),
        Err(reason) => fallback(req, reason),
    }
}

fn fallback(req: &Request, reason: String) -> Result<History, String> {
    let files = files_of(req.snapshot)?;
    let mut tracker = IdTracker::new(req.shape.viz, req.base);
    match &req.initial_ids {
        // On re-sync the ledger's ids still name the files, as long as they line up.
        InitialIds::Aligned(ids)
            if ids.len() == files.len() && req.since_v == Some(req.snapshot_v) =>
        {
            tracker.ids = ids.clone();
        }
        _ => tracker.match_base(files, req.base, req.snapshot_v),
    }
    let content = to_v3(req.snapshot, &tracker.ids, &req.shape)?;
    let ops = json1::diff(req.base, &content);
    let v_from = req.since_v.unwrap_or(req.snapshot_v);
    let drafts = match req.since_v {
        // First migration: one commit holding everything, at `created`.
        None => vec![Draft {
            v_from,
            v_to: req.snapshot_v,
            stamp: Stamp::Created,
            ops,
            purpose: "start-fallback",
        }],
        // Re-sync: one delta commit, only if something changed.
        Some(_) if ops.is_some() => vec![Draft {
            v_from,
            v_to: req.snapshot_v,
            stamp: Stamp::Updated,
            ops,
            purpose: "resync-delta",
        }],
        Some(_) => Vec::new(),
    };
    let mode = if req.since_v == Some(req.snapshot_v) {
        // Nothing to replay on a re-sync with no new ops; that is not a fallback.
        Mode::Replayed {
            base_v: req.snapshot_v,
            ops: 0,
        }
    } else {
        Mode::Fallback { reason }
    };
    Ok(History {
        drafts,
        content,
        file_ids: tracker.ids,
        mode,
    })
}

fn replayed(req: &Request) -> Result<History, String> {
    if let Some(reason) = req.withheld {
        return Err(reason.to_string());
    }
    let run = usable_run(req.ops, req.snapshot_v, req.head, req.since_v)?;
    if req.since_v == Some(req.snapshot_v) {
        return Err("no new ops".into());
    }
    // Step 2a: the oldest reachable state.
    let mut state = match run.created {
        Some(data) => data,
        None => {
            let mut s = req.snapshot.clone();
            for op in run.ops.iter().rev() {
                json0::apply(&mut s, &json0::invert(&op.op))
                    .map_err(|e| format!("op v{} does not invert: {e}", op.v))?;
            }
            s
        }
    };
    let mut tracker = IdTracker::new(req.shape.viz, req.base);
    match &req.initial_ids {
        InitialIds::Aligned(ids) => {
            let n = files_of(&state)?.len();
            if ids.len() != n {
                return Err(format!(
                    "ledger has {} file ids, V2 had {n} files",
                    ids.len()
                ));
            }
            tracker.ids = ids.clone();
        }
        InitialIds::MatchBase => tracker.match_base(files_of(&state)?, req.base, run.base_v),
    }
    let mut drafts = Vec::new();
    let mut prev = to_v3(&state, &tracker.ids, &req.shape)?;
    if req.since_v.is_none() {
        drafts.push(Draft {
            v_from: run.base_v,
            v_to: run.base_v,
            stamp: Stamp::Created,
            ops: json1::diff(req.base, &prev),
            purpose: "start",
        });
    } else {
        // Re-sync: the first appended commit diffs from what V3 has, not from our V2 view of it.
        prev = req.base.clone();
    }
    // Step 2b + 3 + 4: replay forward, cutting a commit at the end of each session.
    let gap_ms = req.session_gap_secs.saturating_mul(1000);
    let mut session_start = 0usize;
    for (i, op) in run.ops.iter().enumerate() {
        tracker.follow(&op.op, op.v)?;
        json0::apply(&mut state, &op.op)
            .map_err(|e| format!("op v{} does not apply: {e}", op.v))?;
        let ends_session = match (op.ts_ms, run.ops.get(i + 1).and_then(|n| n.ts_ms)) {
            _ if i + 1 == run.ops.len() => true,
            (Some(t), Some(next)) => next.saturating_sub(t) > gap_ms,
            _ => false,
        };
        if ends_session {
            let next = to_v3(&state, &tracker.ids, &req.shape)
                .map_err(|e| format!("at v{}: {e}", op.v + 1))?;
            if let Some(ops) = json1::diff(&prev, &next) {
                let first = &run.ops[session_start];
                drafts.push(Draft {
                    v_from: first.v,
                    v_to: op.v + 1,
                    stamp: run.ops[session_start..=i]
                        .iter()
                        .rev()
                        .find_map(|o| o.ts_ms)
                        .map_or(Stamp::Updated, |ms| Stamp::Op(ms.div_euclid(1000))),
                    ops: Some(ops),
                    purpose: "session",
                });
            }
            prev = next;
            session_start = i + 1;
        }
    }
    if &state != req.snapshot {
        return Err(format!(
            "replaying v{}..{} does not reproduce the snapshot",
            run.base_v, req.snapshot_v
        ));
    }
    Ok(History {
        drafts,
        content: prev,
        file_ids: tracker.ids,
        mode: Mode::Replayed {
            base_v: run.base_v,
            ops: run.ops.len(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate;
    use crate::v2::V2Viz;
    use serde_json::json;

    const PRIMORDIAL: &str = crate::PRIMORDIAL_VIZ_ID;

    /// The primordial fixture (372 ops, v111..482, snapshot v483), changed by `edit`, replayed.
    fn replay(edit: impl FnOnce(&mut V2Viz)) -> History {
        let p = prepared(edit);
        build(&Request {
            shape: Shape {
                viz: &p.viz,
                title: &p.title,
                height: p.height.clone(),
            },
            snapshot: &p.content_state,
            snapshot_v: p.content_v,
            head: p.content.envelope.op_link.as_deref(),
            ops: &p.ops,
            withheld: None,
            base: &json!({}),
            since_v: None,
            initial_ids: InitialIds::MatchBase,
            session_gap_secs: DEFAULT_SESSION_GAP_SECS,
        })
        .expect("builds")
    }

    /// The primordial fixture, changed by `edit`, prepared.
    fn prepared(edit: impl FnOnce(&mut V2Viz)) -> translate::Prepared {
        let mut raw = crate::fixtures::v2_viz(&crate::fixtures::viz_fixture(PRIMORDIAL));
        edit(&mut raw);
        translate::prepare(&raw, &translate::Config::default()).expect("prepares")
    }

    fn head_of(p: &translate::Prepared) -> Option<MissingHead> {
        missing_head(
            p.content_v,
            p.content.envelope.op_link.as_deref(),
            p.ops.iter().filter_map(|o| o.op_id.as_deref()),
        )
    }

    fn full() -> Mode {
        Mode::Replayed {
            base_v: 111,
            ops: 372,
        }
    }

    /// An op of the fixture's file 0 at version `v` whose previous op is `prev`: inserts `text`.
    fn text_op(id: &str, v: u64, prev: &str, text: &str) -> Value {
        json!({
            "_id": {"$oid": id}, "src": "live", "seq": 1, "v": v, "d": PRIMORDIAL, "o": {"$oid": prev},
            "m": {"ts": 1_700_000_000_000_i64}, "op": [{"p": ["files", 0, "text", 0], "si": text}],
        })
    }

    fn op_id_at(raw: &V2Viz, v: u64) -> String {
        let op = raw.ops.iter().find(|o| o["v"] == v).expect("op at v");
        crate::v2::raw_id_of(op).expect("op id")
    }

    #[test]
    fn the_fixture_replays_in_full() {
        let h = replay(|_| {});
        assert_eq!(h.mode, full());
        assert!(h.drafts.len() > 2, "{} drafts", h.drafts.len());
    }

    #[test]
    fn ops_written_past_the_snapshot_are_left_for_the_next_resync() {
        for ahead in [1_u64, 3] {
            let plain = replay(|_| {});
            let h = replay(|raw| {
                let mut prev = raw.content.as_ref().unwrap()["_o"]
                    .as_str()
                    .unwrap()
                    .to_string();
                for k in 0..ahead {
                    let id = format!("{:024x}", 0xaaaa_0000_u64 + k);
                    raw.ops.push(text_op(&id, 483 + k, &prev, "live! "));
                    prev = id;
                }
            });
            assert_eq!(h.mode, full(), "{ahead} ahead");
            assert_eq!(h.content, plain.content, "{ahead} ahead");
            assert_eq!(h.drafts, plain.drafts, "{ahead} ahead");
        }
    }

    #[test]
    fn an_orphan_op_beside_the_chain_is_ignored() {
        // A failed commit at v300: same `o` as the real v300, another body, another id; placed
        // after and before the real one in the log.
        for after in [true, false] {
            let h = replay(|raw| {
                let prev = op_id_at(raw, 299);
                let orphan = text_op("bbbbbbbbbbbbbbbbbbbbbbbb", 300, &prev, "orphan ");
                let at = raw.ops.iter().position(|o| o["v"] == 300).unwrap();
                raw.ops.insert(if after { at + 1 } else { at }, orphan);
            });
            assert_eq!(h.mode, full(), "orphan after: {after}");
        }
    }

    #[test]
    fn an_orphan_at_the_snapshot_version_minus_one_is_ignored() {
        let h = replay(|raw| {
            let prev = op_id_at(raw, 481);
            raw.ops
                .push(text_op("cccccccccccccccccccccccc", 482, &prev, "orphan "));
        });
        assert_eq!(h.mode, full());
    }

    #[test]
    fn a_chain_that_leaves_the_log_stops_there() {
        // Op v200 is missing (a truncated log): history is what the chain reaches, v201..482.
        let h = replay(|raw| raw.ops.retain(|o| o["v"] != 200));
        assert_eq!(
            h.mode,
            Mode::Replayed {
                base_v: 201,
                ops: 282
            }
        );
    }

    /// The log read from a node behind the snapshot's: it lacks the op the snapshot names (v482,
    /// its `_o`). That is told apart from a log that merely stops short, as retryable while the
    /// snapshot is recent enough for a replica to lag behind it; read so to the end, the history
    /// falls back with a reason that names the op.
    #[test]
    fn a_missing_head_op_is_retryable_and_named_in_the_fallback() {
        let without_head = |raw: &mut V2Viz| raw.ops.retain(|o| o["v"] != 482);
        assert_eq!(
            head_of(&prepared(|_| {})),
            None,
            "the whole log has its head"
        );
        let p = prepared(without_head);
        let m = head_of(&p).expect("the head op is missing");
        let head = p
            .content
            .envelope
            .op_link
            .clone()
            .expect("the fixture links its ops");
        assert_eq!((m.head.as_str(), m.v), (head.as_str(), 482));
        let now = 1_700_000_000_000_i64;
        assert!(
            m.is_retryable(Some(now - 5_000), now),
            "written seconds ago"
        );
        assert!(
            m.is_retryable(Some(now + 5_000), now),
            "V2's clock a little ahead"
        );
        assert!(
            !m.is_retryable(Some(now - REPLICATION_LAG_BOUND_MS - 1), now),
            "older than any replica's lag: truncated, not lagging"
        );
        assert!(
            !m.is_retryable(None, now),
            "no mtime: not written by a live V2"
        );
        match replay(without_head).mode {
            Mode::Fallback { reason } => {
                assert!(
                    reason.contains("head op") && reason.contains(&head),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        // A log that lost an older op still has its head: not a lagging read.
        assert_eq!(
            head_of(&prepared(|raw| raw.ops.retain(|o| o["v"] != 200))),
            None
        );
    }

    /// The snapshot as written before op linking: no `_o`.
    fn unlink(raw: &mut V2Viz) {
        let content = raw.content.as_mut().unwrap().as_object_mut().unwrap();
        content.remove("_o");
    }

    #[test]
    fn a_snapshot_without_op_link_goes_by_version() {
        let h = replay(unlink);
        assert_eq!(h.mode, full());
        // The ops' own `o` links still tell an orphan apart.
        let orphan = |raw: &mut V2Viz| {
            unlink(raw);
            let prev = op_id_at(raw, 399);
            raw.ops
                .push(text_op("dddddddddddddddddddddddd", 400, &prev, "orphan "));
        };
        assert_eq!(replay(orphan).mode, full());
        // With no links at all, a version two ops claim is where trust ends.
        let h = replay(|raw| {
            orphan(raw);
            for op in &mut raw.ops {
                op.as_object_mut().unwrap().remove("o");
            }
        });
        assert_eq!(
            h.mode,
            Mode::Replayed {
                base_v: 401,
                ops: 82
            }
        );
    }

    #[test]
    fn session_gaps_never_overflow() {
        let h = replay(|raw| {
            let n = raw.ops.len();
            raw.ops[n - 2]["m"]["ts"] = json!(i64::MIN);
            raw.ops[n - 1]["m"]["ts"] = json!(i64::MAX);
        });
        assert_eq!(h.mode, full());
    }
}
