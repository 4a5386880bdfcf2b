//! json1 operations (npm `ot-json1` 1.0.2 with `ot-text-unicode` 4) for the subset VizHub V3
//! content needs: building, normalizing, applying and diffing ops over JSON documents whose
//! containers are objects.
//!
//! # Supported subset
//! * An op is `null` (no-op) or a JSON array. Path keys are strings (object keys); list indices
//!   (numbers), moves (`p`/`d`) and embedded types other than text (`e`/`et`) are rejected with
//!   [`Json1Error::Unsupported`].
//! * Components: `{"r": x}` remove (any `r` value means remove, as in ot-json1; normalize keeps the
//!   value), `{"i": v}` insert, `{"r": x, "i": v}` replace, `{"es": [...]}` text edit and
//!   `{"ena": n}` number add. An insert and an edit in one component edit the inserted value.
//! * Text edits count **Unicode code points** (not UTF-16 units, not bytes): a number skips N code
//!   points, a string inserts, `{"d": N}` deletes N code points and `{"d": "str"}` deletes as many
//!   code points as `str` has (its content is not checked, like ot-text-unicode).
//!
//! # Normal form (what [`normalize`] produces and what every builder and [`diff`] return)
//! * Same-path pieces are merged (ot-json1's `mergeTree`), single child descents are inlined
//!   (`["files", ["a", {..}]]` -> `["files", "a", {..}]`), sibling descents (at least two) come last,
//!   sorted by key with JS `<` on strings (UTF-16 code-unit order); several top-level branches give
//!   `[["files", ..], ["title", ..]]`; a component on the root is the first element (`[{"r": true, "i": v}]`).
//! * Inside a component the keys are written edit first (`es`/`ena`), then `r`, then `i`, exactly as
//!   ot-json1's `normalize` writes them (so `{"r": true, "i": v}` for a replace).
//! * An `es` list has no zero-length items, no trailing skip, and no two adjacent items of the same
//!   kind (skips added, inserts concatenated, deletes summed — or concatenated when both are strings).
//!   An empty `es` is no edit; components and descents left empty disappear; an empty op is `None`.
//!   `{"ena": 0}` is kept, as ot-json1 keeps it (but [`add_number`] returns `None` for 0).
//!
//! # Apply
//! [`apply`] follows ot-json1's two phases (all removals, then all inserts and edits) on the
//! *normalized* form of the op, mutating the document in place. Like the conformance vectors it is
//! lenient about op shape (unsorted descents, zero or trailing skips), and stricter than the JS code
//! about the document: skipping or deleting past the end of a text, removing a missing key, editing
//! a non-string with `es` or a non-number with `ena` are all errors. Key order follows JS objects:
//! removed keys disappear in place, inserted keys (including replaced ones) go to the end.
//!
//! # Diff and composition
//! [`diff`] returns the minimal normalized op turning one document into another: objects recurse per
//! key, two strings get a code-point `es` diff (after stripping the common prefix and suffix, a
//! line diff with imara-diff's Histogram, then Myers on the code points of each changed block —
//! the way diff-match-patch's line mode works; Myers' early-abort heuristics keep unrelated texts
//! near linear at the price of a slightly longer, still correct, diff), and
//! any other difference is a replace. Numbers are compared by value (`500` equals `500.0`).
//! Decision: a commit made of several edits is **composed by diffing its start and end states**
//! ([`compose_on`]) rather than by json1 `compose`; that always yields one normalized op, and the
//! replay of the commit chain reaches exactly the same states.
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Why an op could not be normalized or applied. `path` is the JSON array of keys where it happened.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Json1Error {
    /// The op is not a well-formed json1 op.
    #[error("malformed json1 op at {path}: {reason}")]
    Malformed { path: String, reason: String },
    /// Well-formed json1 outside the supported subset (list indices, moves, other embedded types).
    #[error("unsupported json1 op at {path}: {reason}")]
    Unsupported { path: String, reason: String },
    /// The op needs a value at `path` that the document does not have.
    #[error("cannot apply json1 op at {path}: {reason}")]
    PathMissing { path: String, reason: String },
    /// The op descends through (or inserts into) a value that is not an object.
    #[error(
        "cannot apply json1 op at {path}: the op descends into it but it is {found}, not an object"
    )]
    NotAnObject { path: String, found: String },
    /// An insert without `r` onto a key that already has a value.
    #[error("cannot apply json1 op at {path}: insert onto an existing value (the component needs \"r\" to replace it)")]
    AlreadyExists { path: String },
    /// A text edit (`es`) that does not fit the value.
    #[error("cannot apply json1 text edit at {path}: {reason}")]
    Text { path: String, reason: String },
    /// A number add (`ena`) that does not fit the value.
    #[error("cannot apply json1 number add at {path}: {reason}")]
    Number { path: String, reason: String },
    /// The op removes the document root without inserting a new one.
    #[error("cannot apply json1 op: it removes the document root and inserts nothing")]
    RootRemoved,
}

type Result<T> = std::result::Result<T, Json1Error>;

/// Minimal, normalized json1 op that turns `old` into `new`; `None` when they are equal.
///
/// Objects recurse per key (removed keys -> `{"r": true}`, added keys -> `{"i": v}`); two strings
/// -> `{"es": <minimal code-point diff>}`; anything else that differs (types, numbers, arrays,
/// null) -> `{"r": true, "i": new}`. The same rule holds at the root, so two different non-object
/// roots give `[{"r": true, "i": new}]` (ot-json1 accepts a component at the root).
pub fn diff(old: &Value, new: &Value) -> Option<Value> {
    if json_eq(old, new) {
        return None;
    }
    let mut root = Node::default();
    diff_into(&mut root, old, new);
    finish(root)
}

/// Apply an op (`Value::Null` = no-op) with ot-json1 semantics for the supported subset; returns the
/// new document. The op is applied in its normalized form (see the module docs).
pub fn apply(doc: Value, op: &Value) -> Result<Value> {
    let Some(root) = parse(op.clone())? else {
        return Ok(doc);
    };
    let mut path = Vec::new();
    let mut doc = Some(doc);
    // Phase 1: removals.
    pick_children(doc.as_mut(), &root, &mut path)?;
    if root.comp.r.is_some() {
        doc = None;
    }
    // Phase 2: inserts and edits.
    let Node { comp, children } = root;
    if let Some(v) = comp.i {
        if doc.is_some() {
            return Err(Json1Error::AlreadyExists {
                path: fmt_path(&path),
            });
        }
        doc = Some(v);
    }
    if comp.es.is_some() || comp.ena.is_some() {
        let Some(v) = doc.as_mut() else {
            return Err(Json1Error::PathMissing {
                path: fmt_path(&path),
                reason: "edit of a removed document root".into(),
            });
        };
        apply_edit(v, comp.es, comp.ena, &path)?;
    }
    drop_children(doc.as_mut(), children, &mut path)?;
    doc.ok_or(Json1Error::RootRemoved)
}

/// Normalize an op of the supported subset: merge same-path pieces, sort and inline descents, drop
/// empty components, write `r` before `i`, normalize `es` lists; `None` for an empty op.
pub fn normalize(op: Value) -> Result<Option<Value>> {
    Ok(parse(op)?.and_then(finish))
}

/// True when `normalize(op.clone())` returns `op` itself, key order included (`null` is normalized).
pub fn is_normalized(op: &Value) -> bool {
    match normalize(op.clone()) {
        Ok(None) => op.is_null(),
        Ok(Some(n)) => ordered_eq(&n, op),
        Err(_) => false,
    }
}

/// Compose several ops applied in sequence to `doc` into one normalized op (apply all, then diff
/// the start state against the end state).
pub fn compose_on(doc: &Value, ops: &[Value]) -> Result<Option<Value>> {
    let mut end = doc.clone();
    for op in ops {
        end = apply(end, op)?;
    }
    Ok(diff(doc, &end))
}

/// `[..path, {"i": value}]`.
pub fn insert(path: &[&str], value: Value) -> Value {
    at_path(path, component(None, None, Some(value)))
}

/// `[..path, {"r": true}]`.
pub fn remove(path: &[&str]) -> Value {
    at_path(path, component(None, Some(Value::Bool(true)), None))
}

/// `[..path, {"r": true, "i": value}]`.
pub fn replace(path: &[&str], value: Value) -> Value {
    at_path(path, component(None, Some(Value::Bool(true)), Some(value)))
}

/// `[..path, {"es": text::diff(old, new)}]`, or `None` when the texts are equal.
pub fn edit_text(path: &[&str], old: &str, new: &str) -> Option<Value> {
    let es = text::diff(old, new);
    if es.is_empty() {
        return None;
    }
    Some(at_path(
        path,
        component(Some(("es", Value::Array(es))), None, None),
    ))
}

/// `[..path, {"ena": n}]`, or `None` when `n == 0`.
pub fn add_number(path: &[&str], n: i64) -> Option<Value> {
    if n == 0 {
        return None;
    }
    Some(at_path(
        path,
        component(Some(("ena", Value::from(n))), None, None),
    ))
}

