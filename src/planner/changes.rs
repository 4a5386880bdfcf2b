//! Change detection for the daily catch-up (spec 4.1 `--since-last`): which migrated vizzes V2
//! changed although no timestamp a window reads moved.
//!
//! V2 leaves `lastUpdatedTimestamp` alone when a viz is made private, a collaborator is added
//! or removed, or the viz is viewed, and its hourly scoring job rewrites every info (so `_v` and
//! `_m.mtime` say nothing). So the planner compares, for every viz the ledger holds as migrated,
//! what the translation would read now ([`Source`], from a projected scan: no content text, no
//! op log) with what the last migration read (the ledger's `fingerprint` and, field by field,
//! `source`), and V2's page-view count with the one last merged. A viz that differs is planned
//! with the fields that moved, which `planner plan --dry-run` shows.
//!
//! Decisions: a viz V2 no longer has, or has as a tombstone, a non-visualization or a partial
//! info, is not planned here (its job could only skip or fail it; `verify` reports deleted
//! vizzes, spec 3.4); a viz whose content doc is gone likewise. A viz never recorded as
//! migrated is the window's (or `--all`'s) to plan, not this pass's. The comparison is done here
//! in the planner, not by workers in batches: three projected scans cost a few V2 replies per
//! thousands of vizzes (the reply is [`crate::v2::reader::SCAN_BATCH`] documents), far below what
//! a job per viz would read, and they plan only what changed.

use crate::ledger::RecordedSource;
use crate::translate::Source;
use crate::v2::reader::SourceScan;
use serde::Serialize;
use std::collections::HashMap;

/// A migrated viz V2 changed since its last migration.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub viz: String,
    /// V2 `createdTimestamp`: jobs are published in `(created, viz)` order.
    pub created: i64,
    /// What moved: the [`crate::translate::SourceFields`] names, `pageViews`, or `source` when
    /// the ledger's record predates field-by-field records (its fingerprint differs).
    pub fields: Vec<&'static str>,
}

impl Change {
    /// Who may see or edit the viz changed (visibility, collaborators, owner): the changes whose
    /// lag is a privacy or access-control lag.
    pub fn is_access(&self) -> bool {
        self.fields
            .iter()
            .any(|f| matches!(*f, "visibility" | "collaborators" | "owner"))
    }
}

