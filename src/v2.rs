//! The V2 data model: typed, lenient views of the ShareDB (json0) snapshots and op-log entries
//! that VizHub V2 stored in MongoDB (`documentInfo`, `documentContent`, `o_documentContent`,
//! `user`, `eventRecords`).
//!
//! V2 documents are read as `serde_json::Value` (a MongoDB document becomes one through
//! [`from_bson`]) and then parsed here. Parsing is deliberately lenient about *shape* — every field
//! is optional, numbers may arrive as int32/int64/double, ObjectIds as `{"$oid": …}` or plain hex
//! strings — because production holds tombstones, partial docs and years of schema drift. Deciding
//! what a missing field *means* (skip, dead-letter, default) is not this module's job; that lives in
//! [`crate::translate`]. A field of the wrong *type* (a title that is a number, files that are not
//! a list) is a [`V2Error`], never a panic.

pub mod reader;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;

/// The raw V2 documents of one viz, as read (or as stored in a fixture).
#[derive(Debug, Clone, Default)]
pub struct V2Viz {
    pub info: Value,
    pub content: Option<Value>,
    pub ops: Vec<Value>,
    /// Why the op log was not loaded (it is larger than the reader's cap): history falls back,
    /// with this as the reason.
    pub ops_withheld: Option<String>,
}

/// The `_type` of a live V2 snapshot.
pub const JSON0_TYPE: &str = "http://sharejs.org/types/JSONv0";

/// A V2 document that does not have the shape of its collection.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("malformed V2 {collection} document {id}: {reason}")]
pub struct V2Error {
    pub collection: &'static str,
    pub id: String,
    pub reason: String,
}

/// ShareDB's `_m` metadata (milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Meta {
    #[serde(default, deserialize_with = "lenient_i64")]
    pub ctime: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub mtime: Option<i64>,
}

/// The ShareDB envelope every snapshot carries.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Envelope {
    #[serde(rename = "_id", default, deserialize_with = "lenient_id")]
    pub doc_id: Option<String>,
    /// `None` (JSON `null` or absent) marks a tombstone.
    #[serde(rename = "_type", default)]
    pub doc_type: Option<String>,
    #[serde(rename = "_v", default, deserialize_with = "lenient_u64")]
    pub version: Option<u64>,
    #[serde(rename = "_m", default)]
    pub meta: Option<Meta>,
    /// `_o`: the `_id` of the op that made this version. The ops a snapshot contains are the
    /// chain of `o` links back from it (sharedb-mongo's `getLinkedOps`); absent on snapshots
    /// older than op linking.
    #[serde(rename = "_o", default, deserialize_with = "lenient_id")]
    pub op_link: Option<String>,
}

impl Envelope {
    /// A deleted ShareDB document keeps its `_id` but has `_type: null`.
    pub fn is_tombstone(&self) -> bool {
        self.doc_type.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpvoteEntry {
    /// `None` for an entry without a `userId` (it is skipped with a note, spec 3.5).
    #[serde(default, deserialize_with = "lenient_id")]
    pub user_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub timestamp: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CollaboratorEntry {
    /// `None` for an entry without a `userId` (it is skipped with a note, spec 3.5).
    #[serde(default, deserialize_with = "lenient_id")]
    pub user_id: Option<String>,
}

/// `documentInfo`: viz (or dataset) metadata. Scores and counts are not read: V3 recomputes them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentInfo {
    #[serde(flatten)]
    pub envelope: Envelope,
    #[serde(default, deserialize_with = "lenient_id")]
    pub id: Option<String>,
    #[serde(default)]
    pub document_type: Option<String>,
    #[serde(default, deserialize_with = "lenient_id")]
    pub owner: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub created_timestamp: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub last_updated_timestamp: Option<i64>,
    #[serde(default, deserialize_with = "lenient_f64")]
    pub height: Option<f64>,
    #[serde(default, deserialize_with = "lenient_id")]
    pub forked_from: Option<String>,
    #[serde(default)]
    pub fork_from_backfilled: Option<bool>,
    #[serde(default)]
    pub upvotes: Option<Vec<UpvoteEntry>>,
    #[serde(default)]
    pub collaborators: Option<Vec<CollaboratorEntry>>,
    #[serde(default)]
    pub privacy: Option<String>,
}

/// One entry of `documentContent.files`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct File {
    pub name: String,
    /// A file whose `text` is `null` or absent is read as empty: V2's editor treated it so.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub text: String,
}

/// `documentContent`: the files of a viz. Dataset content has `text` and no `files`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentContent {
    #[serde(flatten)]
    pub envelope: Envelope,
    #[serde(default, deserialize_with = "lenient_id")]
    pub id: Option<String>,
    #[serde(default)]
    pub document_type: Option<String>,
    #[serde(default)]
    pub files: Option<Vec<File>>,
}