fn at_path(path: &[&str], comp: Value) -> Value {
    let mut items: Vec<Value> = path
        .iter()
        .map(|k| Value::String((*k).to_owned()))
        .collect();
    items.push(comp);
    Value::Array(items)
}

fn component(edit: Option<(&str, Value)>, r: Option<Value>, i: Option<Value>) -> Value {
    let mut m = Map::new();
    if let Some((k, v)) = edit {
        m.insert(k.to_owned(), v);
    }
    if let Some(r) = r {
        m.insert("r".to_owned(), r);
    }
    if let Some(i) = i {
        m.insert("i".to_owned(), i);
    }
    Value::Object(m)
}

// ---------------------------------------------------------------------------------------------
// Op tree (the merged form of an op; serializing it gives the normal form)

/// An object key ordered like JS `<` on strings (UTF-16 code units).
#[derive(Debug, PartialEq, Eq)]
struct Key(String);

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        utf16_cmp(&self.0, &other.0)
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn utf16_cmp(a: &str, b: &str) -> Ordering {
    // UTF-8 byte order equals code point order; it differs from UTF-16 order only between BMP
    // characters at or above U+E000 and astral characters, so compare the first differing chars.
    for (x, y) in a.chars().zip(b.chars()) {
        if x != y {
            let mut bx = [0u16; 2];
            let mut by = [0u16; 2];
            let (ux, uy): (&[u16], &[u16]) = (x.encode_utf16(&mut bx), y.encode_utf16(&mut by));
            return ux.cmp(uy);
        }
    }
    // One is a prefix of the other: the shorter one sorts first.
    a.len().cmp(&b.len())
}

#[derive(Debug, Default)]
struct Comp {
    r: Option<Value>,
    i: Option<Value>,
    /// Already normalized; never empty.
    es: Option<Vec<Value>>,
    ena: Option<Value>,
}

impl Comp {
    fn is_empty(&self) -> bool {
        self.r.is_none() && self.i.is_none() && self.es.is_none() && self.ena.is_none()
    }
}

#[derive(Debug, Default)]
struct Node {
    comp: Comp,
    children: BTreeMap<Key, Node>,
}

fn has_pick(node: &Node) -> bool {
    node.comp.r.is_some() || node.children.values().any(has_pick)
}

fn has_drop(node: &Node) -> bool {
    node.comp.i.is_some()
        || node.comp.es.is_some()
        || node.comp.ena.is_some()
        || node.children.values().any(has_drop)
}

fn fmt_path(path: &[String]) -> String {
    serde_json::to_string(path).unwrap_or_default()
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("a string of {} code points", s.chars().count()),
        Value::Array(a) => format!("an array of {} items", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

fn parse(op: Value) -> Result<Option<Node>> {
    match op {
        Value::Null => Ok(None),
        Value::Array(items) => {
            let mut root = Node::default();
            merge_items(&mut root, items, &mut Vec::new())?;
            Ok(Some(root))
        }
        other => Err(Json1Error::Malformed {
            path: "[]".into(),
            reason: format!("an op must be null or an array, got {}", describe(&other)),
        }),
    }
}

/// ot-json1 `mergeTree`: keys descend, arrays recurse from the current position, objects are
/// components merged into the current node.
fn merge_items(node: &mut Node, items: Vec<Value>, path: &mut Vec<String>) -> Result<()> {
    let base = path.len();
    let mut cur = node;
    for (idx, item) in items.into_iter().enumerate() {
        match item {
            Value::String(k) => {
                if k == "__proto__" {
                    return Err(Json1Error::Malformed {
                        path: fmt_path(path),
                        reason: "the key \"__proto__\" is not a valid json1 path key".into(),
                    });
                }
                path.push(k.clone());
                cur = cur.children.entry(Key(k)).or_default();
            }
            Value::Array(sub) => merge_items(cur, sub, path)?,
            Value::Object(c) => merge_comp(&mut cur.comp, c, path)?,
            Value::Number(n) => {
                return Err(Json1Error::Unsupported {
                    path: fmt_path(path),
                    reason: format!(
                        "item {idx} is the list index {n}; only object keys are supported"
                    ),
                })
            }
            other => {
                return Err(Json1Error::Malformed {
                    path: fmt_path(path),
                    reason: format!(
                        "item {idx} is {}; expected a key, a component or a child descent",
                        describe(&other)
                    ),
                })
            }
        }
    }
    path.truncate(base);
    Ok(())
}

fn merge_comp(comp: &mut Comp, c: Map<String, Value>, path: &[String]) -> Result<()> {
    let malformed = |reason: String| Json1Error::Malformed {
        path: fmt_path(path),
        reason,
    };
    for (k, v) in c {
        match k.as_str() {
            "r" => match &comp.r {
                Some(prev) if !(prev == &v && !v.is_object() && !v.is_array()) => {
                    return Err(malformed("two components remove the same value".into()))
                }
                _ => comp.r = Some(v),
            },
            "i" => {
                if comp.i.is_some() {
                    return Err(malformed("two components insert at the same path".into()));
                }
                comp.i = Some(v);
            }
            "es" | "ena" => {
                if comp.es.is_some() || comp.ena.is_some() {
                    return Err(malformed("more than one edit at the same path".into()));
                }
                if k == "es" {
                    let Value::Array(es) = v else {
                        return Err(malformed(format!(
                            "\"es\" must be an array, got {}",
                            describe(&v)
                        )));
                    };
                    if let Some(bad) = es.iter().position(|c| text::Item::of(c).is_none()) {
                        return Err(malformed(format!(
                            "\"es\" item {bad} ({}) is not a skip (non-negative integer), an insert (string) or a delete ({{\"d\": n or string}})",
                            es[bad]
                        )));
                    }
                    let es = text::normalize(es);
                    // An es list that normalizes to nothing is no edit at all (ot-json1 drops it).
                    if !es.is_empty() {
                        comp.es = Some(es);
                    }
                } else {
                    if !v.is_number() {
                        return Err(malformed(format!(
                            "\"ena\" must be a number, got {}",
                            describe(&v)
                        )));
                    }
                    comp.ena = Some(v);
                }
            }
            "p" | "d" => {
                return Err(Json1Error::Unsupported {
                    path: fmt_path(path),
                    reason: format!("moves (\"{k}\") are not supported"),
                })
            }
            "e" | "et" => {
                return Err(Json1Error::Unsupported {
                    path: fmt_path(path),
                    reason: format!(
                        "embedded edits (\"{k}\") other than \"es\"/\"ena\" are not supported"
                    ),
                })
            }
            _ => return Err(malformed(format!("unknown component key {k:?}"))),
        }
    }
    Ok(())
}

fn comp_value(comp: Comp) -> Option<Value> {
    if comp.is_empty() {
        return None;
    }
    let edit = match (comp.es, comp.ena) {
        (Some(es), _) => Some(("es", Value::Array(es))),
        (None, Some(n)) => Some(("ena", n)),
        (None, None) => None,
    };
    Some(component(edit, comp.r, comp.i))
}

/// The items of a node in normal form: its component, then its children (inlined when single).
fn node_items(node: Node) -> Vec<Value> {
    let mut items = Vec::new();
    if let Some(c) = comp_value(node.comp) {
        items.push(c);
    }
    let mut kids: Vec<(String, Vec<Value>)> = node
        .children
        .into_iter()
        .filter_map(|(k, n)| {
            let it = node_items(n);
            (!it.is_empty()).then_some((k.0, it))
        })
        .collect();
    if kids.len() == 1 {
        let (k, it) = kids.pop().expect("one child");
        items.push(Value::String(k));
        items.extend(it);
    } else {
        for (k, it) in kids {
            let mut d = Vec::with_capacity(it.len() + 1);
            d.push(Value::String(k));
            d.extend(it);
            items.push(Value::Array(d));
        }
    }
    items
}

fn finish(root: Node) -> Option<Value> {
    let items = node_items(root);
    (!items.is_empty()).then_some(Value::Array(items))
}

// ---------------------------------------------------------------------------------------------
// Apply

fn pick_children(val: Option<&mut Value>, node: &Node, path: &mut Vec<String>) -> Result<()> {
    if !node.children.values().any(has_pick) {
        return Ok(());
    }
    let obj = match val {
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(Json1Error::NotAnObject {
                path: fmt_path(path),
                found: describe(other),
            })
        }
        None => {
            return Err(Json1Error::PathMissing {
                path: fmt_path(path),
                reason: "no value here, but the op removes something below it".into(),
            })
        }
    };
    for (key, child) in &node.children {
        if !has_pick(child) {
            continue;
        }
        path.push(key.0.clone());
        match obj.get_mut(&key.0) {
            Some(v) => pick_children(Some(v), child, path)?,
            None => {
                return Err(Json1Error::PathMissing {
                    path: fmt_path(path),
                    reason: if child.comp.r.is_some() {
                        "remove (\"r\") of a missing key".into()
                    } else {
                        "no value here, but the op removes something below it".into()
                    },
                })
            }
        }
        if child.comp.r.is_some() {
            obj.shift_remove(&key.0);
        }
        path.pop();
    }
    Ok(())
}

fn drop_children(
    val: Option<&mut Value>,
    children: BTreeMap<Key, Node>,
    path: &mut Vec<String>,
) -> Result<()> {
    if !children.values().any(has_drop) {
        return Ok(());
    }
    let obj = match val {
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(Json1Error::NotAnObject {
                path: fmt_path(path),
                found: describe(other),
            })
        }
        None => {
            return Err(Json1Error::PathMissing {
                path: fmt_path(path),
                reason: "no value here, but the op inserts or edits something below it".into(),
            })
        }
    };
    for (Key(key), child) in children {
        if !has_drop(&child) {
            continue;
        }
        path.push(key);
        let key = path.last().expect("just pushed");
        let Node { comp, children } = child;
        if let Some(v) = comp.i {
            if obj.contains_key(key) {
                return Err(Json1Error::AlreadyExists {
                    path: fmt_path(path),
                });
            }
            obj.insert(key.clone(), v);
        }
        if comp.es.is_some() || comp.ena.is_some() {
            match obj.get_mut(key) {
                Some(v) => apply_edit(v, comp.es, comp.ena, path)?,
                None => {
                    return Err(Json1Error::PathMissing {
                        path: fmt_path(path),
                        reason: "edit (\"es\"/\"ena\") of a missing key".into(),
                    })
                }
            }
        }
        let v = obj.get_mut(key);
        drop_children(v, children, path)?;
        path.pop();
    }
    Ok(())
}

