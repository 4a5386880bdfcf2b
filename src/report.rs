//! `planner report`: the ledger's per-viz outcomes and reasons, for operators and their
//! spreadsheets (what DMS calls table statistics and Airbyte a sync summary).
//!
//! A [`Filter`] (batch, time window of the last job, outcomes) becomes one `migrationviz` query,
//! so a report on one batch of a 100,000-viz ledger reads only that batch. Rows are typed
//! ([`Row`]) and render three ways: an aligned table for a terminal, one JSON document
//! ([`Report`]), or RFC 4180 CSV (CRLF line ends, fields quoted when they hold a comma, a quote or
//! a line break, quotes doubled) that spreadsheets open as is.

use crate::ledger::{Ledger, VizRecord};
use crate::Outcome;
use mongodb::bson::{doc, Document};
use serde::Serialize;
use std::collections::BTreeMap;

/// Which ledger records to report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// Only this batch (`migrationbatch` id).
    pub batch: Option<String>,
    /// The last job on the viz ended in `[from, to)` (Unix seconds).
    pub window: Option<(i64, i64)>,
    /// Only these outcomes (any of them); empty means every outcome.
    pub outcomes: Vec<Outcome>,
}

impl Filter {
    /// The `migrationviz` query of this filter.
    pub fn query(&self) -> Document {
        let mut q = Document::new();
        if let Some(batch) = &self.batch {
            // Every viz a job of this batch ended on, also those re-planned by a later batch.
            q.extend(crate::ledger::Ledger::in_batch(batch));
        }
        if let Some((from, to)) = self.window {
            q.insert("time", doc! {"$gte": from, "$lt": to});
        }
        if !self.outcomes.is_empty() {
            let names: Vec<&str> = self.outcomes.iter().map(|o| o.as_str()).collect();
            q.insert("outcome", doc! {"$in": names});
        }
        q
    }
}

/// One viz's line of the report: what its last job ended in, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub viz: String,
    pub outcome: Outcome,
    /// The fixed error kind of a failure or skip (as on the DLQ and in metrics).
    pub error_kind: Option<String>,
    pub reason: Option<String>,
    pub batch: Option<String>,
    /// Jobs run on this viz so far.
    pub attempts: i64,
    /// When the last job ended, Unix seconds.
    pub time: i64,
    /// The same time in RFC 3339 (UTC).
    pub at: String,
    /// Upvotes and permissions left out because their user is missing from V2.
    pub skipped_entries: usize,
}

impl From<VizRecord> for Row {
    fn from(r: VizRecord) -> Row {
        Row {
            at: rfc3339(r.time),
            viz: r.viz,
            outcome: r.outcome,
            error_kind: r.error_kind,
            reason: r.reason,
            batch: r.batch,
            attempts: r.attempts,
            time: r.time,
            skipped_entries: r.skipped_entries.len(),
        }
    }
}

/// The whole report (`--json` prints it as one document).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub filter: Filter,
    pub count: usize,
    /// Rows per outcome.
    pub by_outcome: BTreeMap<String, usize>,
    pub rows: Vec<Row>,
}

/// The report of every ledger record matching `filter` (one query), oldest job first.
pub async fn report(ledger: &Ledger, filter: Filter) -> mongodb::error::Result<Report> {
    let rows: Vec<Row> = ledger
        .find(filter.query())
        .await?
        .into_iter()
        .map(Row::from)
        .collect();
    let mut by_outcome = BTreeMap::new();
    for r in &rows {
        *by_outcome
            .entry(r.outcome.as_str().to_string())
            .or_default() += 1;
    }
    Ok(Report {
        filter,
        count: rows.len(),
        by_outcome,
        rows,
    })
}

/// `--outcome`'s value parser: one of the outcome names the ledger records.
pub fn parse_outcome(s: &str) -> Result<Outcome, String> {
    [
        Outcome::Migrated,
        Outcome::Unchanged,
        Outcome::Skipped,
        Outcome::Failed,
        Outcome::Conflict,
    ]
    .into_iter()
    .find(|o| o.as_str() == s.trim())
    .ok_or_else(|| {
        format!("{s:?} is not an outcome (migrated, unchanged, skipped, failed, conflict)")
    })
}

fn rfc3339(secs: i64) -> String {
    mongodb::bson::DateTime::from_millis(secs.saturating_mul(1000))
        .try_to_rfc3339_string()
        .unwrap_or_else(|_| secs.to_string())
}

const COLUMNS: [&str; 8] = [
    "viz",
    "outcome",
    "error_kind",
    "reason",
    "batch",
    "attempts",
    "time",
    "skipped_entries",
];

impl Row {
    /// The row's fields in [`COLUMNS`] order, as text.
    fn fields(&self) -> [String; 8] {
        [
            self.viz.clone(),
            self.outcome.as_str().to_string(),
            self.error_kind.clone().unwrap_or_default(),
            self.reason.clone().unwrap_or_default(),
            self.batch.clone().unwrap_or_default(),
            self.attempts.to_string(),
            self.at.clone(),
            self.skipped_entries.to_string(),
        ]
    }
}

