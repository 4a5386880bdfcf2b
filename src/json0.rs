//! Strict apply / invert of ShareDB **json0** operations, as stored by VizHub V2 in
//! `o_documentContent` (see MIGRATION.md §1.4).
//!
//! An op is an array of *components*; each component has a path `p` (object keys and list
//! indices / string offsets) and one action:
//!
//! | fields      | action                                                   |
//! |-------------|----------------------------------------------------------|
//! | `si`        | insert a string at `[..., string, offset]`               |
//! | `sd`        | delete a string at `[..., string, offset]`               |
//! | `li`        | insert a list element at `[..., list, index]`            |
//! | `ld`        | delete a list element at `[..., list, index]`            |
//! | `ld` + `li` | replace a list element                                   |
//! | `oi`        | insert an object key at `[..., object, key]`             |
//! | `od`        | delete an object key                                     |
//! | `od` + `oi` | replace an object key (with `p: []`: replace the root)   |
//! | `na`        | add a number to the number at `p`                        |
//!
//! Not supported (rejected by [`parse_op`] and [`apply`]): `lm` (list move), `t`/`o`
//! (embedded subtypes) and any other field. V2 never produced them.
//!
//! **String offsets count UTF-16 code units** (JavaScript string indices), as ot-json0 ran in the
//! browser: `si` at offset 3 in `"x🐧y"` inserts after the emoji. Offsets are converted to byte
//! offsets by walking the string (no UTF-16 copy is made; ASCII prefixes take a fast path).
//!
//! **Strictness.** ot-json0 itself is lenient (it clamps out-of-range offsets and overwrites
//! without checking deleted values). Here every component must be exactly consistent with the
//! document, so that corrupt or truncated history is detected and the caller can fall back:
//! - an offset past the end of a string, or inside a surrogate pair, is an error;
//! - `sd`, `ld` and `od` must equal what is in the document (deep equality; numbers compare by
//!   value, so `3` equals `3.0`; object key order is ignored);
//! - `li` index must be `<= len`, `ld` index `< len`;
//! - `oi` without `od` on an existing key is an error (it could not be inverted), as is `od` on
//!   a missing key;
//! - `na` needs a number target; integer + integer stays an integer (falling back to f64 beyond
//!   the i64/u64 range), anything else is computed in f64;
//! - every intermediate path step must exist and have the right container type: a `Name` key
//!   needs an object and an `Index` key needs an array (a numeric-looking string key on an array,
//!   or an index on an object, is an error);
//! - a component with only `p`, or mixing actions (`si`+`sd`, `li`+`oi`, `na`+anything, ...), is
//!   an error. The empty op `[]` is valid and changes nothing.
//!
//! Path numbers may arrive as floats from BSON (`3.0`); [`parse_op`] accepts integral,
//! non-negative floats as list indices / offsets. New object keys are appended at the end and
//! deleted keys are removed preserving the order of the others (serde_json `preserve_order`).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Number, Value};

/// One json0 path element: object key or list index / string offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Key {
    Index(usize),
    Name(String),
}

/// One json0 component. For the `Value` fields, `Some(Value::Null)` means "present and null"
/// (`{"oi": null}` inserts null) and `None` means absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    pub p: Vec<Key>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub si: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sd: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub li: Option<Value>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub ld: Option<Value>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub oi: Option<Value>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub od: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub na: Option<Number>,
}

/// A json0 op: components applied in order.
pub type Op = Vec<Component>;

/// An error in component `index` (0-based) of an op.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("json0 component #{index} {component}: {reason}")]
pub struct Json0Error {
    pub index: usize,
    /// Compact JSON of the component, truncated to about 200 characters.
    pub component: String,
    pub reason: String,
}

/// A field that is present deserializes to `Some`, even when it is `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

const COMPONENT_SNIPPET: usize = 200;
const TEXT_SNIPPET: usize = 60;

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn snippet_json(v: &Value, max: usize) -> String {
    truncate(&v.to_string(), max)
}

fn error(index: usize, component: String, reason: String) -> Json0Error {
    Json0Error {
        index,
        component: truncate(&component, COMPONENT_SNIPPET),
        reason,
    }
}

fn component_error(index: usize, c: &Component, reason: String) -> Json0Error {
    let json = serde_json::to_string(c).unwrap_or_else(|_| format!("{c:?}"));
    error(index, json, reason)
}

