//! The three-way merge of a re-sync (spec 3.4, "V3 owns what its users did"). V2 and V3 are both
//! live: between two catch-ups V2's users edit a viz in V2 and V3's users rename it, hide it,
//! trash it in V3. A re-sync brings what V2 changed since the last migration and never undoes
//! what V3 did. The base is what the migration last wrote (the ledger keeps it, see
//! [`crate::ledger::Migrated::info`]); per Info field:
//!
//! | V2 since the base | V3 since the base | written |
//! |---|---|---|
//! | unchanged | anything | V3's value (nothing to bring) |
//! | changed | unchanged | V2's value |
//! | changed | changed to V2's value | V2's value (they agree) |
//! | changed | changed otherwise | V3's value, and the field is a **conflict** |
//!
//! Fields the translation does not produce (`trashed`, whatever V3 adds later) are V3's and
//! never touched. The counts are not merged: they are recounted from V3 whoever changed them.
//! `migratedTimestamp` is ours and moves only with a field that changes, so a re-run that brings
//! nothing writes no op. `start`, `end` and `updated` follow the content: ours when the content
//! is the migration's (they name the commits just appended), V3's when V3 edited or committed
//! it since. Pure: the caller reads, decides the content's side, and writes.

use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// Info fields recounted from V3 on every write, never merged (spec 3: `forksCount`,
/// `upvotesCount` are the number of V3 docs, whoever changed them last).
pub const RECOUNTED: [&str; 2] = ["forksCount", "upvotesCount"];

/// The migration's own stamp: moves only when the merge changes a field.
pub const STAMP: &str = "migratedTimestamp";

/// Info fields that follow the content's commit chain: V3's whenever V3 owns the content (it
/// edited or committed since the migration's last write), whatever V2 did.
pub const HISTORY: [&str; 3] = ["start", "end", "updated"];

/// What a merge decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The payload to bring V3's doc to (V3's own fields included, untouched).
    pub data: Value,
    /// Fields both sides changed, each to its own value: V3's kept. Sorted.
    pub conflicts: Vec<String>,
}

/// Merge `ours` (the translation of V2 now, counts already recounted) into `v3` (the payload V3
/// holds) against `base` (what the migration last wrote). All three are Info payloads.
/// `history_ours`: the content is the migration's (V3 neither edited nor committed since), so
/// the [`HISTORY`] fields are ours (they name the chain just appended); otherwise V3's.
pub fn info(base: &Value, ours: &Value, v3: &Value, history_ours: bool) -> Merged {
    let empty = Map::new();
    let (b, o, v) = (
        base.as_object().unwrap_or(&empty),
        ours.as_object().unwrap_or(&empty),
        v3.as_object().unwrap_or(&empty),
    );
    let mut out = v.clone();
    let mut conflicts = Vec::new();
    let keys: BTreeSet<&String> = o.keys().chain(b.keys()).collect();
    for k in keys {
        if k == STAMP {
            continue;
        }
        let (was, now, held) = (b.get(k), o.get(k), v.get(k));
        if RECOUNTED.contains(&k.as_str()) || (history_ours && HISTORY.contains(&k.as_str())) {
            if let Some(n) = now {
                out.insert(k.clone(), n.clone());
            }
            continue;
        }
        if HISTORY.contains(&k.as_str()) {
            // V3's chain: whatever V2 did, V3's `start`, `end`, `updated` stay.
            continue;
        }
        if was == now {
            // V2 did not change it: whatever V3 holds stays.
            continue;
        }
        if held == was || held == now {
            match now {
                Some(n) => out.insert(k.clone(), n.clone()),
                None => out.remove(k),
            };
        } else {
            conflicts.push(k.clone());
        }
    }
    let changed = out
        .iter()
        .filter(|(k, _)| *k != STAMP && !RECOUNTED.contains(&k.as_str()))
        .any(|(k, x)| v.get(k) != Some(x))
        || v.keys().any(|k| !out.contains_key(k));
    if changed {
        if let Some(stamp) = o.get(STAMP) {
            out.insert(STAMP.to_string(), stamp.clone());
        }
    }
    Merged {
        data: Value::Object(out),
        conflicts,
    }
}