/// One entry of `o_documentContent`. The json0 `op` is kept raw: it is parsed by
/// [`crate::json0::parse_op`] when (and only when) history is rebuilt, so a malformed op makes the
/// history fall back instead of failing the whole viz.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ContentOp {
    #[serde(rename = "_id", default, deserialize_with = "lenient_id")]
    pub op_id: Option<String>,
    #[serde(deserialize_with = "lenient_u64_required")]
    pub v: u64,
    #[serde(default)]
    pub op: Option<Value>,
    #[serde(default)]
    pub create: Option<Value>,
    #[serde(default)]
    pub del: Option<bool>,
    #[serde(default)]
    pub m: Option<OpMeta>,
    /// `o`: the `_id` of the op before this one (`null` on a `create`).
    #[serde(rename = "o", default, deserialize_with = "lenient_id")]
    pub prev: Option<String>,
}

impl ContentOp {
    /// Op time in ms, when V2 recorded it.
    pub fn ts_ms(&self) -> Option<i64> {
        self.m.as_ref().and_then(|m| m.ts)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct OpMeta {
    #[serde(default, deserialize_with = "lenient_i64")]
    pub ts: Option<i64>,
}

/// `user`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(flatten)]
    pub envelope: Envelope,
    #[serde(default, deserialize_with = "lenient_id")]
    pub id: Option<String>,
    #[serde(default)]
    pub user_name: Option<String>,
    #[serde(default)]
    pub full_name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub avatar_url: Option<String>,
    #[serde(default)]
    pub company: Option<String>,
    #[serde(default)]
    pub website: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub bio: Option<String>,
}

/// The bucket maps of an analytics record: interval name → (formatted time → count).
pub type Intervals = serde_json::Map<String, Value>;

/// The interval names of an `eventRecords` document, in V3's order.
pub const INTERVALS: [&str; 8] = [
    "minutes", "hours", "days", "weeks", "months", "quarters", "years", "all",
];

/// `eventRecords`: analytics counters (plain MongoDB, no ShareDB envelope).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventRecord {
    pub id: String,
    pub intervals: Intervals,
}

/// The id of the page-view record of a viz.
pub fn pageview_event_id(owner: &str, viz: &str) -> String {
    format!("event.pageview.viz.owner:{owner}.viz:{viz}")
}

/// The viz of a per-viz page-view record's event id (the inverse of [`pageview_event_id`]);
/// `None` for any other event id.
pub fn pageview_viz(event_id: &str) -> Option<&str> {
    let rest = event_id.strip_prefix("event.pageview.viz.owner:")?;
    let (_owner, viz) = rest.rsplit_once(".viz:")?;
    (!viz.is_empty()).then_some(viz)
}

/// One viz as stored in the fixtures: `{info, content, ops}`.
#[derive(Debug, Clone, PartialEq)]
pub struct VizDocs {
    pub info: DocumentInfo,
    pub content: Option<DocumentContent>,
    pub ops: Vec<ContentOp>,
}

fn parse<T: for<'de> Deserialize<'de>>(
    collection: &'static str,
    raw: &Value,
) -> Result<T, V2Error> {
    T::deserialize(raw).map_err(|e| V2Error {
        collection,
        id: raw_id(raw),
        reason: e.to_string(),
    })
}

/// The best id to name a raw document by in an error message.
pub fn raw_id(raw: &Value) -> String {
    ["id", "_id", "d"]
        .iter()
        .find_map(|k| id_string(raw.get(*k)?))
        .unwrap_or_else(|| "<no id>".to_string())
}

/// The `_id` (else `id`) of a raw document.
pub fn raw_id_of(raw: &Value) -> Option<String> {
    ["_id", "id"].iter().find_map(|k| id_string(raw.get(*k)?))
}

pub fn parse_info(raw: &Value) -> Result<DocumentInfo, V2Error> {
    parse("documentInfo", raw)
}

pub fn parse_content(raw: &Value) -> Result<DocumentContent, V2Error> {
    parse("documentContent", raw)
}

pub fn parse_user(raw: &Value) -> Result<User, V2Error> {
    parse("user", raw)
}

/// Parse op-log entries. One malformed entry fails the lot: the caller decides whether that is a
/// history fallback (it is, for content ops).
pub fn parse_ops(raw: &[Value]) -> Result<Vec<ContentOp>, V2Error> {
    raw.iter().map(|r| parse("o_documentContent", r)).collect()
}