/// One RFC 4180 field: quoted when it holds a comma, a quote, CR or LF, with quotes doubled.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl Report {
    /// RFC 4180 CSV: a header line, then one record per row, every line ending in CRLF.
    pub fn csv(&self) -> String {
        let line = |fields: &[String]| {
            let mut l = fields
                .iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(",");
            l.push_str("\r\n");
            l
        };
        let mut out = line(&COLUMNS.map(str::to_string));
        for r in &self.rows {
            out += &line(&r.fields());
        }
        out
    }

    /// An aligned table for a terminal, then a summary line. Reasons are cut to one line of at
    /// most 80 characters here (`--json` and `--csv` carry them whole).
    pub fn render(&self) -> String {
        let rows: Vec<[String; 8]> = self
            .rows
            .iter()
            .map(|r| {
                let mut f = r.fields();
                let one_line = f[3].replace(['\r', '\n'], " ");
                f[3] = if one_line.chars().count() > 80 {
                    one_line.chars().take(79).collect::<String>() + "…"
                } else {
                    one_line
                };
                f
            })
            .collect();
        let header = COLUMNS.map(|c| c.to_uppercase().replace('_', " "));
        let mut widths = header.clone().map(|h| h.chars().count());
        for r in &rows {
            for (w, f) in widths.iter_mut().zip(r) {
                *w = (*w).max(f.chars().count());
            }
        }
        let line = |fields: &[String; 8]| {
            let mut l = String::new();
            for (i, (f, w)) in fields.iter().zip(widths).enumerate() {
                if i > 0 {
                    l.push_str("  ");
                }
                l.push_str(f);
                l.extend(std::iter::repeat_n(' ', w - f.chars().count()));
            }
            l.trim_end().to_string() + "\n"
        };
        let mut out = String::new();
        if !rows.is_empty() {
            out += &line(&header);
            for r in &rows {
                out += &line(r);
            }
        }
        let counts: Vec<String> = self
            .by_outcome
            .iter()
            .map(|(o, n)| format!("{o} {n}"))
            .collect();
        out += &format!("{} vizzes", self.count);
        if !counts.is_empty() {
            out += &format!(" ({})", counts.join(", "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(viz: &str, outcome: Outcome, reason: Option<&str>) -> Row {
        Row {
            viz: viz.into(),
            outcome,
            error_kind: reason.map(|_| "bad-op-log".into()),
            reason: reason.map(str::to_string),
            batch: Some("all-1".into()),
            attempts: 2,
            time: 1_534_246_611,
            at: rfc3339(1_534_246_611),
            skipped_entries: 0,
        }
    }

    #[test]
    fn csv_fields_are_escaped_as_rfc_4180_says() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("cr\r"), "\"cr\r\"");
        assert_eq!(csv_field(""), "");
    }

    #[test]
    fn csv_has_a_header_and_crlf_records() {
        let r = Report {
            filter: Filter::default(),
            count: 2,
            by_outcome: BTreeMap::new(),
            rows: vec![
                row("a", Outcome::Migrated, None),
                row("b", Outcome::Failed, Some("op 3, \"v\" gap\nat 7")),
            ],
        };
        assert_eq!(
            r.csv(),
            "viz,outcome,error_kind,reason,batch,attempts,time,skipped_entries\r\n\
             a,migrated,,,all-1,2,2018-08-14T11:36:51Z,0\r\n\
             b,failed,bad-op-log,\"op 3, \"\"v\"\" gap\nat 7\",all-1,2,2018-08-14T11:36:51Z,0\r\n"
        );
    }

    #[test]
    fn filters_become_one_query() {
        assert_eq!(Filter::default().query(), doc! {});
        let f = Filter {
            batch: Some("b1".into()),
            window: Some((10, 20)),
            outcomes: vec![Outcome::Failed, Outcome::Skipped],
        };
        assert_eq!(
            f.query(),
            doc! {"$or": [{"batches": "b1"}, {"batch": "b1"}],
            "time": {"$gte": 10_i64, "$lt": 20_i64},
            "outcome": {"$in": ["failed", "skipped"]}}
        );
    }

    #[test]
    fn the_table_keeps_reasons_on_one_line() {
        let r = Report {
            filter: Filter::default(),
            count: 1,
            by_outcome: BTreeMap::from([("failed".to_string(), 1)]),
            rows: vec![row("b", Outcome::Failed, Some("two\nlines"))],
        };
        let text = r.render();
        assert!(text.contains("two lines"), "{text}");
        assert!(text.ends_with("1 vizzes (failed 1)"), "{text}");
        assert_eq!(text.lines().count(), 3, "{text}");
    }
}