/// The migrated vizzes whose V2 inputs differ from what the ledger recorded, by viz id.
pub fn compare(scan: &SourceScan, recorded: &[RecordedSource]) -> Vec<Change> {
    let infos: HashMap<&str, _> = scan
        .infos
        .iter()
        .filter(|i| !i.envelope.is_tombstone())
        .filter(|i| i.document_type.as_deref() == Some("visualization"))
        .filter_map(|i| {
            let id = i.id.as_deref()?;
            (i.envelope.doc_id.as_deref() == Some(id)).then_some((id, i))
        })
        .collect();
    let mut changes: Vec<Change> = recorded
        .iter()
        .filter_map(|r| {
            let info = infos.get(r.viz.as_str())?;
            let content_v = *scan.content_versions.get(&r.viz)?;
            let source = Source::of(&r.viz, info, content_v)?;
            let mut fields = Vec::new();
            if source.fingerprint() != r.fingerprint {
                let moved = r
                    .source
                    .as_ref()
                    .map(|then| source.fields().changed_since(then))
                    .unwrap_or_default();
                if moved.is_empty() {
                    fields.push("source");
                }
                fields.extend(moved);
            }
            if scan.page_views.get(&r.viz).copied() != r.page_views {
                fields.push("pageViews");
            }
            (!fields.is_empty()).then(|| Change {
                viz: r.viz.clone(),
                created: info.created_timestamp.unwrap_or_default(),
                fields,
            })
        })
        .collect();
    changes.sort_by(|a, b| (a.created, &a.viz).cmp(&(b.created, &b.viz)));
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v2::{parse_info, DocumentInfo};
    use serde_json::{json, Value};

    fn info(id: &str, extra: Value) -> DocumentInfo {
        let mut raw = json!({"_id": id, "id": id, "_type": "http://sharejs.org/types/JSONv0",
            "documentType": "visualization", "owner": "o1", "title": " A ", "createdTimestamp": 100,
            "lastUpdatedTimestamp": 200, "height": 600, "privacy": "public",
            "upvotes": [{"userId": "u1", "timestamp": 150}], "collaborators": [{"userId": "c1"}]});
        for (k, v) in extra.as_object().unwrap() {
            raw[k] = v.clone();
        }
        parse_info(&raw).unwrap()
    }

    /// The ledger as a migration of `info` at content version `v` with `views` left it.
    fn recorded(info: &DocumentInfo, v: u64, views: Option<f64>, fields: bool) -> RecordedSource {
        let id = info.id.clone().unwrap();
        let s = Source::of(&id, info, v).unwrap();
        RecordedSource {
            viz: id,
            fingerprint: s.fingerprint(),
            source: fields.then(|| s.fields()),
            page_views: views,
        }
    }

    fn scan(infos: Vec<DocumentInfo>, v: u64, views: &[(&str, f64)]) -> SourceScan {
        SourceScan {
            content_versions: infos.iter().map(|i| (i.id.clone().unwrap(), v)).collect(),
            infos,
            page_views: views.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
        }
    }

    #[test]
    fn each_input_the_translation_reads_is_a_change_and_nothing_else_is() {
        let base = info("a", json!({}));
        let then = [recorded(&base, 7, Some(10.0), true)];
        let fields_of = |now: DocumentInfo, v: u64, views: &[(&str, f64)]| {
            compare(&scan(vec![now], v, views), &then)
                .into_iter()
                .flat_map(|c| c.fields)
                .collect::<Vec<_>>()
        };
        assert!(fields_of(base.clone(), 7, &[("a", 10.0)]).is_empty());
        let cases: [(Value, &[&str]); 8] = [
            (json!({"privacy": "private"}), &["visibility"]),
            (json!({"collaborators": []}), &["collaborators"]),
            (json!({"upvotes": []}), &["upvotes"]),
            (
                json!({"title": "B", "lastUpdatedTimestamp": 300}),
                &["title", "updated"],
            ),
            (json!({"height": 0}), &["height"]),
            (json!({"forkedFrom": "p"}), &["forkedFrom"]),
            (json!({"owner": "o2"}), &["owner"]),
            // What the translation does not read: scores, counts, V2's `_v`, surrounding spaces.
            (
                json!({"scoreHackerHot": 3, "upvotesCount": 9, "_v": 99, "title": "A"}),
                &[],
            ),
        ];
        for (extra, want) in cases {
            assert_eq!(
                fields_of(info("a", extra.clone()), 7, &[("a", 10.0)]),
                want,
                "{extra}"
            );
        }
        assert_eq!(fields_of(base.clone(), 8, &[("a", 10.0)]), ["content"]);
        assert_eq!(fields_of(base.clone(), 7, &[("a", 11.0)]), ["pageViews"]);
        assert_eq!(fields_of(base.clone(), 7, &[]), ["pageViews"]);
    }

    #[test]
    fn a_record_without_fields_compares_by_fingerprint() {
        let base = info("a", json!({}));
        let then = [recorded(&base, 7, None, false)];
        let private = info("a", json!({"privacy": "private"}));
        let c = compare(&scan(vec![private], 7, &[]), &then);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].fields, ["source"]);
        assert!(compare(&scan(vec![base], 7, &[]), &then).is_empty());
    }

    #[test]
    fn only_live_recorded_vizzes_are_compared_in_creation_order() {
        let a = info("a", json!({"createdTimestamp": 300}));
        let b = info("b", json!({"createdTimestamp": 100}));
        let then = vec![
            recorded(&a, 1, None, true),
            recorded(&b, 1, None, true),
            recorded(&info("gone", json!({})), 1, None, true),
            recorded(&info("dead", json!({})), 1, None, true),
            recorded(&info("data", json!({})), 1, None, true),
        ];
        let now = vec![
            info("a", json!({"privacy": "private", "createdTimestamp": 300})),
            info("b", json!({"privacy": "private", "createdTimestamp": 100})),
            // Never migrated: the window's to plan.
            info("new", json!({"privacy": "private"})),
            info("dead", json!({"_type": null, "privacy": "private"})),
            info(
                "data",
                json!({"documentType": "dataset", "privacy": "private"}),
            ),
        ];
        let c = compare(&scan(now, 2, &[]), &then);
        let ids: Vec<&str> = c.iter().map(|c| c.viz.as_str()).collect();
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(c[0].created, 100);
        assert_eq!(c[0].fields, ["content", "visibility"]);
    }
}