fn apply_edit(
    v: &mut Value,
    es: Option<Vec<Value>>,
    ena: Option<Value>,
    path: &[String],
) -> Result<()> {
    if let Some(es) = es {
        let Value::String(s) = v else {
            return Err(Json1Error::Text {
                path: fmt_path(path),
                reason: format!("\"es\" needs a string, found {}", describe(v)),
            });
        };
        *s = text::apply(s, &es).map_err(|reason| Json1Error::Text {
            path: fmt_path(path),
            reason,
        })?;
    }
    if let Some(n) = ena {
        let number_err = |reason: String| Json1Error::Number {
            path: fmt_path(path),
            reason,
        };
        let Value::Number(cur) = &*v else {
            return Err(number_err(format!(
                "\"ena\" needs a number, found {}",
                describe(v)
            )));
        };
        let sum = match (cur.as_i64(), n.as_i64()) {
            (Some(a), Some(b)) if a.checked_add(b).is_some() => Value::from(a + b),
            _ => {
                let (a, b) = (
                    cur.as_f64().unwrap_or(f64::NAN),
                    n.as_f64().unwrap_or(f64::NAN),
                );
                js_number(a + b).ok_or_else(|| number_err(format!("{cur} + {n} is not finite")))?
            }
        };
        *v = sum;
    }
    Ok(())
}

/// A JS number as JSON: integral values in the safe range are written as integers.
fn js_number(x: f64) -> Option<Value> {
    const SAFE: f64 = 9_007_199_254_740_991.0;
    if x.fract() == 0.0 && x.abs() <= SAFE {
        Some(Value::from(x as i64))
    } else {
        serde_json::Number::from_f64(x).map(Value::Number)
    }
}

// ---------------------------------------------------------------------------------------------
// Diff and equality

fn diff_into(node: &mut Node, old: &Value, new: &Value) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                match b.get(k) {
                    None => {
                        let child = node.children.entry(Key(k.clone())).or_default();
                        child.comp.r = Some(Value::Bool(true));
                    }
                    Some(vb) if !json_eq(va, vb) => {
                        diff_into(node.children.entry(Key(k.clone())).or_default(), va, vb)
                    }
                    Some(_) => {}
                }
            }
            for (k, vb) in b {
                if !a.contains_key(k) {
                    let child = node.children.entry(Key(k.clone())).or_default();
                    child.comp.i = Some(vb.clone());
                }
            }
        }
        (Value::String(a), Value::String(b)) => {
            let es = text::diff(a, b);
            if !es.is_empty() {
                node.comp.es = Some(es);
            }
        }
        _ => {
            node.comp.r = Some(Value::Bool(true));
            node.comp.i = Some(new.clone());
        }
    }
}

/// JSON equality as JS sees it: object key order ignored, numbers compared by value.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y
                || match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                    (Some(p), Some(q), _, _) => p == q,
                    (_, _, Some(p), Some(q)) => p == q,
                    _ => x.as_f64() == y.as_f64(),
                }
        }
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Exact structural equality, object key order included (what `JSON.stringify` would compare).
fn ordered_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| ordered_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k1, v1), (k2, v2))| k1 == k2 && ordered_eq(v1, v2))
        }
        _ => a == b,
    }
}

/// ot-text-unicode edit lists (`es`), counted in Unicode code points.
pub mod text {
    use serde_json::{Map, Value};
    use std::collections::HashMap;
    use std::ops::Range;

    /// One parsed `es` item.
    pub(super) enum Item<'a> {
        Skip(u64),
        Insert(&'a str),
        Delete(u64),
    }

    impl<'a> Item<'a> {
        pub(super) fn of(v: &'a Value) -> Option<Self> {
            match v {
                Value::Number(n) => n.as_u64().map(Item::Skip),
                Value::String(s) => Some(Item::Insert(s)),
                Value::Object(m) if m.len() == 1 => match m.get("d")? {
                    Value::Number(n) => n.as_u64().map(Item::Delete),
                    Value::String(s) => Some(Item::Delete(s.chars().count() as u64)),
                    _ => None,
                },
                _ => None,
            }
        }
    }

    /// Minimal es list (code points) turning `old` into `new`, for edits within lines (line-first
    /// diff, see the module docs); empty when equal. The list is
    /// normalized and, between two skips, holds at most one delete (`{"d": n}`) followed by at
    /// most one insert.
    pub fn diff(old: &str, new: &str) -> Vec<Value> {
        if old == new {
            return Vec::new();
        }
        let (ob, nb) = (old.as_bytes(), new.as_bytes());
        let mut pre = common_prefix(ob, nb);
        while !(old.is_char_boundary(pre) && new.is_char_boundary(pre)) {
            pre -= 1;
        }
        let max_suf = ob.len().min(nb.len()) - pre;
        let mut suf = common_suffix(&ob[pre..], &nb[pre..]).min(max_suf);
        while !(old.is_char_boundary(ob.len() - suf) && new.is_char_boundary(nb.len() - suf)) {
            suf -= 1;
        }
        let (old_mid, new_mid) = (&old[pre..ob.len() - suf], &new[pre..nb.len() - suf]);
        let mut out = Builder::default();
        out.skip(old[..pre].chars().count() as u64);
        let old_lines: Vec<&str> = old_mid.split_inclusive('\n').collect();
        let new_lines: Vec<&str> = new_mid.split_inclusive('\n').collect();
        if old_lines.len() <= 1 || new_lines.len() <= 1 {
            diff_chars(old_mid, new_mid, &mut out);
            return out.finish();
        }
        // Lines first, then code points inside each changed block. A code-point diff over a
        // whole file cost O(N·D) and was 95% of a fork's translation time (perf, `similar`'s
        // Myers); per line it is cheap and reads like the edit a person made.
        let chars = |lines: &[&str]| lines.iter().map(|l| l.chars().count() as u64).sum();
        let mut at = 0;
        for (o, n) in changes(imara_diff::Algorithm::Histogram, &old_lines, &new_lines) {
            out.skip(chars(&old_lines[at..o.start]));
            at = o.end;
            let (o, n) = (&old_lines[o], &new_lines[n]);
            if o.len() == n.len() {
                // Lines edited in place: refine each pair on its own.
                for (a, b) in o.iter().zip(n) {
                    diff_chars(a, b, &mut out);
                }
            } else {
                let (o, n) = (o.concat(), n.concat());
                if o.len().saturating_mul(n.len()) <= REWRITE_BLOCK {
                    diff_chars(&o, &n, &mut out);
                } else {
                    // Lines added and removed in bulk: a rewrite, not an edit. A code-point
                    // diff of it reads as noise and cost 40% of a fork's translation (perf).
                    out.delete(o.chars().count() as u64);
                    out.insert(&n.chars().collect::<Vec<_>>());
                }
            }
        }
        out.finish()
    }

    /// Above this many (old × new) bytes, a changed block whose line count changes is replaced
    /// whole rather than diffed by code point (about 128 × 128 characters).
    const REWRITE_BLOCK: usize = 1 << 14;

