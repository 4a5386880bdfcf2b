//! V3 op logs as `planner verify` reads them: who wrote each op (ours: `src` is
//! [`OP_SRC`]), and what the log says about V3's acts (spec 3.4, "V3 owns what its users did").
//!
//! [`Store::op_logs`] reads the logs of many docs in one aggregate (`$in` over the indexed `d`),
//! projected: the envelope of every op, and the body (`create` / `op`) only where it is needed.
//! Content ops can be large (a `create` holds the whole content) and are needed only as far as
//! "does this op of ours change anything, and what": any V3 op makes the content V3's, and a
//! create is a create whatever it holds. So for content only the `op` bodies of our own edits
//! travel ([`Bodies::OursEdits`]).
//!
//! [`analyze`] is pure: given a snapshot's head and its log, it finds
//! - **undone acts**: an op of ours that re-creates a doc after V3 deleted it (unless the
//!   re-created payload's `timestamp` is newer than the removal: an upvote V2 gave again), an
//!   op of ours that changes a field V3 had changed since the migration's previous op, or a
//!   `del` of ours of a doc V3 created or changed since;
//! - **hygiene problems**: versions missing from `0.._v-1`, a chain of `o` links that does not
//!   run from the snapshot's `_o` down to `v0`, ops of ours that no snapshot links to
//!   (orphans, including ours at `v >= _v`), ops of ours that change nothing (`op: null`, an empty
//!   op, or one that only moves `migratedTimestamp`);
//! - **ownership**: who changed each top-level field last, and whether V3 deleted the doc.
//!
//! "V3 changed a field" is decided by value when every body of the log is known and replays
//! with json1 ([`Granularity::Field`], used for `info`, upvotes and permissions): V3 changed
//! field `f` before our op when `f` then differs from what our previous op left (the three-way
//! base), so a V3 edit that V3 itself reverted is not V3's. Otherwise (content, users, a log
//! that does not replay) by the top-level keys ops touch, and with [`Granularity::Doc`] any V3
//! op makes every field V3's (content: V3's edit makes the whole content V3's; users: an edit in
//! V3 makes the whole user V3's, see [`crate::v3::USER_V3_OWNED`]).

use crate::json1;
use crate::v3::store::{Snapshot, Store, StoreError, OP_SRC};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Fields ours always rewrite (recounted from V3, or the migration's own stamp): a change of
/// ours to them never undoes V3.
pub const RECOMPUTED: [&str; 3] = [
    crate::merge::RECOUNTED[0],
    crate::merge::RECOUNTED[1],
    crate::merge::STAMP,
];

/// A field whose change alone is not a change worth an op.
pub const STAMP: &str = crate::merge::STAMP;

/// Which op bodies [`Store::op_logs`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bodies {
    All,
    /// Only the `op` bodies of edits the migration wrote: V3's ops, and every `create` (a
    /// whole content), come as [`Body::NotRead`].
    OursEdits,
}

/// What an op does.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// `create: {type, data}`.
    Create(Value),
    /// A json1 op; `Value::Null` for `op: null`.
    Op(Value),
    Del,
    /// A body not read (V3's content ops); `create` tells a create from an edit.
    NotRead {
        create: bool,
    },
}

/// One op of a log, as read.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedOp {
    pub id: ObjectId,
    pub v: i64,
    pub ours: bool,
    /// `o`: the op before it.
    pub prev: Option<ObjectId>,
    /// `m.ts` (ms).
    pub ts: Option<i64>,
    pub body: Body,
}

/// The snapshot a log belongs to: `_v`, `_o`, live or a tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub version: i64,
    pub last_op: Option<ObjectId>,
    pub live: bool,
}

impl Head {
    pub fn of(s: &Snapshot) -> Head {
        Head {
            version: s.version,
            last_op: s.last_op,
            live: s.doc_type.is_some(),
        }
    }
}

/// How finely V3's ops own a doc (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// Per top-level field, by value where the log replays.
    Field,
    /// Any V3 op owns every field.
    Doc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub granularity: Granularity,
    /// A re-create of ours after V3's `del` is no undo when the created payload's `timestamp`
    /// (s) is newer than the `del` (ms): an upvote or collaborator V2 gave again after V3's
    /// removal (spec 3.4).
    pub revive_when_newer: bool,
}

/// Who changed a top-level field last: `(ours, version)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LastChange {
    /// A change of every field (a create, a root replace, a V3 op of a [`Granularity::Doc`]
    /// doc), if any since the ones in `fields`.
    all: Option<(bool, i64)>,
    fields: HashMap<String, (bool, i64)>,
}

impl LastChange {
    /// `(ours, version)` of the last change of `field`, if any op changed it.
    pub fn of(&self, field: &str) -> Option<(bool, i64)> {
        self.fields.get(field).copied().or(self.all)
    }

    fn set(&mut self, touched: &Touched, ours: bool, v: i64) {
        match touched {
            Touched::All => {
                self.fields.clear();
                self.all = Some((ours, v));
            }
            Touched::Fields(f) => {
                for k in f {
                    self.fields.insert(k.clone(), (ours, v));
                }
            }
        }
    }

    fn clear(&mut self) {
        *self = LastChange::default();
    }
}

