//! `planner check`: a read-only pre-flight of V2 before a run. For every query shape the fleet
//! makes ([`QUERIES`], defined beside the reader's methods) it lists the collection's indexes
//! (`listIndexes`) and says whether one serves the query, and asks the server how it would run
//! an example of it (`explain` at `queryPlanner` verbosity, which runs nothing). Without the
//! index each job's read is a collection scan of live production V2, and the migration must not
//! build indexes on V2 itself: the check names what to ask V2's owner for, with the
//! `createIndex` command.
//!
//! An index serves a query when its keys begin with the query's fields in order (direction does
//! not matter for these equality/range-plus-sort shapes). The plan is reported as seen, not
//! judged: on a small or empty collection a server may prefer a scan even with the index.

use crate::v2::reader::{Reader, V2Query, QUERIES};
use mongodb::bson::{Bson, Document};
use serde::Serialize;

/// The verdict on one query shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryCheck {
    pub name: String,
    pub collection: String,
    pub used_by: String,
    /// The fields the serving index must begin with, in order.
    pub needs: Vec<String>,
    pub covered: bool,
    /// The key pattern of the first index that serves it, as JSON.
    pub covered_by: Option<String>,
    /// The access stages of the server's winning plan for an example (`IXSCAN <index>`,
    /// `COLLSCAN`, …), or why there is none.
    pub plan: String,
    /// The mongo shell command that creates the index V2 lacks (absent when covered).
    pub create_index: Option<String>,
}

/// The whole pre-flight (`--json` prints it as one document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// Every query has an index.
    pub all_covered: bool,
    pub queries: Vec<QueryCheck>,
}

/// Whether an index with key pattern `keys` serves a query on `needs`.
pub fn serves(keys: &Document, needs: &[&str]) -> bool {
    let fields: Vec<&str> = keys.keys().map(String::as_str).collect();
    fields.len() >= needs.len() && fields[..needs.len()] == *needs
}

/// `db.<coll>.createIndex({a: 1, "b.c": 1})`.
pub fn create_index_command(q: &V2Query) -> String {
    let keys: Vec<String> = q
        .index
        .iter()
        .map(|f| {
            if f.contains('.') {
                format!("\"{f}\": 1")
            } else {
                format!("{f}: 1")
            }
        })
        .collect();
    format!("db.{}.createIndex({{{}}})", q.collection, keys.join(", "))
}

/// The leaf (access) stages of a winning plan, e.g. `IXSCAN d_1_v_1` or `COLLSCAN`.
fn access_stages(plan: &Document, out: &mut Vec<String>) {
    let children: Vec<&Document> = plan
        .get_document("inputStage")
        .into_iter()
        .chain(
            plan.get_array("inputStages")
                .into_iter()
                .flatten()
                .filter_map(Bson::as_document),
        )
        .collect();
    if children.is_empty() {
        let stage = plan.get_str("stage").unwrap_or("?");
        out.push(match plan.get_str("indexName") {
            Ok(index) => format!("{stage} {index}"),
            Err(_) => stage.to_string(),
        });
    }
    for c in children {
        access_stages(c, out);
    }
}

/// Check every query in [`QUERIES`] against V2's indexes. Reads only (`listIndexes` once per
/// collection, one `explain` per query), each through the reader's budget.
pub async fn check(v2: &Reader) -> mongodb::error::Result<Check> {
    let mut indexes: Vec<(&str, Vec<Document>)> = Vec::new();
    let mut queries = Vec::new();
    for q in &QUERIES {
        if !indexes.iter().any(|(c, _)| *c == q.collection) {
            indexes.push((q.collection, v2.index_keys(q.collection).await?));
        }
        let listed = &indexes.iter().find(|(c, _)| *c == q.collection).unwrap().1;
        // Every collection has its `_id` index, even before it exists.
        let covered_by = if q.index == ["_id"] {
            Some("{\"_id\":1}".to_string())
        } else {
            listed
                .iter()
                .find(|k| serves(k, q.index))
                .map(|k| Bson::Document(k.clone()).into_relaxed_extjson().to_string())
        };
        let (filter, sort) = (q.example)();
        let plan = match v2.explain(q.collection, filter, sort).await {
            Ok(p) if p.is_empty() => "no plan returned".to_string(),
            Ok(p) => {
                let mut stages = Vec::new();
                access_stages(&p, &mut stages);
                stages.join(", ")
            }
            Err(e) => format!("explain unavailable: {e}"),
        };
        let covered = covered_by.is_some();
        queries.push(QueryCheck {
            name: q.name.to_string(),
            collection: q.collection.to_string(),
            used_by: q.used_by.to_string(),
            needs: q.index.iter().map(|f| f.to_string()).collect(),
            covered,
            covered_by,
            plan,
            create_index: (!covered).then(|| create_index_command(q)),
        });
    }
    Ok(Check {
        all_covered: queries.iter().all(|q| q.covered),
        queries,
    })
}

impl Check {
    /// Human report: one line per query, then the commands to ask V2's owner for.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for q in &self.queries {
            let verdict = match &q.covered_by {
                Some(k) => format!("covered by {k}"),
                None => "NOT COVERED (collection scan)".to_string(),
            };
            out += &format!(
                "{:<20} {}.{{{}}}: {verdict}; plan: {}\n",
                q.name,
                q.collection,
                q.needs.join(", "),
                q.plan
            );
        }
        let missing: Vec<&str> = self
            .queries
            .iter()
            .filter_map(|q| q.create_index.as_deref())
            .collect();
        if missing.is_empty() {
            out += "every V2 query the fleet makes has an index";
        } else {
            out += &format!(
                "{} V2 queries have no index; ask V2's owner to run (the migration never creates indexes on V2):\n",
                missing.len()
            );
            let mut seen = Vec::new();
            for cmd in missing {
                if !seen.contains(&cmd) {
                    out += &format!("  {cmd}\n");
                    seen.push(cmd);
                }
            }
            out.truncate(out.trim_end().len());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn an_index_serves_a_query_on_its_leading_fields() {
        assert!(serves(&doc! {"d": 1, "v": 1}, &["d", "v"]));
        assert!(serves(&doc! {"d": 1, "v": -1, "x": 1}, &["d", "v"]));
        assert!(!serves(&doc! {"d": 1}, &["d", "v"]));
        assert!(!serves(&doc! {"v": 1, "d": 1}, &["d", "v"]));
        assert!(serves(
            &doc! {"createdTimestamp": 1, "_id": 1},
            &["createdTimestamp", "_id"]
        ));
        assert!(!serves(
            &doc! {"createdTimestamp": 1},
            &["createdTimestamp", "_id"]
        ));
    }

    #[test]
    fn create_index_commands_quote_dotted_fields() {
        let q = QUERIES
            .iter()
            .find(|q| q.name == "info-by-upvote-time")
            .unwrap();
        assert_eq!(
            create_index_command(q),
            "db.documentInfo.createIndex({\"upvotes.timestamp\": 1})"
        );
        let q = QUERIES.iter().find(|q| q.name == "op-log-by-viz").unwrap();
        assert_eq!(
            create_index_command(q),
            "db.o_documentContent.createIndex({d: 1, v: 1})"
        );
    }

    #[test]
    fn plans_name_their_access_stages() {
        let plan = doc! {"stage": "SORT", "inputStage": {"stage": "OR", "inputStages": [
        {"stage": "IXSCAN", "indexName": "a_1"}, {"stage": "COLLSCAN"}]}};
        let mut out = Vec::new();
        access_stages(&plan, &mut out);
        assert_eq!(out, ["IXSCAN a_1", "COLLSCAN"]);
    }
}
