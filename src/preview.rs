//! `worker preview --diff`: what a job on one viz would change in V3 now, writing nothing.
//!
//! The documents come from [`Migrator::expected`] (the translation of V2 as it is now, hung from
//! its parent as V3 has it now — what `worker preview` prints); each is looked up in V3 by id
//! and reported as `new` (V3 lacks it, or holds it deleted), `unchanged`, or `changed` with a
//! field-level diff of the payloads (ShareDB envelopes are not compared: V3's `_v`, `_m`, `_o`
//! are the store's business). The diff names paths (`files.<id>.text`, `intervals.2019-01`) with
//! both values as compact JSON cut to [`VALUE_CHARS`]; arrays of different lengths are reported
//! whole. Commits are compared in the plain `commit` collection, by their deterministic ids.
//! `info.migratedTimestamp` is not compared: it is the time of whichever job writes, so it
//! differs on every preview, and a job that finds nothing else to change writes nothing.

use crate::migrate::{JobError, Migrator};
use crate::v3::collections as c3;
use crate::v3::store::StoreError;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// Fields stamped with the time of the write (top level of a payload): never a difference.
const STAMPED: [&str; 1] = ["migratedTimestamp"];

/// Longest value shown in a field diff (characters of compact JSON).
pub const VALUE_CHARS: usize = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    New,
    Unchanged,
    Changed,
}

/// One field that differs: its path and both values (`None`: absent on that side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldDiff {
    pub path: String,
    pub v3: Option<String>,
    pub job: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DocDiff {
    pub collection: String,
    pub id: String,
    pub status: Status,
    /// For `changed`: the differing fields.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldDiff>,
}

/// Every document a job on the viz would write, against V3 now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub viz: String,
    pub docs: Vec<DocDiff>,
    /// Documents per status (`new`, `unchanged`, `changed`).
    pub counts: BTreeMap<String, usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// The viz does not translate, or V2 could not be read.
    #[error("{0}")]
    Job(#[from] JobError),
    #[error("reading V3: {0}")]
    V3(#[from] StoreError),
}

fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > VALUE_CHARS {
        s.chars().take(VALUE_CHARS - 1).collect::<String>() + "…"
    } else {
        s
    }
}

/// The field-level differences between `v3` and `job`, at `path`.
pub fn field_diff(path: &str, v3: Option<&Value>, job: Option<&Value>, out: &mut Vec<FieldDiff>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (v3, job) {
        (Some(a), Some(b)) if a == b => {}
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            for (k, va) in a {
                field_diff(&join(k), Some(va), b.get(k), out);
            }
            for (k, vb) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
                field_diff(&join(k), None, Some(vb), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                field_diff(&join(&i.to_string()), Some(va), Some(vb), out);
            }
        }
        (a, b) => out.push(FieldDiff {
            path: if path.is_empty() {
                "(doc)".into()
            } else {
                path.into()
            },
            v3: a.map(compact),
            job: b.map(compact),
        }),
    }
}

fn doc_diff(collection: &str, id: &str, now: Option<&Value>, wanted: &Value) -> DocDiff {
    let (status, fields) = match now {
        None => (Status::New, Vec::new()),
        Some(now) => {
            let mut fields = Vec::new();
            field_diff("", Some(now), Some(wanted), &mut fields);
            fields.retain(|f| !STAMPED.contains(&f.path.as_str()));
            let status = if fields.is_empty() {
                Status::Unchanged
            } else {
                Status::Changed
            };
            (status, fields)
        }
    };
    DocDiff {
        collection: collection.to_string(),
        id: id.to_string(),
        status,
        fields,
    }
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("V3 payloads serialize")
}