fn key_str(k: &Key) -> String {
    match k {
        Key::Index(i) => i.to_string(),
        Key::Name(n) => Value::String(n.clone()).to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

// ---------------------------------------------------------------------------------------------
// Shape validation
// ---------------------------------------------------------------------------------------------

enum Action<'a> {
    Si(&'a str),
    Sd(&'a str),
    Li(&'a Value),
    Ld(&'a Value),
    LdLi(&'a Value, &'a Value),
    Oi(&'a Value),
    Od(&'a Value),
    OdOi(&'a Value, &'a Value),
    Na(&'a Number),
}

/// Recognise the component's action and check that its path has the right shape for it.
fn action(c: &Component) -> Result<Action<'_>, String> {
    let mut groups = Vec::new();
    if c.si.is_some() || c.sd.is_some() {
        groups.push("si/sd");
    }
    if c.li.is_some() || c.ld.is_some() {
        groups.push("li/ld");
    }
    if c.oi.is_some() || c.od.is_some() {
        groups.push("oi/od");
    }
    if c.na.is_some() {
        groups.push("na");
    }
    if groups.len() > 1 {
        return Err(format!(
            "component mixes actions of different kinds ({})",
            groups.join(", ")
        ));
    }
    let act = match (&c.si, &c.sd, &c.li, &c.ld, &c.oi, &c.od, &c.na) {
        (Some(_), Some(_), ..) => return Err("`si` and `sd` in one component".into()),
        (Some(s), None, ..) => Action::Si(s),
        (None, Some(s), ..) => Action::Sd(s),
        (_, _, Some(i), Some(d), ..) => Action::LdLi(d, i),
        (_, _, Some(i), None, ..) => Action::Li(i),
        (_, _, None, Some(d), ..) => Action::Ld(d),
        (.., Some(i), Some(d), _) => Action::OdOi(d, i),
        (.., Some(i), None, _) => Action::Oi(i),
        (.., None, Some(d), _) => Action::Od(d),
        (.., Some(n)) => Action::Na(n),
        _ => return Err("component has no action (only `p`)".into()),
    };
    let last = c.p.last();
    match &act {
        Action::Si(_) | Action::Sd(_) => {
            if !matches!(last, Some(Key::Index(_))) {
                return Err("`si`/`sd` needs a path ending in a string offset".into());
            }
        }
        Action::Li(_) | Action::Ld(_) | Action::LdLi(..) => {
            if !matches!(last, Some(Key::Index(_))) {
                return Err("`li`/`ld` needs a path ending in a list index".into());
            }
        }
        Action::Oi(_) | Action::Od(_) | Action::OdOi(..) => match last {
            Some(Key::Name(_)) => {}
            Some(Key::Index(_)) => {
                return Err("`oi`/`od` needs a path ending in an object key, not an index".into())
            }
            None if matches!(act, Action::OdOi(..)) => {}
            None if matches!(act, Action::Oi(_)) => {
                return Err("`oi` at the document root needs `od` (not invertible)".into())
            }
            None => return Err("`od` at the document root would delete the document".into()),
        },
        Action::Na(_) => {}
    }
    Ok(act)
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Largest integer a JS number (f64) holds exactly.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

fn parse_key(step: usize, v: &Value) -> Result<Key, String> {
    match v {
        Value::String(s) => Ok(Key::Name(s.clone())),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                return usize::try_from(u)
                    .map(Key::Index)
                    .map_err(|_| format!("`p` step {step}: index {u} too large"));
            }
            match n.as_f64() {
                Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= MAX_SAFE_INTEGER => {
                    Ok(Key::Index(f as usize))
                }
                _ => Err(format!(
                    "`p` step {step}: {n} is not a non-negative integer index"
                )),
            }
        }
        other => Err(format!(
            "`p` step {step}: expected a string or a number, found {}",
            type_name(other)
        )),
    }
}

fn parse_component(raw: &Value) -> Result<Component, String> {
    let obj = raw
        .as_object()
        .ok_or_else(|| format!("component is not an object but {}", type_name(raw)))?;
    let mut c = Component {
        p: Vec::new(),
        si: None,
        sd: None,
        li: None,
        ld: None,
        oi: None,
        od: None,
        na: None,
    };
    let mut has_p = false;
    for (k, v) in obj {
        match k.as_str() {
            "p" => {
                let steps = v
                    .as_array()
                    .ok_or_else(|| format!("`p` must be an array, found {}", type_name(v)))?;
                c.p = steps
                    .iter()
                    .enumerate()
                    .map(|(i, s)| parse_key(i, s))
                    .collect::<Result<_, _>>()?;
                has_p = true;
            }
            "si" | "sd" => {
                let s = v
                    .as_str()
                    .ok_or_else(|| format!("`{k}` must be a string, found {}", type_name(v)))?
                    .to_string();
                if k == "si" {
                    c.si = Some(s);
                } else {
                    c.sd = Some(s);
                }
            }
            "li" => c.li = Some(v.clone()),
            "ld" => c.ld = Some(v.clone()),
            "oi" => c.oi = Some(v.clone()),
            "od" => c.od = Some(v.clone()),
            "na" => match v {
                Value::Number(n) => c.na = Some(n.clone()),
                other => return Err(format!("`na` must be a number, found {}", type_name(other))),
            },
            "lm" => return Err("`lm` (list move) is not supported".into()),
            "t" | "o" => return Err("json0 subtype components (`t`/`o`) are not supported".into()),
            other => return Err(format!("unknown field {}", Value::String(other.into()))),
        }
    }
    if !has_p {
        return Err("component has no `p`".into());
    }
    action(&c)?;
    Ok(c)
}

/// Parse a raw V2 `op` array (the `op` field of an `o_documentContent` entry).
///
/// Errors on anything that is not a well-formed, supported json0 component: no recognised
/// action, `p` missing or of the wrong type, `si`+`sd` together, unknown fields, a path whose
/// last element does not fit the action, etc.
pub fn parse_op(raw: &Value) -> Result<Op, Json0Error> {
    let items = raw.as_array().ok_or_else(|| {
        error(
            0,
            snippet_json(raw, COMPONENT_SNIPPET),
            format!("op is not an array but {}", type_name(raw)),
        )
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            parse_component(item)
                .map_err(|reason| error(i, snippet_json(item, COMPONENT_SNIPPET), reason))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Apply
// ---------------------------------------------------------------------------------------------

/// Convert a UTF-16 code-unit offset into a byte offset of `s`.
///
/// Errors if `offset` is past the end of `s` or falls between the two halves of a surrogate
/// pair. Does not allocate a UTF-16 copy: it walks the characters, skipping ASCII runs in
/// chunks.
pub fn utf16_to_byte(s: &str, offset: usize) -> Result<usize, String> {
    /// ASCII runs are skipped this many bytes at a time (1 byte = 1 UTF-16 unit).
    const CHUNK: usize = 32;
    let bytes = s.as_bytes();
    if offset <= bytes.len() && bytes[..offset].is_ascii() {
        return Ok(offset);
    }
    let mut units = 0usize;
    let mut pos = 0usize;
    while units < offset && pos < bytes.len() {
        let n = CHUNK.min(offset - units).min(bytes.len() - pos);
        if bytes[pos..pos + n].is_ascii() {
            units += n;
            pos += n;
            continue;
        }
        // `pos` is always a char boundary: walk this chunk (and the char straddling its end).
        let end = pos + n;
        for ch in s[pos..].chars() {
            if pos >= end || units == offset {
                break;
            }
            let w = ch.len_utf16();
            if units + w > offset {
                return Err(format!(
                    "offset {offset} splits a surrogate pair ({ch:?} at UTF-16 offset {units})"
                ));
            }
            units += w;
            pos += ch.len_utf8();
        }
    }
    if units == offset {
        Ok(pos)
    } else {
        Err(format!(
            "offset {offset} is past the end of the string (length {units} UTF-16 code units)"
        ))
    }
}

/// Follow `path` from `doc`; every step must exist in a container of the matching type.
fn walk<'a>(doc: &'a mut Value, path: &[Key]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for (i, key) in path.iter().enumerate() {
        let step = i;
        cur = match (cur, key) {
            (Value::Object(m), Key::Name(k)) => m
                .get_mut(k)
                .ok_or_else(|| format!("path step {step} ({}): no such key", key_str(key)))?,
            (Value::Array(a), Key::Index(idx)) => {
                let len = a.len();
                a.get_mut(*idx).ok_or_else(|| {
                    format!("path step {step} ({idx}): index out of range (list length {len})")
                })?
            }
            (other, Key::Name(_)) => {
                return Err(format!(
                    "path step {step} ({}): expected an object, found {}",
                    key_str(key),
                    type_name(other)
                ))
            }
            (other, Key::Index(_)) => {
                return Err(format!(
                    "path step {step} ({}): expected an array, found {}",
                    key_str(key),
                    type_name(other)
                ))
            }
        };
    }
    Ok(cur)
}

/// The container addressed by all but the last path element, and the last element.
fn parent<'a, 'k>(doc: &'a mut Value, p: &'k [Key]) -> Result<(&'a mut Value, &'k Key), String> {
    let (last, init) = p.split_last().ok_or("empty path")?;
    Ok((walk(doc, init)?, last))
}

fn as_index(k: &Key) -> usize {
    match k {
        Key::Index(i) => *i,
        // `action` guarantees an index for the actions that call this.
        Key::Name(_) => usize::MAX,
    }
}

fn string_target<'a>(
    doc: &'a mut Value,
    p: &[Key],
) -> Result<(&'a mut String, usize, usize), String> {
    let (target, last) = parent(doc, p)?;
    let step = p.len() - 1;
    match target {
        Value::String(s) => {
            let off = as_index(last);
            let byte = utf16_to_byte(s, off)?;
            Ok((s, off, byte))
        }
        other => Err(format!(
            "path step {step} ({}): string offset into {}, not a string",
            key_str(last),
            type_name(other)
        )),
    }
}

fn list_target<'a>(doc: &'a mut Value, p: &[Key]) -> Result<(&'a mut Vec<Value>, usize), String> {
    let (target, last) = parent(doc, p)?;
    let step = p.len() - 1;
    match target {
        Value::Array(a) => Ok((a, as_index(last))),
        other => Err(format!(
            "path step {step} ({}): list index into {}, not an array",
            key_str(last),
            type_name(other)
        )),
    }
}

fn object_target<'a, 'k>(
    doc: &'a mut Value,
    p: &'k [Key],
) -> Result<(&'a mut Map<String, Value>, &'k str), String> {
    let (target, last) = parent(doc, p)?;
    let step = p.len() - 1;
    match (target, last) {
        (Value::Object(m), Key::Name(k)) => Ok((m, k.as_str())),
        (other, _) => Err(format!(
            "path step {step} ({}): object key in {}, not an object",
            key_str(last),
            type_name(other)
        )),
    }
}

fn as_i128(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

fn int_number(v: i128) -> Option<Number> {
    i64::try_from(v)
        .map(Number::from)
        .or_else(|_| u64::try_from(v).map(Number::from))
        .ok()
}

fn add_numbers(a: &Number, b: &Number) -> Result<Number, String> {
    if let (Some(x), Some(y)) = (as_i128(a), as_i128(b)) {
        if let Some(n) = int_number(x + y) {
            return Ok(n);
        }
    }
    let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) else {
        return Err("`na` operand is not representable as f64".into());
    };
    Number::from_f64(x + y).ok_or_else(|| format!("`na` result {} is not finite", x + y))
}

fn negate(n: &Number) -> Number {
    if let Some(i) = as_i128(n) {
        if let Some(neg) = int_number(-i) {
            return neg;
        }
    }
    n.as_f64()
        .and_then(|f| Number::from_f64(-f))
        .unwrap_or_else(|| n.clone())
}

fn numbers_equal(a: &Number, b: &Number) -> bool {
    match (as_i128(a), as_i128(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a.as_f64() == b.as_f64(),
    }
}

/// Deep equality with JavaScript number semantics (`3 == 3.0`); object key order is ignored.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => numbers_equal(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(u, v)| json_eq(u, v))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, u)| y.get(k).is_some_and(|v| json_eq(u, v)))
        }
        _ => a == b,
    }
}

fn mismatch(what: &str, expected: &Value, found: &Value) -> String {
    format!(
        "{what} does not match: component has {}, document has {}",
        snippet_json(expected, TEXT_SNIPPET),
        snippet_json(found, TEXT_SNIPPET)
    )
}

fn apply_component(doc: &mut Value, c: &Component) -> Result<(), String> {
    match action(c)? {
        Action::Si(s) => {
            let (text, _, byte) = string_target(doc, &c.p)?;
            text.insert_str(byte, s);
        }
        Action::Sd(s) => {
            let (text, off, byte) = string_target(doc, &c.p)?;
            if !text[byte..].starts_with(s) {
                let mut end = (byte + s.len()).min(text.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                return Err(format!(
                    "deleted text does not match at offset {off}: component has {}, document has {}",
                    snippet_json(&Value::String(s.to_string()), TEXT_SNIPPET),
                    snippet_json(&Value::String(text[byte..end].to_string()), TEXT_SNIPPET)
                ));
            }
            text.replace_range(byte..byte + s.len(), "");
        }
        Action::Li(v) => {
            let (list, i) = list_target(doc, &c.p)?;
            if i > list.len() {
                return Err(format!(
                    "`li` index {i} out of range (list length {})",
                    list.len()
                ));
            }
            list.insert(i, v.clone());
        }
        Action::Ld(old) => list_delete(doc, &c.p, old, None)?,
        Action::LdLi(old, new) => list_delete(doc, &c.p, old, Some(new))?,
        Action::OdOi(old, new) if c.p.is_empty() => {
            if !json_eq(old, doc) {
                return Err(mismatch("`od` of the document root", old, doc));
            }
            *doc = new.clone();
        }
        Action::Oi(v) => {
            let (obj, k) = object_target(doc, &c.p)?;
            if obj.contains_key(k) {
                return Err(format!(
                    "`oi` on existing key {} without `od` (not invertible)",
                    Value::String(k.into())
                ));
            }
            obj.insert(k.to_string(), v.clone());
        }
        Action::Od(old) => object_delete(doc, &c.p, old, None)?,
        Action::OdOi(old, new) => object_delete(doc, &c.p, old, Some(new))?,
        Action::Na(n) => {
            let target = walk(doc, &c.p)?;
            match target {
                Value::Number(cur) => *cur = add_numbers(cur, n)?,
                other => {
                    return Err(format!(
                        "`na` target is not a number but {}",
                        type_name(other)
                    ))
                }
            }
        }
    }
    Ok(())
}

/// `ld` (with `replacement`: `ld`+`li`) at the end of `p`.
fn list_delete(
    doc: &mut Value,
    p: &[Key],
    v: &Value,
    replacement: Option<&Value>,
) -> Result<(), String> {
    let (list, i) = list_target(doc, p)?;
    let Some(cur) = list.get_mut(i) else {
        return Err(format!(
            "`ld` index {i} out of range (list length {})",
            list.len()
        ));
    };
    if !json_eq(v, cur) {
        return Err(mismatch(&format!("`ld` at index {i}"), v, cur));
    }
    match replacement {
        Some(new) => *cur = new.clone(),
        None => {
            list.remove(i);
        }
    }
    Ok(())
}

/// `od` (with `replacement`: `od`+`oi`) of the key at the end of `p`.
fn object_delete(
    doc: &mut Value,
    p: &[Key],
    old: &Value,
    replacement: Option<&Value>,
) -> Result<(), String> {
    let (obj, k) = object_target(doc, p)?;
    let Some(cur) = obj.get_mut(k) else {
        return Err(format!("`od` on missing key {}", Value::String(k.into())));
    };
    if !json_eq(old, cur) {
        let what = format!("`od` of key {}", Value::String(k.into()));
        return Err(mismatch(&what, old, cur));
    }
    match replacement {
        Some(new) => *cur = new.clone(),
        None => {
            obj.shift_remove(k);
        }
    }
    Ok(())
}

/// Apply `op` to `doc` in place, component by component, with ot-json0 semantics (strict; see
/// the module doc). On error `doc` may be partly modified: callers should discard it.
pub fn apply(doc: &mut Value, op: &[Component]) -> Result<(), Json0Error> {
    for (i, c) in op.iter().enumerate() {
        apply_component(doc, c).map_err(|reason| component_error(i, c, reason))?;
    }
    Ok(())
}

/// The inverse op: components in reverse order, each inverted (`si`<->`sd`, `li`<->`ld`,
/// `oi`<->`od`, `ld`+`li` and `oi`+`od` swapped, `na` negated). Paths are unchanged.
pub fn invert(op: &[Component]) -> Op {
    op.iter()
        .rev()
        .map(|c| Component {
            p: c.p.clone(),
            si: c.sd.clone(),
            sd: c.si.clone(),
            li: c.ld.clone(),
            ld: c.li.clone(),
            oi: c.od.clone(),
            od: c.oi.clone(),
            na: c.na.as_ref().map(negate),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn shared(rel: &str) -> String {
        let path = crate::fixtures::shared_dir().join(rel);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    fn op(v: Value) -> Op {
        parse_op(&v).unwrap_or_else(|e| panic!("parse_op failed: {e}"))
    }

    fn apply_err(doc: Value, o: Value) -> Json0Error {
        let o = op(o);
        let mut d = doc;
        apply(&mut d, &o).expect_err("apply should fail")
    }

    fn parse_err(o: Value) -> Json0Error {
        parse_op(&o).expect_err("parse_op should fail")
    }

    fn files_doc() -> Value {
        json!({"files": [{"name": "a.js", "text": "x🐧y"}, {"name": "b", "text": "hello world"}]})
    }

    // ---------------- conformance vectors ----------------

    #[test]
    fn conformance_vectors() {
        let all: Value = serde_json::from_str(&shared("conformance/ot-vectors.json")).unwrap();
        let cases = all["json0"].as_array().expect("json0 vectors");
        assert!(cases.len() >= 10, "expected at least 10 json0 vectors");
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let parsed = parse_op(&case["op"]).unwrap_or_else(|e| panic!("{name}: {e}"));
            // Serialization round-trips the vector JSON.
            assert_eq!(serde_json::to_value(&parsed).unwrap(), case["op"], "{name}");
            let via_serde: Op = serde_json::from_value(case["op"].clone()).unwrap();
            assert_eq!(via_serde, parsed, "{name}: serde vs parse_op");

            let mut doc = case["doc"].clone();
            apply(&mut doc, &parsed).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(doc, case["result"], "{name}: result");

            let inv = invert(&parsed);
            assert_eq!(
                serde_json::to_value(&inv).unwrap(),
                case["inverse"],
                "{name}: inverse"
            );
            assert_eq!(inv, op(case["inverse"].clone()), "{name}: parsed inverse");
            assert_eq!(invert(&inv), parsed, "{name}: double inverse");

            assert_eq!(case["roundTrip"], json!(true), "{name}");
            apply(&mut doc, &inv).unwrap_or_else(|e| panic!("{name}: inverse: {e}"));
            assert_eq!(doc, case["doc"], "{name}: round trip");
        }
    }

    // ---------------- fixtures ----------------

    fn fixture(id: &str) -> Value {
        serde_json::from_str(&shared(&format!("fixtures/v2/vizV2-{id}.json"))).unwrap()
    }

    #[test]
    fn parse_every_fixture_op() {
        let dir = crate::fixtures::dir();
        let mut files = 0;
        let mut components = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.starts_with("vizV2-") || !name.ends_with(".json") {
                continue;
            }
            files += 1;
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for entry in v["ops"].as_array().unwrap() {
                let o = parse_op(&entry["op"]).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(serde_json::to_value(&o).unwrap(), entry["op"], "{name}");
                components += o.len();
            }
        }
        assert_eq!(files, 4);
        assert!(components >= 601, "only {components} components");
    }

    /// Invert the ops backwards from the snapshot, then apply forwards: must give the snapshot.
    fn replay(id: &str, first_v: u64, snapshot_v: u64) {
        let fx = fixture(id);
        let mut snapshot = fx["content"].clone();
        assert_eq!(snapshot["_v"], json!(snapshot_v));
        let m = snapshot.as_object_mut().unwrap();
        for k in ["_id", "_type", "_v", "_m", "_o"] {
            m.shift_remove(k);
        }
        let entries = fx["ops"].as_array().unwrap();
        let ops: Vec<Op> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                assert_eq!(e["v"], json!(first_v + i as u64), "ops must be consecutive");
                op(e["op"].clone())
            })
            .collect();
        assert_eq!(first_v + ops.len() as u64, snapshot_v);

        let mut doc = snapshot.clone();
        for (i, o) in ops.iter().enumerate().rev() {
            apply(&mut doc, &invert(o))
                .unwrap_or_else(|e| panic!("inverting v{}: {e}", first_v + i as u64));
        }
        assert_ne!(doc, snapshot);
        for (i, o) in ops.iter().enumerate() {
            apply(&mut doc, o).unwrap_or_else(|e| panic!("applying v{}: {e}", first_v + i as u64));
        }
        assert_eq!(doc, snapshot);
        // Exactly, including key order.
        assert_eq!(
            serde_json::to_string(&doc).unwrap(),
            serde_json::to_string(&snapshot).unwrap()
        );
    }

    #[test]
    fn replay_primordial_fixture() {
        replay("86a75dc8bdbe4965ba353a79d4bd44c8", 111, 483);
    }

    #[test]
    fn replay_short_log_fixture() {
        replay("366c38ba5ebc4631b4bd936f3b709744", 118, 124);
    }

    #[test]
    fn primordial_history_has_owner_oi() {
        // v141 inserts `owner`: inverted history must not have it, and forward apply adds it.
        let fx = fixture("86a75dc8bdbe4965ba353a79d4bd44c8");
        let e = fx["ops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["v"] == json!(141))
            .unwrap();
        let o = op(e["op"].clone());
        assert_eq!(o[0].oi, Some(json!("68416")));
        assert_eq!(o[0].od, None);
    }

    // ---------------- error cases ----------------

    #[test]
    fn err_sd_mismatch() {
        let e = apply_err(
            files_doc(),
            json!([{"p": ["files", 1, "text", 0], "sd": "help"}]),
        );
        assert!(e.reason.contains("deleted text does not match"), "{e}");
        assert_eq!(e.index, 0);
    }

    #[test]
    fn err_sd_past_end_of_text() {
        let e = apply_err(
            files_doc(),
            json!([{"p": ["files", 1, "text", 6], "sd": "world!"}]),
        );
        assert!(e.reason.contains("deleted text does not match"), "{e}");
    }

    #[test]
    fn err_sd_mismatch_inside_emoji_text() {
        // "x🐧y": deleting "🐧" at 1 is fine, at 1 with a different emoji is not.
        let e = apply_err(
            files_doc(),
            json!([{"p": ["files", 0, "text", 1], "sd": "😀"}]),
        );
        assert!(e.reason.contains("deleted text does not match"), "{e}");
        let mut d = files_doc();
        apply(
            &mut d,
            &op(json!([{"p": ["files", 0, "text", 1], "sd": "🐧"}])),
        )
        .unwrap();
        assert_eq!(d["files"][0]["text"], json!("xy"));
    }

    #[test]
    fn err_offset_splits_surrogate() {
        for o in [
            json!([{"p": ["files", 0, "text", 2], "si": "!"}]),
            json!([{"p": ["files", 0, "text", 2], "sd": "y"}]),
        ] {
            let e = apply_err(files_doc(), o);
            assert!(e.reason.contains("surrogate"), "{e}");
        }
    }

    #[test]
    fn err_offset_past_end() {
        let e = apply_err(
            files_doc(),
            json!([{"p": ["files", 0, "text", 5], "si": "!"}]),
        );
        assert!(e.reason.contains("past the end"), "{e}");
        assert!(e.reason.contains("length 4"), "{e}");
        let e = apply_err(
            files_doc(),
            json!([{"p": ["files", 1, "text", 12], "si": "!"}]),
        );
        assert!(e.reason.contains("past the end"), "{e}");
    }

    #[test]
    fn si_at_end_and_after_emoji() {
        let mut d = files_doc();
        let o = op(json!([
            {"p": ["files", 0, "text", 4], "si": "END"},
            {"p": ["files", 0, "text", 3], "si": "!"},
            {"p": ["files", 0, "text", 0], "si": "é"},
            {"p": ["files", 0, "text", 2], "si": "-"}
        ]));
        apply(&mut d, &o).unwrap();
        assert_eq!(d["files"][0]["text"], json!("éx-🐧!yEND"));
        apply(&mut d, &invert(&o)).unwrap();
        assert_eq!(d, files_doc());
    }

    #[test]
    fn err_ld_mismatch() {
        let e = apply_err(
            files_doc(),
            json!([{"p": ["files", 0], "ld": {"name": "a.js", "text": "x"}}]),
        );
        assert!(e.reason.contains("`ld` at index 0 does not match"), "{e}");
        let e = apply_err(
            files_doc(),
            json!([{"p": ["files", 0], "ld": {"name": "b"}, "li": {"name": "c"}}]),
        );
        assert!(e.reason.contains("does not match"), "{e}");
    }

    #[test]
    fn err_li_out_of_range() {
        let e = apply_err(files_doc(), json!([{"p": ["files", 3], "li": {}}]));
        assert!(
            e.reason
                .contains("`li` index 3 out of range (list length 2)"),
            "{e}"
        );
        // At len is fine.
        let mut d = files_doc();
        apply(&mut d, &op(json!([{"p": ["files", 2], "li": null}]))).unwrap();
        assert_eq!(d["files"][2], Value::Null);
        assert_eq!(d["files"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn err_ld_out_of_range() {
        let e = apply_err(files_doc(), json!([{"p": ["files", 2], "ld": {}}]));
        assert!(e.reason.contains("out of range"), "{e}");
    }

    #[test]
    fn err_oi_on_existing_key() {
        let e = apply_err(json!({"owner": "1"}), json!([{"p": ["owner"], "oi": "2"}]));
        assert!(
            e.reason
                .contains("`oi` on existing key \"owner\" without `od`"),
            "{e}"
        );
        // With od it is a replacement.
        let mut d = json!({"owner": "1", "z": 0});
        apply(&mut d, &op(json!([{"p": ["owner"], "od": "1", "oi": "2"}]))).unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), r#"{"owner":"2","z":0}"#);
    }

    #[test]
    fn err_od_mismatch_and_missing() {
        let e = apply_err(json!({"owner": "1"}), json!([{"p": ["owner"], "od": "2"}]));
        assert!(
            e.reason.contains("`od` of key \"owner\" does not match"),
            "{e}"
        );
        let e = apply_err(
            json!({"owner": "1"}),
            json!([{"p": ["owner"], "od": "2", "oi": "3"}]),
        );
        assert!(e.reason.contains("does not match"), "{e}");
        let e = apply_err(json!({}), json!([{"p": ["owner"], "od": "1"}]));
        assert!(e.reason.contains("`od` on missing key"), "{e}");
        let e = apply_err(json!({}), json!([{"p": ["owner"], "od": null}]));
        assert!(e.reason.contains("`od` on missing key"), "{e}");
    }

    #[test]
    fn err_missing_path_step() {
        let e = apply_err(
            files_doc(),
            json!([{"p": ["file", 0, "text", 0], "si": "a"}]),
        );
        assert!(
            e.reason.contains("path step 0 (\"file\"): no such key"),
            "{e}"
        );
        let e = apply_err(
            files_doc(),
            json!([{"p": ["files", 7, "text", 0], "si": "a"}]),
        );
        assert!(
            e.reason.contains("path step 1 (7): index out of range"),
            "{e}"
        );
        let e = apply_err(
            files_doc(),
            json!([{"p": ["files", 0, "txt", 0], "si": "a"}]),
        );
        assert!(e.reason.contains("path step 2 (\"txt\")"), "{e}");
        let e = apply_err(json!({"a": {}}), json!([{"p": ["a", "b", "c"], "oi": 1}]));
        assert!(e.reason.contains("path step 1 (\"b\")"), "{e}");
    }

    #[test]
    fn err_wrong_container_types() {
        // Numeric-looking name on an array.
        let e = apply_err(
            files_doc(),
            json!([{"p": ["files", "0", "text", 0], "si": "a"}]),
        );
        assert!(
            e.reason
                .contains("path step 1 (\"0\"): expected an object, found array"),
            "{e}"
        );
        // Index on an object.
        let e = apply_err(
            json!({"a": {"0": "x"}}),
            json!([{"p": ["a", 0, 0], "si": "a"}]),
        );
        assert!(
            e.reason
                .contains("path step 1 (0): expected an array, found object"),
            "{e}"
        );
        // String offset into a non-string.
        let e = apply_err(files_doc(), json!([{"p": ["files", 0, 0], "si": "a"}]));
        assert!(e.reason.contains("not a string"), "{e}");
        // List op on a string / object.
        let e = apply_err(
            files_doc(),
            json!([{"p": ["files", 0, "text", 0], "li": 1}]),
        );
        assert!(e.reason.contains("not an array"), "{e}");
        // Object op on an array.
        let e = apply_err(files_doc(), json!([{"p": ["files", "x"], "oi": 1}]));
        assert!(e.reason.contains("not an object"), "{e}");
    }

    #[test]
    fn err_na_on_string() {
        let e = apply_err(json!({"n": "1"}), json!([{"p": ["n"], "na": 1}]));
        assert!(e.reason.contains("`na` target is not a number"), "{e}");
        let e = apply_err(json!({}), json!([{"p": ["n"], "na": 1}]));
        assert!(e.reason.contains("no such key"), "{e}");
    }

    #[test]
    fn err_component_without_action() {
        let e = parse_err(json!([{"p": ["files", 0]}]));
        assert!(e.reason.contains("no action"), "{e}");
        let c = Component {
            p: vec![Key::Name("x".into())],
            si: None,
            sd: None,
            li: None,
            ld: None,
            oi: None,
            od: None,
            na: None,
        };
        let mut d = json!({"x": 1});
        let e = apply(&mut d, &[c]).unwrap_err();
        assert!(e.reason.contains("no action"), "{e}");
    }

    #[test]
    fn err_message_contains_component_index() {
        let o = op(json!([
            {"p": ["files", 1, "text", 0], "si": "A"},
            {"p": ["files", 1, "text", 0], "si": "B"},
            {"p": ["files", 1, "text", 0], "sd": "nope"}
        ]));
        let mut d = files_doc();
        let e = apply(&mut d, &o).unwrap_err();
        assert_eq!(e.index, 2);
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "json0 component #2 {\"p\":[\"files\",1,\"text\",0],\"sd\":\"nope\"}: "
            ),
            "{msg}"
        );
        assert!(msg.contains("deleted text does not match"), "{msg}");

        let e = parse_err(json!([{"p": ["a"], "oi": 1}, {"p": ["a"], "si": "x", "sd": "y"}]));
        assert_eq!(e.index, 1);
        assert!(e.to_string().starts_with("json0 component #1 "), "{e}");
    }

    #[test]
    fn error_component_is_truncated() {
        let big = "z".repeat(1000);
        let e = apply_err(json!({"t": ""}), json!([{"p": ["t", 0], "sd": big}]));
        assert!(e.component.chars().count() <= 201, "{}", e.component.len());
        assert!(e.component.ends_with('…'));
        assert!(e.reason.len() < 300, "{}", e.reason);
        // Truncation on a char boundary.
        let e = apply_err(
            json!({"t": ""}),
            json!([{"p": ["t", 0], "sd": "🐧".repeat(100)}]),
        );
        assert!(e.component.ends_with('…'));
    }

    // ---------------- parsing ----------------

    #[test]
    fn parse_rejects_bad_shapes() {
        let cases = [
            (json!({"p": []}), "not an array"),
            (json!([1]), "not an object"),
            (json!([{"si": "x"}]), "no `p`"),
            (json!([{"p": "a", "si": "x"}]), "`p` must be an array"),
            (json!([{"p": ["a", true], "si": "x"}]), "`p` step 1"),
            (json!([{"p": ["a", -1], "si": "x"}]), "`p` step 1"),
            (json!([{"p": ["a", 1.5], "si": "x"}]), "`p` step 1"),
            (json!([{"p": ["a", null], "si": "x"}]), "`p` step 1"),
            (
                json!([{"p": ["a", 0], "si": "x", "sd": "y"}]),
                "`si` and `sd`",
            ),
            (json!([{"p": ["a", 0], "si": 3}]), "`si` must be a string"),
            (
                json!([{"p": ["a", 0], "sd": null}]),
                "`sd` must be a string",
            ),
            (json!([{"p": ["a"], "na": "1"}]), "`na` must be a number"),
            (
                json!([{"p": ["a", 0], "si": "x", "li": 1}]),
                "mixes actions",
            ),
            (json!([{"p": ["a"], "oi": 1, "na": 1}]), "mixes actions"),
            (json!([{"p": ["a", 0], "lm": 1}]), "`lm`"),
            (json!([{"p": ["a"], "t": "text0", "o": []}]), "subtype"),
            (
                json!([{"p": ["a"], "oi": 1, "x": 1}]),
                "unknown field \"x\"",
            ),
            (json!([{"p": ["a", "b"], "si": "x"}]), "string offset"),
            (json!([{"p": [], "si": "x"}]), "string offset"),
            (json!([{"p": ["a", "b"], "li": 1}]), "list index"),
            (json!([{"p": ["a", 0], "oi": 1}]), "object key"),
            (json!([{"p": [], "oi": 1}]), "root"),
            (json!([{"p": [], "od": 1}]), "root"),
        ];
        for (raw, want) in cases {
            let e = parse_op(&raw).expect_err(&raw.to_string());
            assert!(e.reason.contains(want), "{raw}: {e}");
        }
    }

    #[test]
    fn parse_accepts_integral_float_indices() {
        let raw: Value =
            serde_json::from_str(r#"[{"p":["files",1.0,"text",3.0],"si":"!"}]"#).unwrap();
        let o = parse_op(&raw).unwrap();
        assert_eq!(
            o[0].p,
            vec![
                Key::Name("files".into()),
                Key::Index(1),
                Key::Name("text".into()),
                Key::Index(3)
            ]
        );
        let mut d = files_doc();
        apply(&mut d, &o).unwrap();
        assert_eq!(d["files"][1]["text"], json!("hel!lo world"));
    }

    #[test]
    fn null_values_are_present() {
        let o = op(json!([{"p": ["a"], "oi": null}]));
        assert_eq!(o[0].oi, Some(Value::Null));
        assert_eq!(o[0].od, None);
        let via_serde: Op = serde_json::from_value(json!([{"p": ["a"], "oi": null}])).unwrap();
        assert_eq!(via_serde, o);
        assert_eq!(
            serde_json::to_string(&o).unwrap(),
            r#"[{"p":["a"],"oi":null}]"#
        );
        let mut d = json!({});
        apply(&mut d, &o).unwrap();
        assert_eq!(d, json!({"a": null}));
        let inv = invert(&o);
        assert_eq!(
            serde_json::to_string(&inv).unwrap(),
            r#"[{"p":["a"],"od":null}]"#
        );
        apply(&mut d, &inv).unwrap();
        assert_eq!(d, json!({}));
    }

    #[test]
    fn serde_rejects_unknown_fields() {
        assert!(serde_json::from_value::<Component>(json!({"p": [], "lm": 1})).is_err());
    }

    #[test]
    fn empty_op_is_noop() {
        let o = op(json!([]));
        assert!(o.is_empty());
        let mut d = files_doc();
        apply(&mut d, &o).unwrap();
        assert_eq!(d, files_doc());
        assert!(invert(&o).is_empty());
    }

    // ---------------- semantics ----------------

    #[test]
    fn na_number_kinds() {
        let mut d = json!({"i": 1, "f": 1.5, "big": i64::MAX, "neg": -5});
        apply(
            &mut d,
            &op(json!([
                {"p": ["i"], "na": 2},
                {"p": ["f"], "na": 2},
                {"p": ["big"], "na": 1},
                {"p": ["neg"], "na": 0.5}
            ])),
        )
        .unwrap();
        assert_eq!(d["i"], json!(3));
        assert!(d["i"].is_i64());
        assert_eq!(d["f"], json!(3.5));
        assert_eq!(d["big"], json!(i64::MAX as u64 + 1));
        assert_eq!(d["neg"], json!(-4.5));
        let mut d = json!({"n": [1, 2]});
        apply(&mut d, &op(json!([{"p": ["n", 1], "na": -3}]))).unwrap();
        assert_eq!(d, json!({"n": [1, -1]}));
        let mut d = json!(10);
        apply(&mut d, &op(json!([{"p": [], "na": 5}]))).unwrap();
        assert_eq!(d, json!(15));
    }

    #[test]
    fn na_invert_negates() {
        let o = op(
            json!([{"p": ["n"], "na": 2}, {"p": ["n"], "na": -0.5}, {"p": ["n"], "na": u64::MAX}]),
        );
        let inv = invert(&o);
        assert_eq!(
            serde_json::to_value(&inv).unwrap(),
            json!([{"p": ["n"], "na": -(u64::MAX as f64)}, {"p": ["n"], "na": 0.5}, {"p": ["n"], "na": -2}])
        );
        assert!(inv[2].na.as_ref().unwrap().is_i64());
    }

    #[test]
    fn deep_equality_is_numeric_and_order_insensitive() {
        let mut d = json!({"files": [{"name": "a", "n": 3, "m": {"x": 1, "y": 2}}]});
        let o = op(
            json!([{"p": ["files", 0], "ld": {"m": {"y": 2.0, "x": 1}, "n": 3.0, "name": "a"}}]),
        );
        apply(&mut d, &o).unwrap();
        assert_eq!(d, json!({"files": []}));
        let e = apply_err(json!({"a": [1]}), json!([{"p": ["a", 0], "ld": 1.5}]));
        assert!(e.reason.contains("does not match"), "{e}");
        let e = apply_err(
            json!({"a": [{"x": 1}]}),
            json!([{"p": ["a", 0], "ld": {"x": 1, "y": null}}]),
        );
        assert!(e.reason.contains("does not match"), "{e}");
    }

    #[test]
    fn od_preserves_key_order() {
        let mut d = json!({"a": 1, "b": 2, "c": 3});
        apply(&mut d, &op(json!([{"p": ["a"], "od": 1}]))).unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), r#"{"b":2,"c":3}"#);
        apply(&mut d, &op(json!([{"p": ["a"], "oi": 1}]))).unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), r#"{"b":2,"c":3,"a":1}"#);
    }

    #[test]
    fn root_replacement() {
        let mut d = json!({"a": 1});
        let o = op(json!([{"p": [], "od": {"a": 1}, "oi": [1, 2]}]));
        apply(&mut d, &o).unwrap();
        assert_eq!(d, json!([1, 2]));
        apply(&mut d, &invert(&o)).unwrap();
        assert_eq!(d, json!({"a": 1}));
        let e = apply_err(json!({"a": 2}), json!([{"p": [], "od": {"a": 1}, "oi": 1}]));
        assert!(e.reason.contains("does not match"), "{e}");
    }

    #[test]
    fn nested_paths() {
        let mut d = json!({"a": [[{"b": "αβγ"}]]});
        let o = op(json!([
            {"p": ["a", 0, 0, "b", 1], "sd": "β"},
            {"p": ["a", 0, 0, "c"], "oi": {"d": []}},
            {"p": ["a", 0, 0, "c", "d", 0], "li": "q"},
            {"p": ["a", 0, 1], "li": 7},
            {"p": ["a", 0, 1], "na": 1}
        ]));
        apply(&mut d, &o).unwrap();
        assert_eq!(d, json!({"a": [[{"b": "αγ", "c": {"d": ["q"]}}, 8]]}));
        apply(&mut d, &invert(&o)).unwrap();
        assert_eq!(d, json!({"a": [[{"b": "αβγ"}]]}));
    }

    #[test]
    fn utf16_offsets() {
        let s = "a🐧é😀z";
        assert_eq!(utf16_to_byte(s, 0), Ok(0));
        assert_eq!(utf16_to_byte(s, 1), Ok(1));
        assert!(utf16_to_byte(s, 2).unwrap_err().contains("surrogate"));
        assert_eq!(utf16_to_byte(s, 3), Ok(5));
        assert_eq!(utf16_to_byte(s, 4), Ok(7));
        assert!(utf16_to_byte(s, 5).is_err());
        assert_eq!(utf16_to_byte(s, 6), Ok(11));
        assert_eq!(utf16_to_byte(s, 7), Ok(12));
        assert!(utf16_to_byte(s, 8).unwrap_err().contains("past the end"));
        assert_eq!(utf16_to_byte("", 0), Ok(0));
        assert!(utf16_to_byte("", 1).is_err());
        assert_eq!(utf16_to_byte("abc", 3), Ok(3));
        assert!(utf16_to_byte("abc", 4).is_err());
    }

    #[test]
    fn large_text_many_ops() {
        // A multi-megabyte text with an emoji near the start: offsets are resolved by walking.
        let mut text = String::from("🐧");
        text.push_str(&"x".repeat(2_000_000));
        let mut d = json!({"files": [{"name": "big", "text": text}]});
        let mut o = Vec::new();
        for i in 0..300usize {
            o.push(json!({"p": ["files", 0, "text", 1_000_000 + i], "si": "é"}));
        }
        let o = op(Value::Array(o));
        apply(&mut d, &o).unwrap();
        apply(&mut d, &invert(&o)).unwrap();
        assert_eq!(d["files"][0]["text"].as_str().unwrap().len(), 2_000_004);
    }

    // ---------------- property tests ----------------

    /// A file text: ASCII, BMP non-ASCII and astral (surrogate pair) characters.
    fn text_strategy() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-c \n\"é€🐧😀𝄞]{0,12}").unwrap()
    }

    fn boundaries(s: &str) -> Vec<(usize, usize)> {
        // (utf16 offset, byte offset) of every char boundary.
        let mut out = vec![(0, 0)];
        let mut u = 0;
        for (b, ch) in s.char_indices() {
            u += ch.len_utf16();
            out.push((u, b + ch.len_utf8()));
        }
        out
    }

    fn file_value(name: &str, text: &str) -> Value {
        json!({"name": name, "text": text})
    }

    /// Build a valid component for the current `doc` from random choices.
    fn make_component(doc: &Value, kind: u8, a: usize, b: usize, s: &str) -> Value {
        let files = doc["files"].as_array().unwrap();
        let n = files.len();
        let kind = if n == 0 && matches!(kind % 7, 0 | 1 | 3 | 4) {
            2
        } else {
            kind % 7
        };
        match kind {
            0 => {
                let i = a % n;
                let t = files[i]["text"].as_str().unwrap();
                let bs = boundaries(t);
                let (u, _) = bs[b % bs.len()];
                json!({"p": ["files", i, "text", u], "si": s})
            }
            1 => {
                let i = a % n;
                let t = files[i]["text"].as_str().unwrap();
                let bs = boundaries(t);
                let x = bs[b % bs.len()];
                let y = bs[(b / 7 + s.len()) % bs.len()];
                let (lo, hi) = if x.0 <= y.0 { (x, y) } else { (y, x) };
                json!({"p": ["files", i, "text", lo.0], "sd": &t[lo.1..hi.1]})
            }
            2 => json!({"p": ["files", a % (n + 1)], "li": file_value(&format!("f{b}"), s)}),
            3 => {
                let i = a % n;
                json!({"p": ["files", i], "ld": files[i].clone()})
            }
            4 => {
                let i = a % n;
                json!({"p": ["files", i], "ld": files[i].clone(), "li": file_value("r", s)})
            }
            5 => {
                let key = ["owner", "title", "height"][a % 3];
                let new = match b % 4 {
                    0 => Value::Null,
                    1 => json!(s),
                    2 => json!(b),
                    _ => json!({"nested": [s]}),
                };
                match doc.get(key) {
                    None => json!({"p": [key], "oi": new}),
                    Some(old) if b & 1 == 0 => json!({"p": [key], "od": old.clone()}),
                    Some(old) => json!({"p": [key], "od": old.clone(), "oi": new}),
                }
            }
            _ => {
                // Integers on "n"; halves (exact in f64) on "f".
                if a & 1 == 0 {
                    json!({"p": ["n"], "na": (b % 2001) as i64 - 1000})
                } else {
                    json!({"p": ["f"], "na": ((b % 201) as f64 - 100.0) / 2.0})
                }
            }
        }
    }

    fn doc_strategy() -> impl Strategy<Value = Value> {
        (
            proptest::collection::vec(("[a-z]{1,5}\\.js", text_strategy()), 0..4),
            -100i64..100,
            -50i64..50,
        )
            .prop_map(|(files, n, f)| {
                let files: Vec<Value> = files.iter().map(|(nm, t)| file_value(nm, t)).collect();
                json!({"files": files, "n": n, "f": f as f64 / 2.0})
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn prop_apply_invert_roundtrip(
            doc in doc_strategy(),
            choices in proptest::collection::vec(
                (any::<u8>(), any::<usize>(), any::<usize>(), text_strategy()), 0..25),
        ) {
            let original = doc.clone();
            let mut cur = doc;
            let mut raw = Vec::new();
            for (kind, a, b, s) in &choices {
                let c = make_component(&cur, *kind, *a, *b, s);
                let one = parse_op(&json!([c.clone()])).map_err(|e| TestCaseError::fail(e.to_string()))?;
                apply(&mut cur, &one).map_err(|e| TestCaseError::fail(e.to_string()))?;
                raw.push(c);
            }
            let raw = Value::Array(raw);
            let o = parse_op(&raw).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(serde_json::to_value(&o).unwrap(), raw);

            let mut fwd = original.clone();
            apply(&mut fwd, &o).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&fwd, &cur);

            let inv = invert(&o);
            apply(&mut fwd, &inv).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&fwd, &original);
            prop_assert_eq!(invert(&inv), o);
        }

        #[test]
        fn prop_utf16_long_mixed_texts(
            s in proptest::string::string_regex("([a-z\n]{0,70}[é€🐧😀𝄞]{0,3}){0,6}").unwrap(),
            off in 0usize..500,
        ) {
            let units: Vec<u16> = s.encode_utf16().collect();
            let off = off % (units.len() + 2);
            match utf16_to_byte(&s, off) {
                Ok(b) => prop_assert_eq!(String::from_utf16(&units[..off]).unwrap(), &s[..b]),
                Err(e) => prop_assert!(
                    off > units.len() || (0xDC00..0xE000).contains(&units[off]),
                    "{}", e
                ),
            }
        }

        #[test]
        fn prop_utf16_to_byte_matches_reference(s in text_strategy(), off in 0usize..40) {
            let units: Vec<u16> = s.encode_utf16().collect();
            let got = utf16_to_byte(&s, off);
            if off > units.len() {
                prop_assert!(got.unwrap_err().contains("past the end"));
            } else if off < units.len() && (0xDC00..0xE000).contains(&units[off]) {
                prop_assert!(got.unwrap_err().contains("surrogate"));
            } else {
                let b = got.unwrap();
                prop_assert_eq!(String::from_utf16(&units[..off]).unwrap(), &s[..b]);
            }
        }
    }
}
