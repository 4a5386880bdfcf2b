//! Analytics: moving V2's per-viz page-view record (`eventRecords`) into V3's `analyticsevent`.
//!
//! V3 may already be counting views of a migrated viz, so the V2 record is never copied over the V3
//! one. Instead each run adds only the *delta* between the V2 record now and the V2 record at the
//! last merge (the ledger keeps that snapshot), then re-applies V2's cap of 90 keys per interval,
//! dropping the oldest. Bucket keys are zero-padded time formats, so lexicographic order is
//! chronological order. A bucket whose V2 count went *down* (V2 itself capped it away and it came
//! back, or data was repaired) contributes nothing: merging never subtracts views V3 counted.
//!
//! The baseline of a merge — the V2 record already merged — is kept *in the V3 doc itself*
//! (`v2Merged`, written in the same snapshot as the counts it produced), not only in the ledger:
//! the ledger is written last, so a job stopped after its analytics write and before its ledger
//! record (a crash, a lost race with a fork's job migrating this viz as its parent) would
//! otherwise merge V2's whole count a second time on its re-run. Merging is therefore idempotent
//! by construction: [`merge_record`] onto its own output adds nothing.

use crate::v2::{EventRecord, Intervals, INTERVALS};
use crate::v3::AnalyticsEvent;
use serde_json::{Map, Number, Value};

/// V2's (and V3's) maximum number of buckets kept per interval.
pub const MAX_KEYS_PER_INTERVAL: usize = 90;

fn count(v: Option<&Value>) -> f64 {
    v.and_then(Value::as_f64).unwrap_or(0.0)
}

fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::Number(Number::from(n as i64))
    } else {
        Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// Merge the V2 delta into the V3 intervals. `v3_now` is what V3 has (None: no doc yet),
/// `v2_now` the V2 record now, `v2_last` the V2 record at the previous merge (None: never merged).
fn bucket<'a>(m: Option<&'a Intervals>, name: &str) -> Option<&'a Map<String, Value>> {
    m.and_then(|m| m.get(name)).and_then(Value::as_object)
}

pub fn merge(
    v3_now: Option<&Intervals>,
    v2_now: &Intervals,
    v2_last: Option<&Intervals>,
) -> Intervals {
    let empty = Map::new();
    let mut out = Intervals::new();
    for name in INTERVALS {
        let mut merged: Vec<(String, f64)> = bucket(v3_now, name)
            .unwrap_or(&empty)
            .iter()
            .map(|(k, v)| (k.clone(), count(Some(v))))
            .collect();
        let last = bucket(v2_last, name);
        for (k, v) in bucket(Some(v2_now), name).unwrap_or(&empty) {
            let delta = count(Some(v)) - count(last.and_then(|l| l.get(k)));
            if delta <= 0.0 {
                continue;
            }
            match merged.iter_mut().find(|(mk, _)| mk == k) {
                Some((_, n)) => *n += delta,
                None => merged.push((k.clone(), delta)),
            }
        }
        merged.sort_by(|a, b| a.0.cmp(&b.0));
        let drop = merged.len().saturating_sub(MAX_KEYS_PER_INTERVAL);
        let kept: Map<String, Value> = merged
            .into_iter()
            .skip(drop)
            .map(|(k, n)| (k, number(n)))
            .collect();
        if !kept.is_empty()
            || bucket(v3_now, name).is_some()
            || bucket(Some(v2_now), name).is_some()
        {
            out.insert(name.to_string(), Value::Object(kept));
        }
    }
    out
}