/// The reason of a `conflict`: the fields both sides changed (`content` for the files).
pub fn conflict_reason(fields: &[String]) -> String {
    format!(
        "changed in both V2 and V3 since the last migration: {}; V3's kept, V2's other changes applied",
        fields.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"id": "v", "title": "T", "visibility": "public", "owner": "u", "end": "e1",
               "start": "s", "updated": 10, "forksCount": 1, "upvotesCount": 2,
               "migratedTimestamp": 100})
    }

    fn with(v: &Value, f: impl FnOnce(&mut Map<String, Value>)) -> Value {
        let mut v = v.clone();
        f(v.as_object_mut().unwrap());
        v
    }

    #[test]
    fn nothing_changed_writes_nothing_not_even_the_stamp() {
        let ours = with(&base(), |o| {
            o.insert(STAMP.into(), json!(200));
        });
        let m = info(&base(), &ours, &base(), true);
        assert_eq!(m.data, base());
        assert!(m.conflicts.is_empty());
    }

    #[test]
    fn v2_only_changes_are_brought_with_the_stamp() {
        let ours = with(&base(), |o| {
            o.insert("title".into(), json!("New"));
            o.insert(STAMP.into(), json!(200));
        });
        let m = info(&base(), &ours, &base(), true);
        assert_eq!(m.data["title"], "New");
        assert_eq!(m.data[STAMP], 200);
        assert!(m.conflicts.is_empty());
    }

    #[test]
    fn v3_only_changes_stay_and_fields_v3_added_are_never_touched() {
        let v3 = with(&base(), |o| {
            o.insert("visibility".into(), json!("private"));
            o.insert("trashed".into(), json!(true));
            o.insert("title".into(), json!("Mine"));
        });
        let ours = with(&base(), |o| {
            o.insert("end".into(), json!("e2"));
            o.insert("updated".into(), json!(20));
            o.insert(STAMP.into(), json!(200));
        });
        let m = info(&base(), &ours, &v3, true);
        assert_eq!(m.data["visibility"], "private");
        assert_eq!(m.data["trashed"], true);
        assert_eq!(m.data["title"], "Mine");
        assert_eq!(m.data["end"], "e2", "V2's new history lands");
        assert_eq!(m.data["updated"], 20);
        assert!(m.conflicts.is_empty());
    }

    #[test]
    fn both_changed_keeps_v3_and_names_the_field() {
        let v3 = with(&base(), |o| {
            o.insert("title".into(), json!("V3's"));
        });
        let ours = with(&base(), |o| {
            o.insert("title".into(), json!("V2's"));
            o.insert("visibility".into(), json!("private"));
            o.insert(STAMP.into(), json!(200));
        });
        let m = info(&base(), &ours, &v3, true);
        assert_eq!(m.data["title"], "V3's");
        assert_eq!(
            m.data["visibility"], "private",
            "the other field still lands"
        );
        assert_eq!(m.conflicts, vec!["title".to_string()]);
        assert!(conflict_reason(&m.conflicts).contains("title"));
    }

    #[test]
    fn both_changed_to_the_same_value_agree() {
        let v3 = with(&base(), |o| {
            o.insert("visibility".into(), json!("private"));
        });
        let ours = v3.clone();
        let m = info(&base(), &ours, &v3, true);
        assert!(m.conflicts.is_empty());
        assert_eq!(m.data, v3);
    }

    #[test]
    fn counts_are_recounted_whoever_changed_them() {
        let v3 = with(&base(), |o| {
            o.insert("upvotesCount".into(), json!(3));
        });
        let ours = with(&base(), |o| {
            o.insert("upvotesCount".into(), json!(4));
            o.insert("forksCount".into(), json!(5));
            o.insert(STAMP.into(), json!(200));
        });
        let m = info(&base(), &ours, &v3, true);
        assert_eq!(m.data["upvotesCount"], 4);
        assert_eq!(m.data["forksCount"], 5);
        assert!(m.conflicts.is_empty());
        assert_eq!(m.data[STAMP], 100, "a recount alone does not stamp");
    }

    #[test]
    fn a_field_v2_drops_is_removed_unless_v3_changed_it() {
        let b = with(&base(), |o| {
            o.insert("forkedFromIsBackfilled".into(), json!(true));
        });
        let ours = base();
        assert!(info(&b, &ours, &b, true)
            .data
            .get("forkedFromIsBackfilled")
            .is_none());
        let v3 = with(&b, |o| {
            o.insert("forkedFromIsBackfilled".into(), json!(false));
        });
        let m = info(&b, &ours, &v3, true);
        assert_eq!(m.conflicts, vec!["forkedFromIsBackfilled".to_string()]);
    }

    #[test]
    fn a_legacy_base_without_a_field_brings_v2s_value_when_v3_has_none() {
        let b = with(&base(), |o| {
            o.remove("visibility");
        });
        let v3 = b.clone();
        let ours = with(&base(), |o| {
            o.insert("visibility".into(), json!("private"));
        });
        assert_eq!(info(&b, &ours, &v3, true).data["visibility"], "private");
    }

    #[test]
    fn history_of_v3_owned_content_stays() {
        let v3 = with(&base(), |o| {
            o.insert("end".into(), json!("v3-commit"));
            o.insert("updated".into(), json!(15));
        });
        let ours = with(&base(), |o| {
            o.insert("end".into(), json!("e2"));
            o.insert("updated".into(), json!(20));
            o.insert("title".into(), json!("New"));
        });
        let m = info(&base(), &ours, &v3, false);
        assert_eq!(m.data["end"], "v3-commit");
        assert_eq!(m.data["updated"], 15);
        assert_eq!(m.data["title"], "New");
        assert!(m.conflicts.is_empty());
    }
}