    /// Code-point diff of one changed block, appended to `out`. imara-diff's Myers with its
    /// preprocessing and early-abort heuristics (from git / GNU diff) keeps unrelated blocks near
    /// linear; for ordinary edits the result is the minimal one.
    fn diff_chars(old: &str, new: &str, out: &mut Builder) {
        let old: Vec<char> = old.chars().collect();
        let new: Vec<char> = new.chars().collect();
        let mut at = 0;
        for (o, n) in changes(imara_diff::Algorithm::Myers, &old, &new) {
            out.skip((o.start - at) as u64);
            at = o.end;
            out.delete(o.len() as u64);
            out.insert(&new[n]);
        }
        // The unchanged tail matters when another block follows.
        out.skip((old.len() - at) as u64);
    }

    /// The changed ranges (old, new) between two token sequences, in order.
    fn changes<T: std::hash::Hash + Eq + Copy>(
        algorithm: imara_diff::Algorithm,
        old: &[T],
        new: &[T],
    ) -> Vec<(Range<usize>, Range<usize>)> {
        let mut ids: HashMap<T, u32> = HashMap::new();
        let mut intern = |t: &T| {
            let next = ids.len() as u32;
            imara_diff::Token(*ids.entry(*t).or_insert(next))
        };
        let old_tokens: Vec<_> = old.iter().map(&mut intern).collect();
        let new_tokens: Vec<_> = new.iter().map(&mut intern).collect();
        let mut diff = imara_diff::Diff::default();
        diff.compute_with(algorithm, &old_tokens, &new_tokens, ids.len() as u32);
        diff.hunks()
            .map(|h| {
                (
                    h.before.start as usize..h.before.end as usize,
                    h.after.start as usize..h.after.end as usize,
                )
            })
            .collect()
    }

    fn common_prefix(a: &[u8], b: &[u8]) -> usize {
        const CHUNK: usize = 256;
        let n = a.len().min(b.len());
        let mut i = 0;
        while i + CHUNK <= n && a[i..i + CHUNK] == b[i..i + CHUNK] {
            i += CHUNK;
        }
        while i < n && a[i] == b[i] {
            i += 1;
        }
        i
    }

    fn common_suffix(a: &[u8], b: &[u8]) -> usize {
        const CHUNK: usize = 256;
        let n = a.len().min(b.len());
        let (la, lb) = (a.len(), b.len());
        let mut i = 0;
        while i + CHUNK <= n && a[la - i - CHUNK..la - i] == b[lb - i - CHUNK..lb - i] {
            i += CHUNK;
        }
        while i < n && a[la - i - 1] == b[lb - i - 1] {
            i += 1;
        }
        i
    }

    /// Accumulates a canonical es list: `[skip?, {d}?, insert?, skip, ...]`, no trailing skip.
    #[derive(Default)]
    struct Builder {
        out: Vec<Value>,
        skip: u64,
        del: u64,
        ins: String,
    }

    impl Builder {
        fn flush_edits(&mut self) {
            if self.del > 0 {
                let mut m = Map::new();
                m.insert("d".to_owned(), Value::from(self.del));
                self.out.push(Value::Object(m));
                self.del = 0;
            }
            if !self.ins.is_empty() {
                self.out.push(Value::String(std::mem::take(&mut self.ins)));
            }
        }
        fn flush_skip(&mut self) {
            if self.skip > 0 {
                self.out.push(Value::from(self.skip));
                self.skip = 0;
            }
        }
        fn skip(&mut self, n: u64) {
            if n > 0 {
                self.flush_edits();
                self.skip += n;
            }
        }
        fn delete(&mut self, n: u64) {
            if n > 0 {
                self.flush_skip();
                self.del += n;
            }
        }
        fn insert(&mut self, chars: &[char]) {
            if !chars.is_empty() {
                self.flush_skip();
                self.ins.extend(chars);
            }
        }
        fn finish(mut self) -> Vec<Value> {
            self.flush_edits();
            self.out
        }
    }