/// The V3 page-view record after merging V2's `rec` into what V3 holds now (`v3_now`; `None`
/// when V3 has no such doc). The baseline is the V2 record `v3_now` says it holds; a doc without
/// one (V3's own, or written before the baseline was kept there) falls back to `ledger_last`,
/// what the ledger recorded as merged.
pub fn merge_record(
    v3_now: Option<&AnalyticsEvent>,
    rec: &EventRecord,
    ledger_last: Option<&Intervals>,
) -> AnalyticsEvent {
    let baseline = match v3_now {
        Some(doc) => doc.v2_merged.as_ref().or(ledger_last),
        None => None,
    };
    AnalyticsEvent {
        id: rec.id.clone(),
        intervals: merge(v3_now.map(|d| &d.intervals), &rec.intervals, baseline),
        v2_merged: Some(rec.intervals.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn iv(v: Value) -> Intervals {
        v.as_object().unwrap().clone()
    }

    fn record(v: Value) -> EventRecord {
        EventRecord {
            id: "event.pageview.viz.owner:1.viz:a".into(),
            intervals: iv(v),
        }
    }

    #[test]
    fn merging_a_record_onto_its_own_result_adds_nothing() {
        let rec = record(json!({"days": {"2020-01-01": 1206}, "all": {"all": 1206}}));
        let first = merge_record(None, &rec, None);
        assert_eq!(first.intervals, rec.intervals);
        assert_eq!(first.v2_merged.as_ref(), Some(&rec.intervals));
        // A re-run whose ledger never learned of the first merge (stopped before its record).
        assert_eq!(merge_record(Some(&first), &rec, None), first);
        // ... or whose ledger holds an older baseline.
        let older = iv(json!({"all": {"all": 1000}}));
        assert_eq!(merge_record(Some(&first), &rec, Some(&older)), first);
    }

    #[test]
    fn merging_keeps_v3_views_and_adds_what_v2_counted_since() {
        let rec = record(json!({"all": {"all": 10}}));
        let mut doc = merge_record(None, &rec, None);
        doc.intervals = iv(json!({"all": {"all": 13}})); // V3 counted 3 views
        let later = record(json!({"all": {"all": 12}})); // V2 counted 2 more
        let merged = merge_record(Some(&doc), &later, None);
        assert_eq!(merged.intervals, iv(json!({"all": {"all": 15}})));
        assert_eq!(merge_record(Some(&merged), &later, None), merged);
    }

    #[test]
    fn a_v3_doc_without_a_baseline_falls_back_to_the_ledger() {
        let rec = record(json!({"all": {"all": 10}}));
        let legacy = AnalyticsEvent {
            id: rec.id.clone(),
            intervals: iv(json!({"all": {"all": 10}})),
            v2_merged: None,
        };
        let last = iv(json!({"all": {"all": 10}}));
        assert_eq!(
            merge_record(Some(&legacy), &rec, Some(&last)).intervals,
            legacy.intervals
        );
        // V3's own doc, never merged: V2's whole count is added.
        assert_eq!(
            merge_record(Some(&legacy), &rec, None).intervals,
            iv(json!({"all": {"all": 20}}))
        );
    }

    #[test]
    fn first_merge_copies_v2() {
        let v2 = iv(json!({"days": {"2020-01-01": 3}, "all": {"all": 3}}));
        assert_eq!(merge(None, &v2, None), v2);
    }

    #[test]
    fn adds_only_the_delta_and_never_double_counts() {
        let v2_then = iv(json!({"days": {"2020-01-01": 3}, "all": {"all": 3}}));
        // V3 counted 5 views of its own since the first merge.
        let v3 = iv(json!({"days": {"2020-01-01": 3, "2020-01-02": 5}, "all": {"all": 8}}));
        let v2_now = iv(json!({"days": {"2020-01-01": 4, "2020-01-02": 2}, "all": {"all": 6}}));
        let merged = merge(Some(&v3), &v2_now, Some(&v2_then));
        assert_eq!(
            merged,
            iv(json!({"days": {"2020-01-01": 4, "2020-01-02": 7}, "all": {"all": 11}}))
        );
        // Merging again with the same V2 record (the ledger now holds v2_now) changes nothing.
        assert_eq!(merge(Some(&merged), &v2_now, Some(&v2_now)), merged);
    }

    #[test]
    fn never_subtracts() {
        let v3 = iv(json!({"all": {"all": 10}}));
        let merged = merge(
            Some(&v3),
            &iv(json!({"all": {"all": 2}})),
            Some(&iv(json!({"all": {"all": 5}}))),
        );
        assert_eq!(merged, v3);
    }

    #[test]
    fn caps_at_90_keys_dropping_the_oldest() {
        let mut days = Map::new();
        for d in 0..100 {
            days.insert(
                format!("2020-{:02}-{:02}", d / 28 + 1, d % 28 + 1),
                json!(1),
            );
        }
        let v2 = iv(json!({ "days": days }));
        let merged = merge(None, &v2, None);
        let kept = merged["days"].as_object().unwrap();
        assert_eq!(kept.len(), MAX_KEYS_PER_INTERVAL);
        assert!(!kept.contains_key("2020-01-01"));
        assert!(kept.contains_key("2020-04-16"));
        let keys: Vec<&String> = kept.keys().collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted oldest first");
    }
}