/// What [`analyze`] found in one doc's log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Analysis {
    /// Acts of V3's an op of ours undid, one line each.
    pub undone: Vec<String>,
    /// Op-log problems, one line each.
    pub hygiene: Vec<String>,
    /// The snapshot's `_o` is not an op of this doc at `_v - 1` (for info and content, the
    /// envelope check's finding).
    pub head_problem: Option<String>,
    /// V3 deleted the doc and it is still deleted: the `del` op's time (ms), if it has one.
    pub deleted_by_v3: Option<Option<i64>>,
    /// A V3 op came after the migration's last op (V3 edited the doc since).
    pub v3_since_ours: bool,
    /// Who changed each field last.
    pub last_change: LastChange,
}

/// Top-level fields an op changes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Touched {
    All,
    Fields(BTreeSet<String>),
}

impl Touched {
    fn none() -> Touched {
        Touched::Fields(BTreeSet::new())
    }

    fn is_empty(&self) -> bool {
        matches!(self, Touched::Fields(f) if f.is_empty())
    }
}

/// The top-level keys a json1 op descends into; [`Touched::All`] for a component at the root
/// or anything unexpected.
fn touched_by(op: &Value) -> Touched {
    let Value::Array(items) = op else {
        return if op.is_null() {
            Touched::none()
        } else {
            Touched::All
        };
    };
    let key = |k: &Value| match k {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match items.first() {
        None => Touched::none(),
        Some(first @ (Value::String(_) | Value::Number(_))) => {
            Touched::Fields(key(first).into_iter().collect())
        }
        Some(Value::Array(_)) => {
            let mut fields = BTreeSet::new();
            for item in items {
                match item.as_array().and_then(|d| d.first()).and_then(key) {
                    Some(k) => fields.insert(k),
                    None => return Touched::All,
                };
            }
            Touched::Fields(fields)
        }
        Some(_) => Touched::All,
    }
}

/// Top-level fields in which `a` and `b` differ (a missing doc differs everywhere).
fn differing(a: Option<&Value>, b: Option<&Value>) -> Touched {
    match (a, b) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => Touched::Fields(
            a.keys()
                .chain(b.keys())
                .filter(|k| a.get(*k) != b.get(*k))
                .cloned()
                .collect(),
        ),
        (None, None) => Touched::none(),
        _ => Touched::All,
    }
}

/// Fields of `touched` other than `ignored`; `All` stays `All`.
fn without(touched: &Touched, ignored: &[&str]) -> Touched {
    match touched {
        Touched::All => Touched::All,
        Touched::Fields(f) => Touched::Fields(
            f.iter()
                .filter(|k| !ignored.contains(&k.as_str()))
                .cloned()
                .collect(),
        ),
    }
}

fn names(t: &Touched) -> String {
    match t {
        Touched::All => "the whole doc".into(),
        Touched::Fields(f) => f.iter().cloned().collect::<Vec<_>>().join(", "),
    }
}

/// `: title "V3's" → "ours"`: what each of `fields` was before an op and after it, shortened.
fn values(fields: &BTreeSet<String>, before: Option<&Value>, after: Option<&Value>) -> String {
    let show = |doc: Option<&Value>, f: &str| {
        let v = doc
            .and_then(|d| d.get(f))
            .map_or("(absent)".to_string(), Value::to_string);
        match v.char_indices().nth(60) {
            Some((at, _)) => format!("{}…", &v[..at]),
            None => v,
        }
    };
    let each: Vec<String> = fields
        .iter()
        .map(|f| format!("{f} {} → {}", show(before, f), show(after, f)))
        .collect();
    format!(": {}", each.join(", "))
}

/// The ops of a log in history order: per version the op the snapshot's chain of `o` links
/// goes through, or, where the chain does not reach, the only op at that version. Also the
/// hygiene problems of the log (see the module docs).
fn history<'a>(
    head: &Head,
    ops: &'a [LoggedOp],
    head_problem: &mut Option<String>,
    hygiene: &mut Vec<String>,
) -> Vec<&'a LoggedOp> {
    // Versions above the log's newest op are all missing: said as one range, not walked (a
    // corrupt `_v` must not cost its size).
    let newest = ops.iter().map(|o| o.v).max().unwrap_or(-1);
    let missing_above = (head.version - 1 > newest).then_some((newest + 1, head.version - 1));
    let chain = Chain::walk(
        head,
        ops,
        newest,
        missing_above.is_some(),
        head_problem,
        hygiene,
    );
    report_missing(chain.missing, missing_above, hygiene);
    report_orphans(head, ops, &chain.chosen, chain.broken, hygiene);
    chain.chosen.into_values().collect()
}

/// A log's ops along the snapshot's chain of `o` links, as [`history`] walks it down.
struct Chain<'a> {
    /// The op of each version.
    chosen: BTreeMap<i64, &'a LoggedOp>,
    /// Versions (up to the newest op) with no op, newest first.
    missing: Vec<i64>,
    /// The links do not run from the snapshot's `_o` down to `v0`.
    broken: bool,
}

