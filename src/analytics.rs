//! Analytics: moving V2's per-viz page-view record (`eventRecords`) into V3's `analyticsevent`.
//!
//! V3 may already be counting views of a migrated viz, so the V2 record is never copied over the V3
//! one. Instead each run adds only the *delta* between the V2 record now and the V2 record at the
//! last merge (the ledger keeps that snapshot), then re-applies V2's cap of 90 keys per interval,
//! dropping the oldest. Bucket keys are zero-padded time formats, so lexicographic order is
//! chronological order. A bucket whose V2 count went *down* (V2 itself capped it away and it came
//! back, or data was repaired) contributes nothing: merging never subtracts views V3 counted.

use crate::v2::{Intervals, INTERVALS};
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn iv(v: Value) -> Intervals {
        v.as_object().unwrap().clone()
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