    /// Apply an es list to a string with ot-text-unicode semantics (code points). Zero-length
    /// items, adjacent items of one kind and a trailing skip are accepted; skipping or deleting past
    /// the end of the text is an error.
    pub fn apply(s: &str, es: &[Value]) -> Result<String, String> {
        let extra: usize = es.iter().map(|v| v.as_str().map_or(0, str::len)).sum();
        let mut out = String::with_capacity(s.len() + extra);
        let mut rest = s;
        let mut pos: u64 = 0; // code points of `s` consumed so far
        for (idx, item) in es.iter().enumerate() {
            match Item::of(item) {
                Some(Item::Skip(n)) => {
                    let b = advance(rest, n).ok_or_else(|| past_end(idx, "skip", n, pos, rest))?;
                    out.push_str(&rest[..b]);
                    rest = &rest[b..];
                    pos += n;
                }
                Some(Item::Insert(ins)) => out.push_str(ins),
                Some(Item::Delete(n)) => {
                    let b =
                        advance(rest, n).ok_or_else(|| past_end(idx, "delete", n, pos, rest))?;
                    rest = &rest[b..];
                    pos += n;
                }
                None => {
                    return Err(format!(
                        "es item {idx} ({item}) is not a skip (non-negative integer), an insert (string) or a delete ({{\"d\": n or string}})"
                    ))
                }
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    fn past_end(idx: usize, what: &str, n: u64, pos: u64, rest: &str) -> String {
        let len = pos + rest.chars().count() as u64;
        format!(
            "es item {idx}: {what} of {n} code points at code point {pos} goes past the end of the text ({len} code points)"
        )
    }

    /// Byte length of the first `n` code points of `s`, or `None` when `s` is shorter.
    fn advance(s: &str, n: u64) -> Option<usize> {
        if n == 0 {
            return Some(0);
        }
        let n = usize::try_from(n).ok()?;
        s.char_indices().nth(n - 1).map(|(i, c)| i + c.len_utf8())
    }

    /// Normalize an es list like ot-text-unicode's `normalize`: drop zero-length items, merge
    /// adjacent items of the same kind (deletes stay strings only when both are strings), drop a
    /// trailing skip. Items that are not valid es items are kept as they are.
    pub fn normalize(es: Vec<Value>) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::with_capacity(es.len());
        for item in es {
            let kind = kind_of(&item);
            match kind {
                Kind::Skip(0) | Kind::DelNum(0) => continue,
                Kind::Insert if item.as_str() == Some("") => continue,
                Kind::DelStr if item["d"].as_str() == Some("") => continue,
                _ => {}
            }
            let Some(last) = out.last_mut() else {
                out.push(item);
                continue;
            };
            match (kind_of(last), kind) {
                (Kind::Skip(a), Kind::Skip(b)) => *last = Value::from(a + b),
                (Kind::Insert, Kind::Insert) => {
                    if let (Value::String(a), Value::String(b)) = (&mut *last, &item) {
                        a.push_str(b);
                    }
                }
                (Kind::DelStr, Kind::DelStr) => {
                    if let (Some(Value::String(a)), Some(b)) =
                        (last.get_mut("d"), item["d"].as_str())
                    {
                        a.push_str(b);
                    }
                }
                (Kind::DelNum(_) | Kind::DelStr, Kind::DelNum(_) | Kind::DelStr) => {
                    let total = del_len(last) + del_len(&item);
                    if let Some(d) = last.get_mut("d") {
                        *d = Value::from(total);
                    }
                }
                _ => out.push(item),
            }
        }
        if matches!(out.last().map(kind_of), Some(Kind::Skip(_))) {
            out.pop();
        }
        out
    }

    #[derive(Clone, Copy)]
    enum Kind {
        Skip(u64),
        Insert,
        DelNum(u64),
        DelStr,
        Other,
    }

    fn kind_of(v: &Value) -> Kind {
        match v {
            Value::Number(n) => n.as_u64().map_or(Kind::Other, Kind::Skip),
            Value::String(_) => Kind::Insert,
            Value::Object(m) if m.len() == 1 => match m.get("d") {
                Some(Value::Number(n)) => n.as_u64().map_or(Kind::Other, Kind::DelNum),
                Some(Value::String(_)) => Kind::DelStr,
                _ => Kind::Other,
            },
            _ => Kind::Other,
        }
    }

    fn del_len(v: &Value) -> u64 {
        match &v["d"] {
            Value::Number(n) => n.as_u64().unwrap_or(0),
            Value::String(s) => s.chars().count() as u64,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn vectors() -> Value {
        let path = crate::fixtures::shared_dir().join("conformance/ot-vectors.json");
        let text = std::fs::read_to_string(path).expect("read ot-vectors.json");
        serde_json::from_str(&text).expect("parse ot-vectors.json")
    }

    fn content() -> Value {
        json!({
            "id": "v",
            "title": "Old",
            "height": 500,
            "files": {
                "a1b2c3d4": {"name": "index.html", "text": "hi 🐧 there"},
                "ffff0000": {"name": "README.md", "text": ""}
            }
        })
    }

    /// `normalize` output compared with key order (what JSON.stringify would compare).
    fn assert_ordered(actual: &Value, expected: &Value) {
        assert!(
            ordered_eq(actual, expected),
            "\n  actual: {actual}\nexpected: {expected}"
        );
    }

    fn norm(op: Value) -> Value {
        normalize(op).unwrap().unwrap_or(Value::Null)
    }

    // ------------------------------------------------------------------ conformance vectors

    #[test]
    fn json1_vectors_apply() {
        let v = vectors();
        let cases = v["json1"].as_array().unwrap();
        assert!(cases.len() >= 14);
        for c in cases {
            let name = c["name"].as_str().unwrap();
            let got = apply(c["doc"].clone(), &c["op"])
                .unwrap_or_else(|e| panic!("vector {name:?}: apply failed: {e}"));
            assert_eq!(got, c["result"], "vector {name:?}: apply(doc, op)");
            // The normalized op gives the same result.
            let got = apply(c["doc"].clone(), &c["normalized"]).unwrap();
            assert_eq!(got, c["result"], "vector {name:?}: apply(doc, normalized)");
        }
    }

    #[test]
    fn json1_vectors_apply_key_order_matches_js() {
        // Removed keys disappear in place and inserted/replaced keys go last, as in JS objects.
        let v = vectors();
        for c in v["json1"].as_array().unwrap() {
            let got = apply(c["doc"].clone(), &c["op"]).unwrap();
            assert_ordered(&got, &c["result"]);
        }
    }

    #[test]
    fn json1_vectors_normalize() {
        let v = vectors();
        for c in v["json1"].as_array().unwrap() {
            let name = c["name"].as_str().unwrap();
            let got = normalize(c["op"].clone())
                .unwrap_or_else(|e| panic!("vector {name:?}: normalize failed: {e}"))
                .unwrap_or(Value::Null);
            assert!(
                ordered_eq(&got, &c["normalized"]),
                "vector {name:?}: normalize gave {got}, expected {}",
                c["normalized"]
            );
            // Normalizing is idempotent.
            assert!(
                is_normalized(&got),
                "vector {name:?}: normalized op not normalized"
            );
        }
    }

    #[test]
    fn json1_vectors_is_normalized() {
        let v = vectors();
        let mut falses = 0;
        for c in v["json1"].as_array().unwrap() {
            let name = c["name"].as_str().unwrap();
            let expected = c["isNormalized"].as_bool().unwrap();
            falses += usize::from(!expected);
            assert_eq!(is_normalized(&c["op"]), expected, "vector {name:?}");
        }
        assert!(falses >= 3, "the vectors include non-normalized ops");
    }

    #[test]
    fn text_unicode_vectors_apply() {
        let v = vectors();
        let cases = v["textUnicode"].as_array().unwrap();
        assert!(cases.len() >= 5);
        for c in cases {
            let doc = c["doc"].as_str().unwrap();
            let got = text::apply(doc, c["op"].as_array().unwrap()).unwrap();
            assert_eq!(got, c["result"].as_str().unwrap(), "textUnicode {c}");
            // The same edit embedded in json1.
            let op = json!(["t", {"es": c["op"]}]);
            let got = apply(json!({"t": doc}), &op).unwrap();
            assert_eq!(got, json!({"t": c["result"]}));
        }
    }

    // ------------------------------------------------------------------ normalize (outputs recorded from ot-json1 1.0.2)

    #[test]
    fn normalize_matches_ot_json1() {
        let cases = [
            (json!(["t", {"es": []}]), json!(null)),
            (json!(["t", {"ena": 0}]), json!(["t", {"ena": 0}])),
            (json!(["t", {}]), json!(null)),
            (
                json!(["t", {"r": true}, "a", {"i": 2}]),
                json!(["t", {"r": true}, "a", {"i": 2}]),
            ),
            (
                json!([["t", {"r": true}], ["t", {"i": 2}]]),
                json!(["t", {"r": true, "i": 2}]),
            ),
            (
                json!([["t", ["a", {"r": true}]], ["t", ["b", {"r": true}]]]),
                json!(["t", ["a", {"r": true}], ["b", {"r": true}]]),
            ),
            (
                json!([["t", ["a", {"r": true}]], ["t", "a", {"i": 1}]]),
                json!(["t", "a", {"r": true, "i": 1}]),
            ),
            (
                json!(["t", ["a", {"r": true}]]),
                json!(["t", "a", {"r": true}]),
            ),
            (json!([["t", {"r": true}]]), json!(["t", {"r": true}])),
            (json!([[["t", {"r": true}]]]), json!(["t", {"r": true}])),
            (
                json!([["a", {"r": true}], ["B", {"r": true}], ["é", {"r": true}], ["😀", {"r": true}], ["\u{ffff}", {"r": true}]]),
                json!([["B", {"r": true}], ["a", {"r": true}], ["é", {"r": true}], ["😀", {"r": true}], ["\u{ffff}", {"r": true}]]),
            ),
            (
                json!([{"r": true}, ["a", {"r": true}]]),
                json!([{"r": true}, "a", {"r": true}]),
            ),
            (
                json!(["t", {"es": [{"d": "ab"}, {"d": 1}, {"d": "c"}, "x", "", 0, "y", 3, 0]}]),
                json!(["t", {"es": [{"d": 4}, "xy"]}]),
            ),
            (
                json!(["t", {"es": [{"d": "ab"}, {"d": "c"}, {"d": 0}, {"d": ""}]}]),
                json!(["t", {"es": [{"d": "abc"}]}]),
            ),
            (json!(["t", {"es": [3]}]), json!(null)),
            (json!([]), json!(null)),
            (json!([[]]), json!(null)),
            (json!(["a", "b"]), json!(null)),
            (
                json!(["t", {"i": 1, "r": true, "es": ["x"]}]),
                json!(["t", {"es": ["x"], "r": true, "i": 1}]),
            ),
            (json!(["t", {"i": null}]), json!(["t", {"i": null}])),
            (
                json!(["title", {"i": "B", "r": "Old"}]),
                json!(["title", {"r": "Old", "i": "B"}]),
            ),
            (json!(null), json!(null)),
        ];
        for (op, expected) in cases {
            let got = norm(op.clone());
            assert!(
                ordered_eq(&got, &expected),
                "normalize({op}) = {got}, expected {expected}"
            );
            assert!(is_normalized(&got), "{got} should be normalized");
            assert_eq!(
                is_normalized(&op),
                ordered_eq(&op, &expected),
                "is_normalized({op})"
            );
        }
    }

    #[test]
    fn normalize_keeps_three_way_descents_sorted_and_nested() {
        let op = json!([
            ["title", {"r": true, "i": "x"}],
            ["files", ["ffff0000", {"r": true}], ["a1b2c3d4", "text", {"es": [0, "x", 0]}]],
            ["height", {"r": true, "i": 1}]
        ]);
        let expected = json!([
            ["files", ["a1b2c3d4", "text", {"es": ["x"]}], ["ffff0000", {"r": true}]],
            ["height", {"r": true, "i": 1}],
            ["title", {"r": true, "i": "x"}]
        ]);
        assert_ordered(&norm(op.clone()), &expected);
        assert!(!is_normalized(&op));
        assert!(is_normalized(&expected));
    }

    #[test]
    fn normalize_errors_say_where_and_why() {
        let err = normalize(json!({"r": true})).unwrap_err();
        assert!(matches!(err, Json1Error::Malformed { .. }));
        assert!(
            err.to_string().contains("must be null or an array"),
            "{err}"
        );

        let err = normalize(json!(["files", "a", {"x": 1}])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed json1 op at [\"files\",\"a\"]: unknown component key \"x\""
        );

        let err = normalize(json!(["t", {"es": [1, -2]}])).unwrap_err();
        assert!(err.to_string().contains("\"es\" item 1 (-2)"), "{err}");
        assert!(normalize(json!(["t", {"es": [{"d": true}]}])).is_err());
        assert!(normalize(json!(["t", {"es": "x"}])).is_err());
        assert!(normalize(json!(["t", {"ena": "1"}])).is_err());
        assert!(normalize(json!(["t", {"es": ["x"], "ena": 1}])).is_err());
        assert!(normalize(json!([["t", {"i": 1}], ["t", {"i": 2}]])).is_err());
        assert!(normalize(json!(["__proto__", {"i": 1}])).is_err());
        assert!(normalize(json!(["t", true])).is_err());

        let err = normalize(json!(["files", 0, {"r": true}])).unwrap_err();
        assert!(matches!(err, Json1Error::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("list index 0"), "{err}");
        let err = normalize(json!([["a", {"p": 0}], ["b", {"d": 0}]])).unwrap_err();
        assert!(err.to_string().contains("moves"), "{err}");
        let err = normalize(json!(["a", {"et": "rich-text", "e": []}])).unwrap_err();
        assert!(matches!(err, Json1Error::Unsupported { .. }), "{err}");

        assert!(!is_normalized(&json!(["files", 0, {"r": true}])));
        assert!(!is_normalized(&json!("x")));
        // Merging identical removes is fine (ot-json1 allows `true === true`).
        assert_ordered(
            &norm(json!([["t", {"r": true}], ["t", {"r": true}]])),
            &json!(["t", {"r": true}]),
        );
    }

    #[test]
    fn utf16_key_order() {
        let mut keys = vec![
            "\u{ffff}",
            "😀",
            "é",
            "a",
            "B",
            "",
            "ab",
            "a\u{10000}",
            "a\u{fffd}",
        ];
        keys.sort_by(|a, b| utf16_cmp(a, b));
        assert_eq!(
            keys,
            vec![
                "",
                "B",
                "a",
                "ab",
                "a\u{10000}",
                "a\u{fffd}",
                "é",
                "😀",
                "\u{ffff}"
            ]
        );
    }

    // ------------------------------------------------------------------ apply

    #[test]
    fn apply_nested_and_mixed() {
        let doc = content();
        let op = json!([
            ["files", ["a1b2c3d4", "text", {"es": [3, {"d": 1}, "🐱", 2, {"d": "here"}, "ey"]}], ["ffff0000", "name", {"r": true, "i": "notes.md"}], ["new00000", {"i": {"name": "a.js", "text": ""}}]],
            ["height", {"ena": -20}],
            ["id", {"r": true}]
        ]);
        let got = apply(doc, &op).unwrap();
        let expected = json!({
            "title": "Old",
            "height": 480,
            "files": {
                "a1b2c3d4": {"name": "index.html", "text": "hi 🐱 tey"},
                "ffff0000": {"text": "", "name": "notes.md"},
                "new00000": {"name": "a.js", "text": ""}
            }
        });
        assert_ordered(&got, &expected);
    }

    #[test]
    fn apply_insert_then_edit_and_nested_insert_into_inserted() {
        // Insert and edit in one component: the edit applies to the inserted value.
        let got = apply(json!({}), &json!(["u", {"i": "q", "es": ["z"]}])).unwrap();
        assert_eq!(got, json!({"u": "zq"}));
        // Replace with an object, then insert inside it (drop phase goes top-down).
        let got = apply(
            json!({"t": {"a": 1}}),
            &json!(["t", {"r": true, "i": {}}, "a", {"i": 2}]),
        )
        .unwrap();
        assert_eq!(got, json!({"t": {"a": 2}}));
        // Insert into a missing key of an existing object.
        let got = apply(
            json!({"files": {}}),
            &json!(["files", "x", {"i": {"name": "n"}}]),
        )
        .unwrap();
        assert_eq!(got, json!({"files": {"x": {"name": "n"}}}));
        // Insert null, remove null.
        let got = apply(json!({}), &json!(["n", {"i": null}])).unwrap();
        assert_eq!(got, json!({"n": null}));
        let got = apply(got, &json!(["n", {"r": true}])).unwrap();
        assert_eq!(got, json!({}));
        // Any r value removes.
        assert_eq!(
            apply(json!({"t": 1}), &json!(["t", {"r": false}])).unwrap(),
            json!({})
        );
    }

    #[test]
    fn apply_root_components_and_numbers() {
        assert_eq!(
            apply(json!({"t": "a"}), &json!([{"r": true, "i": 5}])).unwrap(),
            json!(5)
        );
        assert_eq!(
            apply(json!("abc"), &json!([{"es": [1, "X"]}])).unwrap(),
            json!("aXbc")
        );
        assert_eq!(apply(json!(1), &json!([{"ena": 1.5}])).unwrap(), json!(2.5));
        assert_eq!(apply(json!(1.5), &json!([{"ena": 1.5}])).unwrap(), json!(3));
        assert_eq!(
            apply(json!(i64::MAX), &json!([{"ena": 1}])).unwrap(),
            json!(9.223372036854776e18)
        );
        assert_eq!(
            apply(json!({"n": 2}), &json!(["n", {"ena": 0}])).unwrap(),
            json!({"n": 2})
        );
        assert_eq!(
            apply(json!({"n": 2}), &Value::Null).unwrap(),
            json!({"n": 2})
        );
        assert_eq!(
            apply(json!({"n": 2}), &json!(["n", {"es": []}])).unwrap(),
            json!({"n": 2})
        );
        assert_eq!(
            apply(json!({"t": "a"}), &json!([{"r": true}])).unwrap_err(),
            Json1Error::RootRemoved
        );
        assert!(matches!(
            apply(json!({}), &json!([{"i": 1}])).unwrap_err(),
            Json1Error::AlreadyExists { .. }
        ));
    }

    #[test]
    fn apply_errors_have_useful_messages() {
        let doc = content();
        let check = |op: Value, expected: &str| {
            let err = apply(content(), &op).unwrap_err();
            assert_eq!(err.to_string(), expected, "op {op}");
        };
        check(
            json!(["files", "zzzzzzzz", "text", {"es": ["x"]}]),
            "cannot apply json1 op at [\"files\",\"zzzzzzzz\"]: no value here, but the op inserts or edits something below it",
        );
        check(
            json!(["files", "zzzzzzzz", "text", {"r": true}]),
            "cannot apply json1 op at [\"files\",\"zzzzzzzz\"]: no value here, but the op removes something below it",
        );
        check(
            json!(["title", "x", {"i": 1}]),
            "cannot apply json1 op at [\"title\"]: the op descends into it but it is a string of 3 code points, not an object",
        );
        check(
            json!(["height", "x", {"r": true}]),
            "cannot apply json1 op at [\"height\"]: the op descends into it but it is the number 500, not an object",
        );
        check(
            json!(["nope", {"r": true}]),
            "cannot apply json1 op at [\"nope\"]: remove (\"r\") of a missing key",
        );
        check(
            json!(["title", {"i": "New"}]),
            "cannot apply json1 op at [\"title\"]: insert onto an existing value (the component needs \"r\" to replace it)",
        );
        check(
            json!(["height", {"es": ["x"]}]),
            "cannot apply json1 text edit at [\"height\"]: \"es\" needs a string, found the number 500",
        );
        check(
            json!(["files", "a1b2c3d4", "text", {"es": [12, "x"]}]),
            "cannot apply json1 text edit at [\"files\",\"a1b2c3d4\",\"text\"]: es item 0: skip of 12 code points at code point 0 goes past the end of the text (10 code points)",
        );
        check(
            json!(["files", "a1b2c3d4", "text", {"es": [4, {"d": 8}]}]),
            "cannot apply json1 text edit at [\"files\",\"a1b2c3d4\",\"text\"]: es item 1: delete of 8 code points at code point 4 goes past the end of the text (10 code points)",
        );
        check(
            json!(["title", {"ena": 1}]),
            "cannot apply json1 number add at [\"title\"]: \"ena\" needs a number, found a string of 3 code points",
        );
        check(
            json!(["title", {"r": true}, "x", {"i": 1}]),
            "cannot apply json1 op at [\"title\"]: no value here, but the op inserts or edits something below it",
        );
        check(
            json!(["nope", {"ena": 1}]),
            "cannot apply json1 op at [\"nope\"]: edit (\"es\"/\"ena\") of a missing key",
        );
        // Malformed / unsupported ops are reported, not applied.
        assert!(matches!(
            apply(doc.clone(), &json!(5)).unwrap_err(),
            Json1Error::Malformed { .. }
        ));
        assert!(matches!(
            apply(doc, &json!(["files", 0, {"r": true}])).unwrap_err(),
            Json1Error::Unsupported { .. }
        ));
        // Error messages from text::apply.
        assert_eq!(
            text::apply("a🐧", &[json!(1), json!({"d": 2})]).unwrap_err(),
            "es item 1: delete of 2 code points at code point 1 goes past the end of the text (2 code points)"
        );
        assert!(text::apply("a", &[json!(true)])
            .unwrap_err()
            .contains("es item 0 (true)"));
        assert!(text::apply("a", &[json!(-1)]).is_err());
    }

    #[test]
    fn apply_leaves_untouched_subtrees_and_paths_without_edits_alone() {
        // A descent through a missing key with nothing to do there is a no-op, like ot-json1.
        let got = apply(json!({"a": 1}), &json!(["a", {"ena": 1}])).unwrap();
        assert_eq!(got, json!({"a": 2}));
        let got = apply(json!({"a": 1}), &json!([["a", {"ena": 1}], ["b", "c", {}]])).unwrap();
        assert_eq!(got, json!({"a": 2}));
    }

    // ------------------------------------------------------------------ text

    #[test]
    fn text_apply_semantics() {
        assert_eq!(
            text::apply("hi 🐧 there", &[json!(4), json!("!")]).unwrap(),
            "hi 🐧! there"
        );
        assert_eq!(
            text::apply("abc", &[json!({"d": "xy"}), json!("Z")]).unwrap(),
            "Zc"
        );
        // Lenient about shape: zero skips, trailing and adjacent skips, empty items.
        assert_eq!(
            text::apply(
                "abcdef",
                &[
                    json!(0),
                    json!(1),
                    json!(1),
                    json!(""),
                    json!({"d": 0}),
                    json!("X"),
                    json!(2)
                ]
            )
            .unwrap(),
            "abXcdef"
        );
        assert_eq!(text::apply("", &[]).unwrap(), "");
        assert_eq!(text::apply("ab", &[json!(2), json!("c")]).unwrap(), "abc");
        assert_eq!(
            text::apply("\u{10FFFF}\u{FFFF}x", &[json!(2), json!({"d": 1})]).unwrap(),
            "\u{10FFFF}\u{FFFF}"
        );
    }

    #[test]
    fn text_normalize_rules() {
        let n = |v: Value| Value::Array(text::normalize(v.as_array().unwrap().clone()));
        assert_eq!(n(json!([0, "x", 5])), json!(["x"]));
        assert_eq!(
            n(json!([1, 2, "a", "b", {"d": 1}, {"d": 2}, 3, 0])),
            json!([3, "ab", {"d": 3}])
        );
        assert_eq!(n(json!([{"d": "ab"}, {"d": "🐧"}])), json!([{"d": "ab🐧"}]));
        assert_eq!(n(json!([{"d": "ab"}, {"d": 1}])), json!([{"d": 3}]));
        assert_eq!(n(json!([{"d": 1}, {"d": "🐧x"}])), json!([{"d": 3}]));
        assert_eq!(n(json!([5])), json!([]));
        assert_eq!(n(json!([])), json!([]));
        assert_eq!(n(json!(["", {"d": ""}, {"d": 0}, 0])), json!([]));
        // Not merged across kinds, order kept.
        assert_eq!(n(json!(["a", {"d": 1}, "b"])), json!(["a", {"d": 1}, "b"]));
    }

    #[test]
    fn text_diff_examples() {
        assert!(text::diff("", "").is_empty());
        assert!(text::diff("same 🐧", "same 🐧").is_empty());
        assert_eq!(text::diff("", "new"), vec![json!("new")]);
        assert_eq!(text::diff("old", ""), vec![json!({"d": 3})]);
        assert_eq!(
            text::diff("Dancing 🐧", "Dancing 🐧!"),
            vec![json!(9), json!("!")]
        );
        assert_eq!(
            text::diff("Dancing 🐧 here", "Dancing 🐧! here"),
            vec![json!(9), json!("!")]
        );
        assert_eq!(text::diff("🐧🐧", "🐧🐱🐧"), vec![json!(1), json!("🐱")]);
        assert_eq!(text::diff("a🐧b", "ab"), vec![json!(1), json!({"d": 1})]);
        // Same leading UTF-8 byte, different chars: boundaries respected.
        assert_eq!(text::diff("é", "ê"), vec![json!({"d": 1}), json!("ê")]);
        assert_eq!(
            text::diff("x😀", "x😁"),
            vec![json!(1), json!({"d": 1}), json!("😁")]
        );
        assert_eq!(text::diff("😀x", "😁x"), vec![json!({"d": 1}), json!("😁")]);
        assert_eq!(
            text::diff("hello world", "hello, world"),
            vec![json!(5), json!(",")]
        );
        assert_eq!(text::diff("abcabc", "abc"), vec![json!(3), json!({"d": 3})]);
        // Replace inside: delete before insert between skips.
        assert_eq!(
            text::diff("a🐧c", "aXc"),
            vec![json!(1), json!({"d": 1}), json!("X")]
        );
        for (a, b) in [
            ("kitten", "sitting"),
            ("🐧a🐧b", "b🐧a"),
            ("\u{FFFF}\u{10000}", "\u{10000}\u{FFFF}"),
        ] {
            let es = text::diff(a, b);
            assert_eq!(text::apply(a, &es).unwrap(), b);
            assert_eq!(text::normalize(es.clone()), es);
        }
    }

    #[test]
    fn text_diff_large_texts_are_fast_and_correct() {
        // 5 MiB with an edit in the middle: prefix/suffix stripping keeps this linear.
        let base: String =
            "function f(x) { return x * 2; } // 🐧 ünïcödé\n".repeat(5 * 1024 * 1024 / 50);
        let mid = base.len() / 2;
        let mid = (mid..).find(|&i| base.is_char_boundary(i)).unwrap();
        let end = (mid + 10..).find(|&i| base.is_char_boundary(i)).unwrap();
        let edited = format!("{}🐱 inserted{}", &base[..mid], &base[end..]);
        let start = std::time::Instant::now();
        let es = text::diff(&base, &edited);
        assert!(es.len() <= 6, "{es:?}");
        assert_eq!(text::apply(&base, &es).unwrap(), edited);
        let op = diff(&json!({"t": base}), &json!({"t": edited})).unwrap();
        assert!(is_normalized(&op));
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn text_diff_unrelated_texts_stay_fast_and_correct() {
        // Two unrelated pseudo-random texts: plain Myers would be quadratic, the heuristics cap it.
        let mut seed = 12345u64;
        let mut gen = |n: usize| -> String {
            (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ['a', 'b', 'c', 'd', '🐧', 'é', '\n', ' '][(seed >> 60) as usize % 8]
                })
                .collect()
        };
        let (a, b) = (gen(60_000), gen(60_000));
        let start = std::time::Instant::now();
        let es = text::diff(&a, &b);
        let took = start.elapsed();
        assert_eq!(text::apply(&a, &es).unwrap(), b);
        assert_eq!(text::normalize(es.clone()), es);
        assert!(took < std::time::Duration::from_secs(30), "{took:?}");
    }

    // ------------------------------------------------------------------ diff (spec examples)

    #[test]
    fn diff_from_empty_gives_full_content_exactly() {
        let new = json!({"id": "v", "title": "T", "height": 500, "files": {}});
        let op = diff(&json!({}), &new).unwrap();
        assert_eq!(
            serde_json::to_string(&op).unwrap(),
            r#"[["files",{"i":{}}],["height",{"i":500}],["id",{"i":"v"}],["title",{"i":"T"}]]"#
        );
        assert_eq!(apply(json!({}), &op).unwrap(), new);
    }

    #[test]
    fn diff_spec_examples() {
        let old = content();
        let mut new = old.clone();
        new["files"]["00000001"] = json!({"name": "index.js", "text": "x"});
        let op = diff(&old, &new).unwrap();
        assert_ordered(
            &op,
            &json!(["files", "00000001", {"i": {"name": "index.js", "text": "x"}}]),
        );

        let mut new = old.clone();
        new["files"]
            .as_object_mut()
            .unwrap()
            .shift_remove("ffff0000");
        assert_ordered(
            &diff(&old, &new).unwrap(),
            &json!(["files", "ffff0000", {"r": true}]),
        );

        // Rename: names are strings, so the rename is a text edit of the name (the rule for all
        // strings); applying the spec's replace form gives the same document.
        let mut new = old.clone();
        new["files"]["ffff0000"]["name"] = json!("notes.md");
        let op = diff(&old, &new).unwrap();
        assert_ordered(
            &op,
            &json!(["files", "ffff0000", "name", {"es": [{"d": 6}, "notes"]}]),
        );
        assert_eq!(apply(old.clone(), &op).unwrap(), new);
        let spec_form = json!(["files", "ffff0000", "name", {"r": true, "i": "notes.md"}]);
        assert_eq!(apply(old.clone(), &spec_form).unwrap(), new);

        // Title (string: text edit) and height (number: replace).
        let mut new = old.clone();
        new["title"] = json!("New");
        new["height"] = json!(960);
        let op = diff(&old, &new).unwrap();
        assert_ordered(
            &op,
            &json!([["height", {"r": true, "i": 960}], ["title", {"es": [{"d": 3}, "New"]}]]),
        );
        assert_eq!(apply(old.clone(), &op).unwrap(), new);

        let old = json!({"title": "Dancing 🐧", "files": {"a1b2c3d4": {"name": "index.html", "text": "<h1>Dancing 🐧</h1>"}}});
        let mut new = old.clone();
        new["files"]["a1b2c3d4"]["text"] = json!("<h1>Dancing 🐧🐧</h1>");
        let op = diff(&old, &new).unwrap();
        // 13 code points ("<h1>Dancing 🐧"); UTF-16 would count 14.
        assert_ordered(
            &op,
            &json!(["files", "a1b2c3d4", "text", {"es": [13, "🐧"]}]),
        );
        assert_eq!(apply(old.clone(), &op).unwrap(), new);
        assert_eq!(
            edit_text(
                &["files", "a1b2c3d4", "text"],
                "<h1>Dancing 🐧</h1>",
                "<h1>Dancing 🐧🐧</h1>"
            ),
            Some(op)
        );

        // Several edits at once, sorted, with a removal and a text edit.
        let old = content();
        let mut new = old.clone();
        new["files"]["a1b2c3d4"]["text"] = json!("<!-- x -->hi 🐧 there");
        new["files"]
            .as_object_mut()
            .unwrap()
            .shift_remove("ffff0000");
        new["title"] = json!("Older");
        assert_ordered(
            &diff(&old, &new).unwrap(),
            &json!([["files", ["a1b2c3d4", "text", {"es": ["<!-- x -->"]}], ["ffff0000", {"r": true}]], ["title", {"es": [3, "er"]}]]),
        );

        assert_eq!(diff(&old, &old.clone()), None);
        assert_eq!(diff(&json!({}), &json!({})), None);
        assert_eq!(diff(&json!({"h": 500}), &json!({"h": 500.0})), None);
    }

    #[test]
    fn diff_replaces_type_changes_arrays_and_roots() {
        let op = diff(
            &json!({"a": [1, 2], "b": null, "c": {"x": 1}, "d": 1}),
            &json!({"a": [1, 3], "b": 0, "c": "s", "d": "1"}),
        )
        .unwrap();
        assert_ordered(
            &op,
            &json!([["a", {"r": true, "i": [1, 3]}], ["b", {"r": true, "i": 0}], ["c", {"r": true, "i": "s"}], ["d", {"r": true, "i": "1"}]]),
        );
        assert_ordered(
            &diff(&json!([1]), &json!({"a": 1})).unwrap(),
            &json!([{"r": true, "i": {"a": 1}}]),
        );
        assert_ordered(
            &diff(&json!(null), &json!({})).unwrap(),
            &json!([{"r": true, "i": {}}]),
        );
        assert_ordered(
            &diff(&json!("ab"), &json!("abc")).unwrap(),
            &json!([{"es": [2, "c"]}]),
        );
        assert_eq!(
            apply(json!([1]), &diff(&json!([1]), &json!({"a": 1})).unwrap()).unwrap(),
            json!({"a": 1})
        );
        // Keys sorted in UTF-16 order, nested objects recurse.
        let op = diff(&json!({}), &json!({"😀": 1, "\u{ffff}": 2, "a": {"b": 1}})).unwrap();
        assert_ordered(
            &op,
            &json!([["a", {"i": {"b": 1}}], ["😀", {"i": 1}], ["\u{ffff}", {"i": 2}]]),
        );
        let op = diff(
            &json!({"a": {"b": 1, "c": 2}}),
            &json!({"a": {"b": 2, "c": 2, "d": 3}}),
        )
        .unwrap();
        assert_ordered(
            &op,
            &json!(["a", ["b", {"r": true, "i": 2}], ["d", {"i": 3}]]),
        );
    }

    // ------------------------------------------------------------------ builders and compose

    #[test]
    fn builders() {
        assert_ordered(
            &insert(&["files", "x"], json!({"name": "a"})),
            &json!(["files", "x", {"i": {"name": "a"}}]),
        );
        assert_ordered(
            &remove(&["files", "x"]),
            &json!(["files", "x", {"r": true}]),
        );
        assert_ordered(
            &replace(&["title"], json!("T")),
            &json!(["title", {"r": true, "i": "T"}]),
        );
        assert_ordered(&replace(&[], json!({})), &json!([{"r": true, "i": {}}]));
        assert_eq!(edit_text(&["t"], "a", "a"), None);
        assert_ordered(
            &edit_text(&["t"], "", "🐧").unwrap(),
            &json!(["t", {"es": ["🐧"]}]),
        );
        assert_eq!(add_number(&["n"], 0), None);
        assert_ordered(&add_number(&["n"], -3).unwrap(), &json!(["n", {"ena": -3}]));
        for op in [
            insert(&["a"], json!(1)),
            remove(&["a"]),
            replace(&["a"], json!(null)),
            edit_text(&["a", "b"], "x🐧", "🐧").unwrap(),
            add_number(&["a"], 7).unwrap(),
        ] {
            assert!(is_normalized(&op), "{op}");
        }
    }

    #[test]
    fn compose_on_diffs_start_and_end() {
        let doc = content();
        let ops = vec![
            edit_text(
                &["files", "a1b2c3d4", "text"],
                "hi 🐧 there",
                "hi 🐧 there!",
            )
            .unwrap(),
            Value::Null,
            replace(&["title"], json!("Mid")),
            replace(&["title"], json!("Old")),
            insert(&["files", "00000001"], json!({"name": "tmp", "text": ""})),
            remove(&["files", "00000001"]),
            edit_text(
                &["files", "a1b2c3d4", "text"],
                "hi 🐧 there!",
                "hey 🐧 there!",
            )
            .unwrap(),
        ];
        let op = compose_on(&doc, &ops).unwrap().unwrap();
        assert_ordered(
            &op,
            &json!(["files", "a1b2c3d4", "text", {"es": [1, {"d": 1}, "ey", 8, "!"]}]),
        );
        let mut seq = doc.clone();
        for o in &ops {
            seq = apply(seq, o).unwrap();
        }
        assert_eq!(apply(doc.clone(), &op).unwrap(), seq);
        // Changes that cancel out compose to no op.
        assert_eq!(compose_on(&doc, &ops[2..4]).unwrap(), None);
        assert_eq!(compose_on(&doc, &[]).unwrap(), None);
        // A failing op is reported.
        assert!(compose_on(&doc, &[remove(&["nope"])]).is_err());
    }

    // ------------------------------------------------------------------ properties

    fn text_strategy() -> impl Strategy<Value = String> {
        let chars = prop::sample::select(vec![
            'a',
            'b',
            'c',
            ' ',
            '\n',
            '<',
            '>',
            'é',
            'ß',
            '中',
            '🐧',
            '🐱',
            '😀',
            '\u{FFFF}',
            '\u{E000}',
            '\u{10000}',
            '\u{10FFFF}',
            '\u{200D}',
        ]);
        prop::collection::vec(chars, 0..24).prop_map(|v| v.into_iter().collect())
    }

    fn file_strategy() -> impl Strategy<Value = Value> {
        (
            prop::sample::select(vec!["index.html", "index.js", "README.md", "🐧.txt"]),
            text_strategy(),
        )
            .prop_map(|(name, text)| json!({"name": name, "text": text}))
    }

    fn content_strategy() -> impl Strategy<Value = Value> {
        let key = prop::sample::select(vec![
            "0000000a", "0000000b", "a1b2c3d4", "ffff0000", "deadbeef",
        ]);
        let height = prop_oneof![
            (0i64..3).prop_map(|h| json!(400 + h * 100)),
            Just(json!(null)),
            Just(json!("500")),
        ];
        (
            prop::sample::select(vec!["v", "w"]),
            text_strategy(),
            prop::option::of(height),
            prop::collection::btree_map(key, file_strategy(), 0..5),
        )
            .prop_map(|(id, title, height, files)| {
                let mut doc = json!({"id": id, "title": title});
                if let Some(h) = height {
                    doc["height"] = h;
                }
                let files: Map<String, Value> =
                    files.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                doc["files"] = Value::Object(files);
                doc
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn prop_diff_roundtrips(a in content_strategy(), b in content_strategy()) {
            match diff(&a, &b) {
                None => prop_assert!(json_eq(&a, &b)),
                Some(op) => {
                    prop_assert!(is_normalized(&op), "not normalized: {}", op);
                    let got = apply(a.clone(), &op).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(&got, &b, "op {}", op);
                    // The result diffs back to nothing.
                    prop_assert_eq!(diff(&got, &b), None);
                }
            }
            prop_assert_eq!(diff(&a, &a), None);
            prop_assert_eq!(diff(&b, &b.clone()), None);
        }

        #[test]
        fn prop_compose_on_matches_sequential_apply(a in content_strategy(), b in content_strategy(), c in content_strategy()) {
            let ops: Vec<Value> = [diff(&a, &b), diff(&b, &c)].into_iter().map(|o| o.unwrap_or(Value::Null)).collect();
            let composed = compose_on(&a, &ops).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got = apply(a.clone(), composed.as_ref().unwrap_or(&Value::Null)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got, c);
        }

        #[test]
        fn prop_text_diff_roundtrips(a in text_strategy(), b in text_strategy()) {
            let es = text::diff(&a, &b);
            prop_assert_eq!(text::apply(&a, &es).unwrap(), b.clone());
            prop_assert_eq!(text::normalize(es.clone()), es.clone());
            prop_assert_eq!(es.is_empty(), a == b);
            if let Some(Value::Number(_)) = es.last() {
                prop_assert!(false, "trailing skip");
            }
            // No skip exceeds the text, deletes and skips cover at most the old length.
            let consumed: u64 = es.iter().map(|v| v.as_u64().unwrap_or_else(|| v["d"].as_u64().unwrap_or(0))).sum();
            prop_assert!(consumed <= a.chars().count() as u64);
        }

        #[test]
        fn prop_normalize_is_idempotent_and_preserves_apply(a in content_strategy(), b in content_strategy()) {
            // Denormalize a diff (wrap descents, add zero skips), then normalize it back.
            if let Some(op) = diff(&a, &b) {
                let wrapped = json!([[op.clone()]]);
                let back = normalize(wrapped.clone()).unwrap().unwrap();
                prop_assert!(ordered_eq(&back, &op), "{} vs {}", back, op);
                prop_assert_eq!(apply(a.clone(), &wrapped).unwrap(), b);
            }
        }
    }
}