impl<'a> Chain<'a> {
    /// Walk down from the newest version the log can have (`_v - 1`, or the log's `newest` op)
    /// following `o` links from the snapshot's `_o`; `broken`: the chain is broken already
    /// (versions missing above `newest`). The first broken link is a problem: the snapshot's
    /// `head_problem` at `_v - 1`, else a hygiene line; where no link reaches, the only op at a
    /// version is taken.
    fn walk(
        head: &Head,
        ops: &'a [LoggedOp],
        newest: i64,
        mut broken: bool,
        head_problem: &mut Option<String>,
        hygiene: &mut Vec<String>,
    ) -> Chain<'a> {
        let mut at: HashMap<i64, Vec<&LoggedOp>> = HashMap::new();
        for op in ops {
            at.entry(op.v).or_default().push(op);
        }
        let mut chosen: BTreeMap<i64, &LoggedOp> = BTreeMap::new();
        let mut missing = Vec::new();
        let mut want = if broken { None } else { head.last_op };
        for v in (0..head.version.min(newest + 1)).rev() {
            let here = at.get(&v).map_or(&[][..], Vec::as_slice);
            if here.is_empty() {
                missing.push(v);
                broken = true;
                want = None;
                continue;
            }
            let linked = want.and_then(|w| here.iter().find(|o| o.id == w).copied());
            let op = match linked {
                Some(op) => Some(op),
                None => {
                    if !broken {
                        if v == head.version - 1 {
                            *head_problem = Some(match head.last_op {
                                Some(o) => format!("_o {o} is not an op at v{v}"),
                                None => "_o is missing".into(),
                            });
                        } else {
                            hygiene.push(format!(
                                "the op at v{} does not link (o) to an op at v{v}",
                                v + 1
                            ));
                        }
                        broken = true;
                    }
                    (here.len() == 1).then(|| here[0])
                }
            };
            if let Some(op) = op {
                chosen.insert(v, op);
            }
            want = op.and_then(|o| o.prev);
        }
        Chain {
            chosen,
            missing,
            broken,
        }
    }
}

/// `no op at v1..v3, v7`: the versions with no op (`missing`, newest first), and the range
/// above the log's newest op (`missing_above`), as one hygiene line.
fn report_missing(
    mut missing: Vec<i64>,
    missing_above: Option<(i64, i64)>,
    hygiene: &mut Vec<String>,
) {
    if missing.is_empty() && missing_above.is_none() {
        return;
    }
    missing.reverse();
    let mut said = ranges(&missing);
    if let Some((a, b)) = missing_above {
        let above = if a == b {
            format!("v{a}")
        } else {
            format!("v{a}..v{b}")
        };
        said = if said.is_empty() {
            above
        } else {
            format!("{said}, {above}")
        };
    }
    hygiene.push(format!("no op at {said}"));
}

/// Ops of ours the snapshot does not link (`chosen`: the ops it does). Where the chain is
/// `broken`, ops below `_v` are not called orphans: the chain cannot tell.
fn report_orphans(
    head: &Head,
    ops: &[LoggedOp],
    chosen: &BTreeMap<i64, &LoggedOp>,
    broken: bool,
    hygiene: &mut Vec<String>,
) {
    let on_chain: HashSet<ObjectId> = chosen.values().map(|o| o.id).collect();
    let mut orphans: Vec<&LoggedOp> = ops
        .iter()
        .filter(|o| o.ours && !on_chain.contains(&o.id) && !(broken && o.v < head.version))
        .collect();
    orphans.sort_by_key(|o| o.v);
    for o in orphans {
        hygiene.push(format!(
            "op of ours at v{} ({}) is an orphan: the snapshot (v{}) does not link it",
            o.v, o.id, head.version
        ));
    }
}