pub fn parse_event_record(raw: &Value) -> Result<EventRecord, V2Error> {
    let id = raw
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| V2Error {
            collection: "eventRecords",
            id: raw_id(raw),
            reason: "missing string `id`".into(),
        })?
        .to_string();
    let mut intervals = Intervals::new();
    for name in INTERVALS {
        match raw.get(name) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                intervals.insert(name.to_string(), Value::Object(m.clone()));
            }
            Some(other) => {
                return Err(V2Error {
                    collection: "eventRecords",
                    id,
                    reason: format!("interval `{name}` is not an object: {other}"),
                })
            }
        }
    }
    Ok(EventRecord { id, intervals })
}

/// Parse a fixture file's `{info, content, ops}`. `content` may be absent or null.
pub fn parse_viz_docs(raw: &Value) -> Result<VizDocs, V2Error> {
    let info = parse_info(raw.get("info").unwrap_or(&Value::Null))?;
    let content = match raw.get("content") {
        None | Some(Value::Null) => None,
        Some(c) => Some(parse_content(c)?),
    };
    let ops = match raw.get("ops") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => parse_ops(a)?,
        Some(_) => {
            return Err(V2Error {
                collection: "o_documentContent",
                id: raw_id(raw.get("info").unwrap_or(&Value::Null)),
                reason: "ops is not a list".into(),
            })
        }
    };
    Ok(VizDocs { info, content, ops })
}

/// Convert a MongoDB document to the JSON shape this module parses (relaxed extended JSON:
/// ObjectIds become `{"$oid": …}`, dates `{"$date": …}`).
pub fn from_bson(doc: mongodb::bson::Document) -> Value {
    mongodb::bson::Bson::Document(doc).into_relaxed_extjson()
}

/// The payload of a snapshot: every field except ShareDB's envelope (`_id`, `_type`, `_v`, `_m`, `_o`).
pub fn payload(raw: &Value) -> Value {
    match raw {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "_id" | "_type" | "_v" | "_m" | "_o"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

// ---- lenient scalar readers -------------------------------------------------------------

fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(m) => m.get("$oid").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn number_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
        // Extended JSON of int64 / double.
        Value::Object(m) => m
            .get("$numberLong")
            .or_else(|| m.get("$numberDouble"))
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<f64>().ok())
            .map(|f| f as i64),
        _ => None,
    }
}

fn type_error<E: de::Error>(v: &Value, expected: &str) -> E {
    E::custom(format!("expected {expected}, found {v}"))
}

/// An id field: string, number (GitHub ids were sometimes stored as numbers) or ObjectId.
fn lenient_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => id_string(&v)
            .map(Some)
            .ok_or_else(|| type_error(&v, "an id")),
    }
}

fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => number_i64(&v)
            .map(Some)
            .ok_or_else(|| type_error(&v, "a number")),
    }
}

fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match lenient_i64(d)? {
        None => Ok(None),
        Some(n) if n >= 0 => Ok(Some(n as u64)),
        Some(n) => Err(de::Error::custom(format!("negative version {n}"))),
    }
}

fn lenient_u64_required<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    lenient_u64(d)?.ok_or_else(|| de::Error::custom("missing version"))
}

fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(v) => number_i64(&v)
            .map(|n| Some(n as f64))
            .ok_or_else(|| type_error(&v, "a number")),
    }
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pageview_record_names_its_viz() {
        let id = pageview_event_id("68416", "86a75dc8bdbe4965ba353a79d4bd44c8");
        assert_eq!(pageview_viz(&id), Some("86a75dc8bdbe4965ba353a79d4bd44c8"));
        // A Google user's id may hold anything, `.viz:` included: the last one names the viz.
        let odd = pageview_event_id("a.viz:b", "v1");
        assert_eq!(pageview_viz(&odd), Some("v1"));
        for other in [
            "event.pageview.viz",
            "event.pageview.viz.owner:68416",
            "event.pageview.viz.owner:68416.viz:",
            "event.other.viz.owner:1.viz:v",
        ] {
            assert_eq!(pageview_viz(other), None, "{other}");
        }
    }

    #[test]
    fn every_fixture_parses() {
        for (name, raw) in crate::fixtures::viz_fixtures() {
            let docs = parse_viz_docs(&raw).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(docs.info.id.is_some(), "{name}");
            assert!(docs.content.is_some(), "{name}");
        }
        for (name, raw) in crate::fixtures::user_fixtures() {
            let u = parse_user(&raw).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(u.user_name.is_some(), "{name}");
        }
    }

    #[test]
    fn primordial_fixture_fields() {
        let raw = crate::fixtures::viz_fixture("86a75dc8bdbe4965ba353a79d4bd44c8");
        let d = parse_viz_docs(&raw).unwrap();
        assert_eq!(d.info.owner.as_deref(), Some("68416"));
        assert_eq!(d.info.upvotes.as_ref().unwrap().len(), 35);
        assert_eq!(
            d.info.collaborators.as_ref().unwrap()[0].user_id.as_deref(),
            Some("13540669")
        );
        assert_eq!(d.content.as_ref().unwrap().envelope.version, Some(483));
        assert_eq!(d.ops.len(), 372);
        assert_eq!(d.ops[0].v, 111);
        assert!(!d.info.envelope.is_tombstone());
    }

    #[test]
    fn tombstone_and_partial_docs_parse() {
        let t =
            parse_info(&json!({"_id": "abc", "_type": null, "_v": 3, "forksCount": 2})).unwrap();
        assert!(t.envelope.is_tombstone());
        assert_eq!(t.id, None);
        let p = parse_info(&json!({"_id": "x", "_type": JSON0_TYPE, "imagesUpdatedTimestamp": 5}))
            .unwrap();
        assert_eq!(p.id, None);
        assert_eq!(p.document_type, None);
    }

    #[test]
    fn numbers_and_ids_are_read_leniently() {
        let i = parse_info(&json!({
            "_id": "a", "id": "a", "owner": 68416, "createdTimestamp": 1.5e9,
            "lastUpdatedTimestamp": {"$numberLong": "1600000000"}, "height": 0,
            "privacy": null, "upvotes": [{"userId": 7, "timestamp": 12.0}]
        }))
        .unwrap();
        assert_eq!(i.owner.as_deref(), Some("68416"));
        assert_eq!(i.created_timestamp, Some(1_500_000_000));
        assert_eq!(i.last_updated_timestamp, Some(1_600_000_000));
        assert_eq!(i.height, Some(0.0));
        assert_eq!(i.upvotes.unwrap()[0].user_id.as_deref(), Some("7"));
        let op = parse_ops(&[json!({"_id": {"$oid": "5c61445774bf3374d65cad47"}, "v": 3.0, "op": [], "m": {"ts": 1}})]).unwrap();
        assert_eq!(op[0].op_id.as_deref(), Some("5c61445774bf3374d65cad47"));
        assert_eq!(op[0].v, 3);
    }

    #[test]
    fn wrong_types_are_errors_naming_the_doc() {
        let e = parse_info(&json!({"_id": "bad1", "id": "bad1", "title": 42})).unwrap_err();
        assert!(e.to_string().contains("bad1"), "{e}");
        assert!(e.to_string().contains("documentInfo"), "{e}");
        let e = parse_content(&json!({"_id": "bad2", "files": "nope"})).unwrap_err();
        assert!(e.to_string().contains("bad2"), "{e}");
        let e = parse_ops(&[json!({"d": "bad3", "op": []})]).unwrap_err();
        assert!(
            e.to_string().contains("bad3") && e.to_string().contains("`v`"),
            "{e}"
        );
        let e = parse_event_record(&json!({"id": "e", "days": 3})).unwrap_err();
        assert!(e.to_string().contains("days"), "{e}");
    }

    #[test]
    fn null_file_text_reads_as_empty() {
        let c = parse_content(
            &json!({"_id": "a", "id": "a", "files": [{"name": "x", "text": null}, {"name": "y"}]}),
        )
        .unwrap();
        assert_eq!(
            c.files
                .unwrap()
                .iter()
                .map(|f| f.text.as_str())
                .collect::<Vec<_>>(),
            ["", ""]
        );
    }

    #[test]
    fn payload_strips_the_envelope() {
        let p = payload(
            &json!({"_id": "a", "_type": "t", "_v": 1, "_m": {}, "_o": "x", "id": "a", "files": []}),
        );
        assert_eq!(p, json!({"id": "a", "files": []}));
    }

    #[test]
    fn bson_documents_convert() {
        use mongodb::bson::{doc, oid::ObjectId};
        let oid = ObjectId::parse_str("65176ab00b919d05032e75ff").unwrap();
        let raw =
            from_bson(doc! {"_id": oid, "v": 4_i64, "d": "viz", "op": [], "m": {"ts": 1_i64}});
        let op = parse_ops(&[raw]).unwrap();
        assert_eq!(op[0].op_id.as_deref(), Some("65176ab00b919d05032e75ff"));
        assert_eq!(op[0].v, 4);
    }
}