fn id_of(v: &Value) -> String {
    v.get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// What a job on `viz` would change in V3 now. Reads V2 and V3, writes nothing.
pub async fn diff(m: &Migrator, viz: &str) -> Result<Diff, PreviewError> {
    let t = m.expected(viz).await?;
    let mut wanted: Vec<(&str, Vec<Value>)> = vec![
        (c3::INFO, vec![to_value(&t.info)]),
        (c3::CONTENT, vec![t.content.clone()]),
        (c3::USER, t.users.iter().map(to_value).collect()),
        (c3::UPVOTE, t.upvotes.iter().map(to_value).collect()),
        (c3::PERMISSION, t.permissions.iter().map(to_value).collect()),
    ];
    if let Some(a) = &t.analytics {
        wanted.push((c3::ANALYTICS_EVENT, vec![to_value(a)]));
    }
    let mut docs = Vec::new();
    for (coll, payloads) in wanted {
        let ids: Vec<String> = payloads
            .iter()
            .map(|p| {
                if coll == c3::CONTENT {
                    viz.to_string() // the content doc's id is the viz id
                } else {
                    id_of(p)
                }
            })
            .collect();
        let now = m.v3.snapshots(coll, &ids).await?;
        for (id, p) in ids.iter().zip(&payloads) {
            let current = now
                .get(id)
                .filter(|s| s.doc_type.is_some())
                .map(|s| &s.data);
            docs.push(doc_diff(coll, id, current, p));
        }
    }
    let ids: Vec<String> = t.commits.iter().map(|c| c.id.clone()).collect();
    let now: HashMap<String, Value> =
        m.v3.commits(&ids)
            .await?
            .into_iter()
            .map(|c| (c.id.clone(), to_value(&c)))
            .collect();
    for c in &t.commits {
        docs.push(doc_diff(c3::COMMIT, &c.id, now.get(&c.id), &to_value(c)));
    }
    let mut counts = BTreeMap::new();
    for d in &docs {
        *counts
            .entry(to_value(&d.status).as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    Ok(Diff {
        viz: viz.to_string(),
        docs,
        counts,
    })
}

impl Diff {
    /// One line per document (`changed` ones followed by their fields), then a summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for d in &self.docs {
            let status = match d.status {
                Status::New => "new",
                Status::Unchanged => "unchanged",
                Status::Changed => "changed",
            };
            out += &format!("{status:<9} {} {}\n", d.collection, d.id);
            for f in &d.fields {
                out += &format!(
                    "  {}: {} -> {}\n",
                    f.path,
                    f.v3.as_deref().unwrap_or("(absent)"),
                    f.job.as_deref().unwrap_or("(absent)")
                );
            }
        }
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect();
        out += &format!("viz {}: {}", self.viz, counts.join(", "));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diffs_name_paths_and_both_values() {
        let mut out = Vec::new();
        field_diff(
            "",
            Some(
                &json!({"title": "a", "files": {"f1": {"name": "x", "text": "1"}}, "gone": 1, "list": [1, 2]}),
            ),
            Some(
                &json!({"title": "b", "files": {"f1": {"name": "x", "text": "2"}}, "added": true, "list": [1, 2, 3]}),
            ),
            &mut out,
        );
        let paths: Vec<(&str, Option<&str>, Option<&str>)> = out
            .iter()
            .map(|f| (f.path.as_str(), f.v3.as_deref(), f.job.as_deref()))
            .collect();
        assert_eq!(
            paths,
            [
                ("title", Some("\"a\""), Some("\"b\"")),
                ("files.f1.text", Some("\"1\""), Some("\"2\"")),
                ("gone", Some("1"), None),
                ("list", Some("[1,2]"), Some("[1,2,3]")),
                ("added", None, Some("true")),
            ]
        );
    }

    #[test]
    fn long_values_are_cut() {
        let long = Value::String("x".repeat(500));
        let d = doc_diff(
            "content",
            "v",
            Some(&json!({"t": long})),
            &json!({"t": "y"}),
        );
        assert_eq!(d.status, Status::Changed);
        assert_eq!(
            d.fields[0].v3.as_ref().unwrap().chars().count(),
            VALUE_CHARS
        );
        let same = doc_diff("content", "v", Some(&json!({"t": 1})), &json!({"t": 1}));
        assert_eq!(same.status, Status::Unchanged);
        assert_eq!(
            doc_diff("content", "v", None, &json!({})).status,
            Status::New
        );
        let stamped = doc_diff(
            "info",
            "v",
            Some(&json!({"migratedTimestamp": 1})),
            &json!({"migratedTimestamp": 2}),
        );
        assert_eq!(stamped.status, Status::Unchanged);
    }
}