/// `[1, 2, 3, 7]` → `v1..v3, v7`.
fn ranges(vs: &[i64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < vs.len() {
        let mut j = i;
        while j + 1 < vs.len() && vs[j + 1] == vs[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            format!("v{}", vs[i])
        } else {
            format!("v{}..v{}", vs[i], vs[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

/// Analyze one doc's log (see the module docs). `ops` in any order.
pub fn analyze(head: &Head, ops: &[LoggedOp], rules: Rules) -> Analysis {
    let mut a = Analysis::default();
    let history = history(head, ops, &mut a.head_problem, &mut a.hygiene);
    let mut walk = Walk::new(rules);
    for op in history {
        walk.step(op, &mut a);
    }
    a.v3_since_ours = walk.v3_since.all.is_some() || !walk.v3_since.fields.is_empty();
    if !head.live {
        if let Some((false, _, ts)) = walk.last_del {
            a.deleted_by_v3 = Some(ts);
        }
    }
    a
}

/// [`analyze`]'s walk through a log in history order: the doc as replayed so far and who
/// did what since, op by op.
struct Walk {
    rules: Rules,
    /// The replay so far holds (only tried with [`Granularity::Field`]).
    known: bool,
    /// The doc as replayed (`None`: deleted, not created, or unknown).
    state: Option<Value>,
    /// What our last op left: the three-way base; `None` before our first op, `Some(None)`
    /// when unknown.
    base: Option<Option<Value>>,
    /// What V3 touched since our last op.
    v3_since: LastChange,
    /// The last `del`: (ours, version, time).
    last_del: Option<(bool, i64, Option<i64>)>,
    /// The last create: (ours, version).
    created_by: Option<(bool, i64)>,
    /// The version the next op should have: a gap ends the replay.
    expected_v: i64,
}

impl Walk {
    fn new(rules: Rules) -> Walk {
        Walk {
            rules,
            known: rules.granularity == Granularity::Field,
            state: None,
            base: None,
            v3_since: LastChange::default(),
            last_del: None,
            created_by: None,
            expected_v: 0,
        }
    }

    /// Take one op: replay it, report what it undid or what is wrong with it in `a`, and
    /// record who changed what.
    fn step(&mut self, op: &LoggedOp, a: &mut Analysis) {
        if op.v != self.expected_v {
            self.known = false; // a gap: the replay cannot go on
        }
        self.expected_v = op.v + 1;
        let before = self.state.clone();
        let touched = match &op.body {
            Body::Del => self.delete(op, &mut a.undone),
            Body::Create(_) | Body::NotRead { create: true } => self.create(op, &mut a.undone),
            Body::NotRead { create: false } => {
                self.known = false;
                Touched::All
            }
            Body::Op(o) => self.edit(o, before.as_ref()),
        };
        let touched = if !op.ours && self.rules.granularity == Granularity::Doc {
            Touched::All
        } else {
            touched
        };
        if op.ours {
            if let Body::Op(o) = &op.body {
                changes_nothing(op, o, &touched, &mut a.hygiene);
                self.overwrites(op, &touched, before.as_ref(), &mut a.undone);
            }
            self.move_base(&touched);
            self.v3_since.clear();
        } else {
            self.v3_since.set(&touched, false, op.v);
        }
        a.last_change.set(&touched, op.ours, op.v);
    }

    /// A `del`. Ours deleting what V3 created, or changed since our last op, undoes V3.
    fn delete(&mut self, op: &LoggedOp, undone: &mut Vec<String>) -> Touched {
        if op.ours {
            let by_v3 = match (
                self.created_by,
                self.v3_since.all,
                self.v3_since.fields.values().map(|(_, v)| *v).max(),
            ) {
                (Some((false, v)), _, _) => Some(format!("created it at v{v}")),
                (_, Some((_, v)), _) | (_, None, Some(v)) => Some(format!("changed it at v{v}")),
                _ => None,
            };
            if let Some(by_v3) = by_v3 {
                undone.push(format!("op v{} of ours deletes it (V3 {by_v3})", op.v));
            }
        }
        self.state = None;
        self.last_del = Some((op.ours, op.v, op.ts));
        Touched::All
    }

    /// A create (its body read or not). Ours re-creating what V3 deleted undoes V3, unless the
    /// rules let a payload newer than the removal come back.
    fn create(&mut self, op: &LoggedOp, undone: &mut Vec<String>) -> Touched {
        let data = match &op.body {
            Body::Create(c) => c.get("data"),
            _ => None,
        };
        if let (true, Some((false, dv, dts))) = (op.ours, self.last_del) {
            let when = data.and_then(|d| d.get("timestamp"));
            let newer = match (when.and_then(Value::as_f64), dts) {
                (Some(t), Some(d)) => t * 1000.0 > d as f64,
                _ => false,
            };
            if !(self.rules.revive_when_newer && newer) {
                undone.push(format!(
                    "op v{} of ours re-creates it after V3 deleted it at v{dv}",
                    op.v
                ));
            }
        }
        self.last_del = None;
        self.created_by = Some((op.ours, op.v));
        self.state = data.cloned();
        if self.state.is_none() {
            self.known = false;
        }
        Touched::All
    }

    /// A json1 edit: the fields it changed, by value while the replay holds (`before`: the doc
    /// before it), else by the keys it touches.
    fn edit(&mut self, o: &Value, before: Option<&Value>) -> Touched {
        let by_keys = touched_by(o);
        if !self.known {
            return by_keys;
        }
        match self.state.take().map(|s| json1::apply(s, o)) {
            Some(Ok(s)) => {
                self.state = Some(s);
                differing(before, self.state.as_ref())
            }
            _ => {
                self.known = false;
                by_keys
            }
        }
    }

    /// What V3 had changed since our previous op, by value where the log replays (`before`:
    /// the doc before our op).
    fn v3_changed(&self, before: Option<&Value>) -> Touched {
        match (&self.base, self.known) {
            (Some(base), true) => differing(base.as_ref(), before),
            (None, true) => Touched::All,
            _ => match self.v3_since.all {
                Some(_) => Touched::All,
                None => Touched::Fields(self.v3_since.fields.keys().cloned().collect()),
            },
        }
    }

    /// Report the fields an edit of ours (`touched`) overwrote that V3 had changed since our
    /// previous op (recomputed fields aside).
    fn overwrites(
        &self,
        op: &LoggedOp,
        touched: &Touched,
        before: Option<&Value>,
        undone: &mut Vec<String>,
    ) {
        let overwritten = match (&without(touched, &RECOMPUTED), &self.v3_changed(before)) {
            (Touched::All, Touched::All) => Touched::All,
            (Touched::All, Touched::Fields(f)) | (Touched::Fields(f), Touched::All) => {
                without(&Touched::Fields(f.clone()), &RECOMPUTED)
            }
            (Touched::Fields(f), Touched::Fields(g)) => {
                Touched::Fields(f.intersection(g).cloned().collect())
            }
        };
        if overwritten.is_empty() {
            return;
        }
        let values = match (&overwritten, self.known) {
            (Touched::Fields(f), true) => values(f, before, self.state.as_ref()),
            _ => String::new(),
        };
        undone.push(format!(
            "op v{} of ours overwrites {}{}{values}",
            op.v,
            names(&overwritten),
            self.v3_changed_at(&overwritten)
        ));
    }

    /// ` (V3 changed it at v3, v5)`: the versions of V3's changes to `overwritten`, if known.
    fn v3_changed_at(&self, overwritten: &Touched) -> String {
        match (overwritten, self.v3_since.all) {
            (_, Some((_, v))) => format!(" (V3 changed it at v{v})"),
            (Touched::Fields(f), None) => {
                let vs: BTreeSet<i64> = f
                    .iter()
                    .filter_map(|k| self.v3_since.fields.get(k).map(|(_, v)| *v))
                    .collect();
                if vs.is_empty() {
                    String::new()
                } else {
                    let vs: Vec<String> = vs.iter().map(|v| format!("v{v}")).collect();
                    format!(" (V3 changed it at {})", vs.join(", "))
                }
            }
            (Touched::All, None) => String::new(),
        }
    }

    /// After an op of ours: the base moves only where our op wrote. A field V3 changed before
    /// an op of ours that left it alone is still V3's at our next op (a catch-up's merge op
    /// between V3's trash and an undo of it must not hide the undo).
    fn move_base(&mut self, touched: &Touched) {
        self.base = Some(match (self.known, self.base.take(), touched) {
            (false, _, _) => None,
            (true, Some(Some(Value::Object(mut b))), Touched::Fields(f)) => {
                for k in f {
                    match self.state.as_ref().and_then(|s| s.get(k)) {
                        Some(x) => b.insert(k.clone(), x.clone()),
                        None => b.remove(k),
                    };
                }
                Some(Value::Object(b))
            }
            (true, _, _) => self.state.clone(),
        });
    }
}

/// Hygiene of an edit of ours: one that changes nothing, or only moves [`STAMP`], is an op
/// the migration should not have written.
fn changes_nothing(op: &LoggedOp, o: &Value, touched: &Touched, hygiene: &mut Vec<String>) {
    if o.is_null() || o.as_array().is_some_and(Vec::is_empty) || touched.is_empty() {
        hygiene.push(format!("op v{} of ours changes nothing", op.v));
    } else if without(touched, &[STAMP]).is_empty() {
        hygiene.push(format!("op v{} of ours only moves {STAMP}", op.v));
    }
}

/// An op as read by [`Store::op_logs`]: `(doc id, op)`.
fn logged_op(d: &Document) -> Option<(String, LoggedOp)> {
    let int = crate::v3::store::bson_i64;
    let ours = d.get_str("src") == Ok(OP_SRC);
    let read = d.get_document("body").ok();
    let to_json = |b: &Bson| crate::v3::store::to_json(b.clone());
    let body = if d.get_bool("del") == Ok(true) {
        Body::Del
    } else if d.get("create").is_some() {
        match read.and_then(|r| r.get("create")) {
            Some(c) => Body::Create(to_json(c)),
            None => Body::NotRead { create: true },
        }
    } else {
        match read {
            Some(r) => Body::Op(r.get("op").map_or(Value::Null, to_json)),
            None => Body::NotRead { create: false },
        }
    };
    Some((
        d.get_str("d").ok()?.to_string(),
        LoggedOp {
            id: d.get_object_id("_id").ok()?,
            v: int(d.get("v"))?,
            ours,
            prev: d.get_object_id("o").ok(),
            ts: d.get_document("m").ok().and_then(|m| int(m.get("ts"))),
            body,
        },
    ))
}

impl Store {
    /// The op logs of `collection/ids`, by doc id (one aggregate over the `{d, v}` index;
    /// a doc without ops is absent). `bodies`: whose `create`/`op` bodies are read; the others
    /// come as [`Body::NotRead`], with only `create.type` read to tell a create.
    pub async fn op_logs(
        &self,
        collection: &str,
        ids: &[String],
        bodies: Bodies,
    ) -> Result<HashMap<String, Vec<LoggedOp>>, StoreError> {
        let mut out: HashMap<String, Vec<LoggedOp>> = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let ours = doc! {"$eq": ["$src", OP_SRC]};
        let (read_body, body) = match bodies {
            Bodies::All => (Bson::Boolean(true), doc! {"create": "$create", "op": "$op"}),
            Bodies::OursEdits => (Bson::Document(ours), doc! {"op": "$op"}),
        };
        let pipeline = vec![
            doc! {"$match": {"d": {"$in": ids}}},
            doc! {"$project": {
                "d": 1, "v": 1, "src": 1, "o": 1, "m.ts": 1, "del": 1, "create.type": 1,
                "body": {"$cond": {"if": read_body, "then": body, "else": Bson::Null}},
            }},
        ];
        let docs: Vec<Document> = self
            .database()
            .collection::<Document>(&format!("o_{collection}"))
            .aggregate(pipeline)
            .await?
            .try_collect()
            .await?;
        for d in &docs {
            if let Some((id, op)) = logged_op(d) {
                out.entry(id).or_default().push(op);
            }
        }
        for ops in out.values_mut() {
            ops.sort_by_key(|o| o.v);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FIELD: Rules = Rules {
        granularity: Granularity::Field,
        revive_when_newer: false,
    };
    const DOC: Rules = Rules {
        granularity: Granularity::Doc,
        revive_when_newer: false,
    };

    /// A log built op by op, linked as sharedb-mongo links it.
    #[derive(Default)]
    struct Log {
        ops: Vec<LoggedOp>,
    }

    fn oid(n: u8) -> ObjectId {
        let mut b = [0u8; 12];
        b[11] = n;
        b[0] = 1;
        ObjectId::from_bytes(b)
    }

    impl Log {
        fn push(mut self, ours: bool, body: Body) -> Log {
            let v = self.ops.len() as i64;
            self.ops.push(LoggedOp {
                id: oid(v as u8),
                v,
                ours,
                prev: self.ops.last().map(|o| o.id),
                ts: Some(1_000_000 + v * 1000),
                body,
            });
            self
        }
        fn create(self, ours: bool, data: Value) -> Log {
            self.push(ours, Body::Create(json!({"type": "p", "data": data})))
        }
        fn op(self, ours: bool, op: Value) -> Log {
            self.push(ours, Body::Op(op))
        }
        fn del(self, ours: bool) -> Log {
            self.push(ours, Body::Del)
        }
        fn head(&self) -> Head {
            let live = !matches!(self.ops.last().map(|o| &o.body), Some(Body::Del));
            Head {
                version: self.ops.len() as i64,
                last_op: self.ops.last().map(|o| o.id),
                live,
            }
        }
        fn analyze(&self, rules: Rules) -> Analysis {
            analyze(&self.head(), &self.ops, rules)
        }
    }

    fn info() -> Value {
        json!({"id": "v", "title": "T", "visibility": "public", "updated": 1, "migratedTimestamp": 5, "upvotesCount": 0})
    }

    fn set(field: &str, value: Value) -> Value {
        json1::replace(&[field], value)
    }

    #[test]
    fn a_migration_alone_is_clean() {
        let log = Log::default().create(true, info()).op(
            true,
            json!([["title", {"r": true, "i": "U"}], ["updated", {"r": true, "i": 2}]]),
        );
        let a = log.analyze(FIELD);
        assert_eq!(
            a,
            Analysis {
                last_change: a.last_change.clone(),
                ..Analysis::default()
            }
        );
        assert_eq!(a.last_change.of("title"), Some((true, 1)));
        assert_eq!(a.last_change.of("visibility"), Some((true, 0)));
    }

    #[test]
    fn v3_acts_alone_are_not_undone_and_are_v3s() {
        let log = Log::default()
            .create(true, info())
            .op(false, set("title", json!("Mine")))
            .op(false, json!(["trashed", {"i": true}]));
        let a = log.analyze(FIELD);
        assert!(a.undone.is_empty() && a.hygiene.is_empty(), "{a:?}");
        assert!(a.v3_since_ours);
        assert_eq!(a.last_change.of("title"), Some((false, 1)));
        assert_eq!(a.last_change.of("trashed"), Some((false, 2)));
        assert_eq!(a.last_change.of("visibility"), Some((true, 0)));
    }

    #[test]
    fn an_op_of_ours_overwriting_a_v3_field_is_undone() {
        let log = Log::default()
            .create(true, info())
            .op(false, set("visibility", json!("private")))
            .op(true, json!([["migratedTimestamp", {"r": true, "i": 6}], ["visibility", {"r": true, "i": "public"}]]));
        let a = log.analyze(FIELD);
        assert_eq!(
            a.undone,
            [
                r#"op v2 of ours overwrites visibility (V3 changed it at v1): visibility "private" → "public""#
            ]
        );
        assert!(a.hygiene.is_empty());
        assert!(!a.v3_since_ours);
    }

    #[test]
    fn an_undo_after_an_op_of_ours_that_left_the_field_alone_is_still_undone() {
        // V3 trashes, a catch-up's merge op brings V2's title (trash left alone), then an op
        // of ours removes the trash: V3's act undone, though ours came between.
        let log = Log::default()
            .create(true, info())
            .op(false, json!(["trashed", {"i": true}]))
            .op(true, set("title", json!("From V2")))
            .op(true, json!(["trashed", {"r": true}]));
        let a = log.analyze(FIELD);
        assert_eq!(a.undone.len(), 1, "{a:?}");
        assert!(a.undone[0].contains("trashed"), "{a:?}");
    }

    #[test]
    fn v2_changes_to_fields_v3_left_alone_are_no_undo() {
        let log = Log::default()
            .create(true, info())
            .op(false, set("visibility", json!("private")))
            .op(true, set("title", json!("From V2")))
            .op(true, set("upvotesCount", json!(3)));
        let a = log.analyze(FIELD);
        assert!(a.undone.is_empty(), "{a:?}");
        assert_eq!(a.last_change.of("visibility"), Some((false, 1)));
    }

    #[test]
    fn a_v3_edit_v3_reverted_is_no_longer_v3s_by_value() {
        let log = Log::default()
            .create(true, info())
            .op(false, set("title", json!("X")))
            .op(false, set("title", json!("T")))
            .op(true, set("title", json!("From V2")));
        assert!(log.analyze(FIELD).undone.is_empty());
        // Without bodies to replay (by keys), the same log is an undo.
        assert_eq!(log.analyze(DOC).undone.len(), 1);
    }

    #[test]
    fn recounts_and_the_stamp_never_undo() {
        let log = Log::default()
            .create(true, info())
            .op(false, set("upvotesCount", json!(1)))
            .op(true, json!([["migratedTimestamp", {"r": true, "i": 9}], ["upvotesCount", {"r": true, "i": 2}]]));
        let a = log.analyze(FIELD);
        assert!(a.undone.is_empty() && a.hygiene.is_empty(), "{a:?}");
    }

    #[test]
    fn with_doc_granularity_any_v3_op_owns_the_doc() {
        let content =
            json!({"files": {"a": {"name": "i", "text": "x"}}, "title": "T", "height": 500});
        let log = Log::default()
            .create(true, content)
            .push(false, Body::NotRead { create: false })
            .op(true, set("title", json!("V2 title")));
        let a = log.analyze(DOC);
        assert_eq!(
            a.undone,
            ["op v2 of ours overwrites title (V3 changed it at v1)"]
        );
        let v3_last = Log::default()
            .create(true, json!({"title": "T"}))
            .push(false, Body::NotRead { create: false });
        let a = v3_last.analyze(DOC);
        assert!(a.v3_since_ours && a.undone.is_empty());
        assert_eq!(a.last_change.of("title"), Some((false, 1)));
    }

    #[test]
    fn a_v3_deletion_is_reported_and_a_recreate_of_ours_is_undone() {
        let deleted = Log::default().create(true, info()).del(false);
        let a = deleted.analyze(FIELD);
        assert_eq!(a.deleted_by_v3, Some(Some(1_001_000)));
        assert!(a.undone.is_empty() && a.hygiene.is_empty());
        let ours_deleted = Log::default().create(true, info()).del(true);
        assert_eq!(ours_deleted.analyze(FIELD).deleted_by_v3, None);
        let recreated = deleted.create(true, info());
        let a = recreated.analyze(FIELD);
        assert_eq!(
            a.undone,
            ["op v2 of ours re-creates it after V3 deleted it at v1"]
        );
        assert_eq!(a.deleted_by_v3, None);
        // Re-created by us after our own delete: fine.
        let a = ours_deleted.create(true, info()).analyze(FIELD);
        assert!(a.undone.is_empty());
    }

    #[test]
    fn an_upvote_given_again_in_v2_after_the_removal_may_come_back() {
        let revive = Rules {
            revive_when_newer: true,
            ..FIELD
        };
        // The del is at 1_001_000 ms = 1001 s.
        let upvote = |t: i64| json!({"id": "u-v", "user": "u", "viz": "v", "timestamp": t});
        let log = |t| {
            Log::default()
                .create(true, upvote(10))
                .del(false)
                .create(true, upvote(t))
        };
        assert!(log(1002).analyze(revive).undone.is_empty());
        assert_eq!(log(1000).analyze(revive).undone.len(), 1);
        assert_eq!(log(1002).analyze(FIELD).undone.len(), 1);
    }

    #[test]
    fn no_op_ops_of_ours_are_hygiene_problems() {
        let log = Log::default()
            .create(true, info())
            .op(true, Value::Null)
            .op(true, json!([]))
            .op(true, set("migratedTimestamp", json!(7)))
            .op(true, set("title", json!("T")));
        let a = log.analyze(FIELD);
        assert_eq!(
            a.hygiene,
            [
                "op v1 of ours changes nothing",
                "op v2 of ours changes nothing",
                "op v3 of ours only moves migratedTimestamp",
                // Replaces the title with the same value: changes nothing by value.
                "op v4 of ours changes nothing",
            ]
        );
        // A V3 no-op is V3's business.
        let a = Log::default()
            .create(true, info())
            .op(false, Value::Null)
            .analyze(FIELD);
        assert!(a.hygiene.is_empty());
    }

    #[test]
    fn orphans_of_ours_are_reported_and_v3_orphans_ignored() {
        let mut log = Log::default()
            .create(true, info())
            .op(true, set("title", json!("U")));
        let head = log.head();
        // Ours at v2, past the snapshot: an update that lost its race and was not taken back.
        log = log.op(true, set("title", json!("W")));
        // V3's own orphan at v2 (sharedb-mongo leaves those): not ours to report.
        let mut v3 = log.ops[2].clone();
        v3.id = oid(99);
        v3.ours = false;
        log.ops.push(v3);
        // Ours at v1 beside the linked op: a duplicate.
        let mut dup = log.ops[1].clone();
        dup.id = oid(98);
        log.ops.push(dup);
        let a = analyze(&head, &log.ops, FIELD);
        assert_eq!(a.hygiene.len(), 2, "{a:?}");
        assert!(
            a.hygiene[0].starts_with("op of ours at v1 (")
                && a.hygiene[0].ends_with("is an orphan: the snapshot (v2) does not link it")
        );
        assert!(a.hygiene[1].starts_with("op of ours at v2 ("));
        assert!(a.undone.is_empty());
    }

    #[test]
    fn broken_links_and_gaps_are_reported() {
        let log = Log::default()
            .create(true, info())
            .op(true, set("title", json!("U")))
            .op(true, set("title", json!("W")));
        let mut ops = log.ops.clone();
        ops[2].prev = Some(oid(77));
        let a = analyze(&log.head(), &ops, FIELD);
        assert_eq!(a.hygiene, ["the op at v2 does not link (o) to an op at v1"]);
        let mut head = log.head();
        head.last_op = Some(oid(77));
        let a = analyze(&head, &log.ops, FIELD);
        assert!(a.hygiene.is_empty(), "{a:?}");
        assert_eq!(
            a.head_problem,
            Some(format!("_o {} is not an op at v2", oid(77)))
        );
        let gap: Vec<LoggedOp> = log.ops.iter().filter(|o| o.v != 1).cloned().collect();
        let a = analyze(&log.head(), &gap, FIELD);
        assert_eq!(a.hygiene, ["no op at v1"]);
        let a = analyze(&log.head(), &[], FIELD);
        assert_eq!(a.hygiene, ["no op at v0..v2"]);
        let mut huge = log.head();
        huge.version = i64::MAX / 2;
        let a = analyze(&huge, &gap, FIELD);
        assert_eq!(
            a.hygiene,
            [format!("no op at v1, v3..v{}", i64::MAX / 2 - 1)]
        );
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "v0..v2, v5, v7..v8");
    }

    #[test]
    fn v3_creating_a_doc_makes_it_v3s() {
        // A V3-native doc the migration then changes: every field was V3's.
        let log = Log::default()
            .create(false, json!({"id": "u-v", "timestamp": 1}))
            .op(true, set("timestamp", json!(2)));
        let a = log.analyze(FIELD);
        assert_eq!(
            a.undone,
            ["op v1 of ours overwrites timestamp (V3 changed it at v0): timestamp 1 → 2"]
        );
    }

    #[test]
    fn a_delete_of_ours_of_what_v3_made_is_undone() {
        let v3_native = Log::default().create(false, json!({"id": "u-v"})).del(true);
        assert_eq!(
            v3_native.analyze(FIELD).undone,
            ["op v1 of ours deletes it (V3 created it at v0)"]
        );
        let v3_changed = Log::default()
            .create(true, json!({"id": "u-v", "role": "editor"}))
            .op(false, set("role", json!("admin")))
            .del(true);
        assert_eq!(
            v3_changed.analyze(FIELD).undone,
            ["op v2 of ours deletes it (V3 changed it at v1)"]
        );
        // Ours, untouched by V3: a migrated upvote V2 withdrew.
        let ours = Log::default().create(true, json!({"id": "u-v"})).del(true);
        assert!(ours.analyze(FIELD).undone.is_empty());
    }

    #[test]
    fn creates_not_read_still_tell_a_recreate() {
        // Content: our create's body is not read.
        let log = Log::default()
            .push(true, Body::NotRead { create: true })
            .del(false)
            .push(true, Body::NotRead { create: true });
        let a = log.analyze(DOC);
        assert_eq!(
            a.undone,
            ["op v2 of ours re-creates it after V3 deleted it at v1"]
        );
        assert!(a.hygiene.is_empty());
    }

    #[test]
    fn logged_ops_as_read() {
        let o = |d: Document| logged_op(&d).unwrap().1.body;
        let base = doc! {"_id": oid(1), "d": "x", "v": 3_i64, "src": OP_SRC};
        let with = |extra: Document| {
            let mut d = base.clone();
            d.extend(extra);
            d
        };
        assert_eq!(o(with(doc! {"del": true})), Body::Del);
        assert_eq!(
            o(with(
                doc! {"create": {"type": "p"}, "body": {"create": {"type": "p", "data": {"a": 1}}}}
            )),
            Body::Create(json!({"type": "p", "data": {"a": 1}}))
        );
        assert_eq!(
            o(with(
                doc! {"create": {"type": "p"}, "body": {"op": "ignored"}}
            )),
            Body::NotRead { create: true }
        );
        assert_eq!(
            o(with(doc! {"body": {"op": Bson::Null}})),
            Body::Op(Value::Null)
        );
        assert_eq!(o(with(doc! {"body": {}})), Body::Op(Value::Null));
        assert_eq!(
            o(with(doc! {"body": {"op": ["title", {"r": true}]}})),
            Body::Op(json!(["title", {"r": true}]))
        );
        assert_eq!(
            o(with(doc! {"body": Bson::Null})),
            Body::NotRead { create: false }
        );
        let (id, op) =
            logged_op(&with(doc! {"o": oid(2), "m": {"ts": 5_i32}, "del": true})).unwrap();
        assert_eq!(
            (id.as_str(), op.v, op.ours, op.prev, op.ts),
            ("x", 3, true, Some(oid(2)), Some(5))
        );
        assert!(logged_op(&doc! {"d": "x"}).is_none());
    }

    #[test]
    fn a_long_v3_edited_log_is_analyzed_in_linear_time() {
        let mut log = Log::default().push(true, Body::NotRead { create: true });
        for _ in 0..20_000 {
            log = log.push(false, Body::NotRead { create: false });
        }
        let started = std::time::Instant::now();
        let a = log.analyze(DOC);
        assert!(a.v3_since_ours && a.undone.is_empty() && a.hygiene.is_empty());
        assert!(started.elapsed().as_secs() < 2, "{:?}", started.elapsed());
    }

    #[test]
    fn touched_keys_of_json1_ops() {
        let f = |op: Value| touched_by(&op);
        let keys = |k: &[&str]| Touched::Fields(k.iter().map(|s| s.to_string()).collect());
        assert_eq!(f(json!(null)), keys(&[]));
        assert_eq!(f(json!(["title", {"r": true, "i": "x"}])), keys(&["title"]));
        assert_eq!(
            f(json!([["files", "ab", "text", {"es": ["x"]}], ["title", {"r": true}]])),
            keys(&["files", "title"])
        );
        assert_eq!(f(json!([{"r": true, "i": {}}])), Touched::All);
        assert_eq!(f(json!({"weird": 1})), Touched::All);
    }

    #[test]
    fn a_log_that_does_not_replay_falls_back_to_keys() {
        let log = Log::default()
            .create(true, info())
            // Not applicable (text edit of a number): the replay stops.
            .op(false, json!(["updated", {"es": ["x"]}]))
            .op(true, set("visibility", json!("private")))
            .op(true, set("updated", json!(3)));
        let a = log.analyze(FIELD);
        assert!(a.undone.is_empty(), "{a:?}");
        let log = log
            .op(false, set("title", json!("Mine")))
            .op(true, set("title", json!("Back")));
        assert_eq!(
            log.analyze(FIELD).undone,
            ["op v5 of ours overwrites title (V3 changed it at v4)"]
        );
    }
}
