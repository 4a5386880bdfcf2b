//! The V3 data model: the payloads we write (Info, Content, Commit, User, Upvote, Permission,
//! AnalyticsEvent — spec 2.1) and the rules V3 reads them by (spec 2.2): content at a commit is
//! the json1 replay of its ancestor chain from `{}`, across vizzes, and a handful of invariants
//! tie Info to its start and end commits.
//!
//! Payloads are plain serde types; the ShareDB envelope (`_type`, `_v`, `_m`, `_o`) and op logs
//! are added by the store that writes them, because they depend on what is already in V3.

pub mod oplog;
pub mod store;

use crate::json1;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;

/// The OT type name (and URI) V3 registers for its json1-presence build.
pub const OT_TYPE: &str = "p";

/// ShareDB collections and the plain `commit` collection, by entity.
pub mod collections {
    pub const INFO: &str = "info";
    pub const CONTENT: &str = "content";
    pub const COMMIT: &str = "commit";
    pub const USER: &str = "user";
    pub const UPVOTE: &str = "upvote";
    pub const PERMISSION: &str = "permission";
    pub const ANALYTICS_EVENT: &str = "analyticsevent";
    /// The ShareDB collections (each with its op log `o_<name>`); `commit` is a plain one.
    pub const SHAREDB: [&str; 6] = [INFO, CONTENT, USER, UPVOTE, PERMISSION, ANALYTICS_EVENT];
}

/// The Info fields V2 decides, as `verify` compares them one by one (`trashed` and whatever
/// else V3 adds are V3's and never compared; the counts and the commit ends are V3's own and
/// are checked against V3 itself).
pub const INFO_COMPARED: [&str; 7] = [
    "owner",
    "title",
    "forkedFrom",
    "created",
    "updated",
    "visibility",
    "migratedFromV2",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    pub id: String,
    pub owner: String,
    pub title: String,
    /// `None` only for the primordial viz.
    pub forked_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked_from_is_backfilled: Option<bool>,
    pub created: i64,
    pub updated: i64,
    pub start: String,
    pub end: String,
    pub committed: bool,
    pub commit_authors: Vec<String>,
    pub forks_count: i64,
    pub upvotes_count: i64,
    pub visibility: String,
    #[serde(rename = "migratedFromV2")]
    pub migrated_from_v2: bool,
    pub migrated_timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub viz: String,
    pub authors: Vec<String>,
    pub timestamp: i64,
    /// A json1 op, or `null` for "no change".
    pub ops: Value,
    pub milestone: Value,
}

/// A migrated user belongs to V2 only until V3 edits it: once an op not written by the
/// migration is its newest (the user edited their profile, V3 changed their plan), V3 owns the
/// whole user and re-runs never change it again. And these fields are V3's from the start: a
/// migrated user is created with them (`plan: "free"`, no secondary emails) and no update ever
/// writes them, whoever edited last.
pub const USER_V3_OWNED: [&str; 2] = ["plan", "secondaryEmails"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub user_name: String,
    pub display_name: String,
    pub primary_email: String,
    pub secondary_emails: Vec<String>,
    pub picture: String,
    pub plan: String,
    pub company: String,
    pub website: String,
    pub location: String,
    pub bio: String,
    #[serde(rename = "migratedFromV2")]
    pub migrated_from_v2: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upvote {
    pub id: String,
    pub user: String,
    pub viz: String,
    pub timestamp: i64,
    #[serde(rename = "migratedFromV2")]
    pub migrated_from_v2: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Permission {
    pub id: String,
    pub user: String,
    pub resource: String,
    pub role: String,
    pub timestamp: i64,
    pub granted_by: String,
    #[serde(rename = "migratedFromV2")]
    pub migrated_from_v2: bool,
}

/// A page-view record. `v2Merged` is ours: the V2 record whose counts `intervals` already hold.
/// It travels in the same snapshot as the counts, so whatever stops a job between two writes, a
/// re-run finds what was merged and adds only what V2 counted since (see [`crate::analytics`]).
/// V3 counts views with ops on `intervals` and leaves it alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalyticsEvent {
    pub id: String,
    pub intervals: serde_json::Map<String, Value>,
    #[serde(rename = "v2Merged", default, skip_serializing_if = "Option::is_none")]
    pub v2_merged: Option<serde_json::Map<String, Value>>,
}

impl AnalyticsEvent {
    /// The payload of a V3 `analyticsevent` snapshot; `None` when it is not one (V3 wrote
    /// something else there: merged onto as if empty would lose it, so the caller must decide).
    pub fn from_payload(data: &Value) -> Option<AnalyticsEvent> {
        serde_json::from_value(data.clone()).ok()
    }
}

/// Build a V3 content payload. `files` must already be keyed by file id, in display order.
pub fn content(
    viz: &str,
    files: serde_json::Map<String, Value>,
    title: &str,
    height: &Value,
) -> Value {
    let mut m = serde_json::Map::with_capacity(4);
    m.insert("id".into(), Value::String(viz.to_string()));
    m.insert("files".into(), Value::Object(files));
    m.insert("title".into(), Value::String(title.to_string()));
    m.insert("height".into(), height.clone());
    Value::Object(m)
}

/// A commit chain problem: V3 could not open the viz.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChainError {
    #[error("commit {0} is referenced but missing")]
    MissingCommit(String),
    #[error("commit chain through {0} has a cycle")]
    Cycle(String),
    #[error("commit {commit} does not apply: {reason}")]
    Apply { commit: String, reason: String },
}

/// The ancestors of `commit`, oldest first (the commit itself last), following `parent` across vizzes.
pub fn ancestry<'a>(
    commits: &'a HashMap<String, Commit>,
    commit: &str,
) -> Result<Vec<&'a Commit>, ChainError> {
    ancestry_after(commits, commit, None)
}

/// The ancestors of `commit` below `base` (exclusive; `None`: from the root), oldest first.
fn ancestry_after<'a>(
    commits: &'a HashMap<String, Commit>,
    commit: &str,
    base: Option<&str>,
) -> Result<Vec<&'a Commit>, ChainError> {
    let mut chain = Vec::new();
    let mut next = Some(commit.to_string());
    while let Some(id) = next.filter(|id| Some(id.as_str()) != base) {
        let c = commits
            .get(&id)
            .ok_or_else(|| ChainError::MissingCommit(id.clone()))?;
        if chain.len() > commits.len() {
            return Err(ChainError::Cycle(id));
        }
        chain.push(c);
        next = c.parent.clone();
    }
    chain.reverse();
    Ok(chain)
}

/// Content at `commit`, the way V3 computes it: replay every ancestor's ops from `{}`.
pub fn content_at(commits: &HashMap<String, Commit>, commit: &str) -> Result<Value, ChainError> {
    replay(ancestry(commits, commit)?)
}

/// Content at `commit` from the content at one of its ancestors, `base = (id, content)`:
/// replays only the commits below it (`commits` needs no commit above it). The same value as
/// [`content_at`], since commits are immutable.
pub fn content_after(
    base: (&str, Value),
    commits: &HashMap<String, Commit>,
    commit: &str,
) -> Result<Value, ChainError> {
    replay_onto(base.1, ancestry_after(commits, commit, Some(base.0))?)
}

/// Replay a chain of commits (oldest first) from `{}`.
pub fn replay<'a>(chain: impl IntoIterator<Item = &'a Commit>) -> Result<Value, ChainError> {
    replay_onto(Value::Object(Default::default()), chain)
}

fn replay_onto<'a>(
    start: Value,
    chain: impl IntoIterator<Item = &'a Commit>,
) -> Result<Value, ChainError> {
    chain.into_iter().try_fold(start, |doc, c| {
        json1::apply(doc, &c.ops).map_err(|e| ChainError::Apply {
            commit: c.id.clone(),
            reason: e.to_string(),
        })
    })
}

/// The invariants V3 validates on a viz (spec 2.2), as human-readable violations (empty = valid).
pub fn invariant_violations(
    info: &Info,
    content: &Value,
    commits: &HashMap<String, Commit>,
    user_exists: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut bad = Vec::new();
    match (commits.get(&info.start), commits.get(&info.end)) {
        (Some(start), Some(end)) => {
            if start.timestamp != info.created {
                bad.push(format!(
                    "start commit timestamp {} != created {}",
                    start.timestamp, info.created
                ));
            }
            if end.timestamp != info.updated {
                bad.push(format!(
                    "end commit timestamp {} != updated {}",
                    end.timestamp, info.updated
                ));
            }
            if start.authors != [info.owner.clone()] {
                bad.push(format!(
                    "start authors {:?} != [owner {}]",
                    start.authors, info.owner
                ));
            }
            if let Some(parent) = &start.parent {
                match commits.get(parent) {
                    Some(p) if Some(&p.viz) == info.forked_from.as_ref() => {}
                    Some(p) => bad.push(format!(
                        "start parent commit belongs to {} but forkedFrom is {:?}",
                        p.viz, info.forked_from
                    )),
                    None => bad.push(format!("start parent commit {parent} missing")),
                }
            }
            match content_at(commits, &info.end) {
                Ok(replayed) if &replayed == content => {}
                Ok(_) => bad.push("replayed commit chain != content".to_string()),
                Err(e) => bad.push(e.to_string()),
            }
        }
        (s, e) => bad.push(format!(
            "start commit {} {}, end commit {} {}",
            info.start,
            if s.is_some() { "present" } else { "missing" },
            info.end,
            if e.is_some() { "present" } else { "missing" }
        )),
    }
    if !user_exists(&info.owner) {
        bad.push(format!("owner {} has no user doc", info.owner));
    }
    bad
}

impl Info {
    /// The fields V2 decides (owner, title, parent, times, visibility, the migration mark) in
    /// which `have`, an info payload as V3 holds it, differs from this one (numbers by value);
    /// one line each, for `verify`. The counts and the commit ends are V3's own and are
    /// checked against V3 itself.
    pub fn differences_from(&self, have: &Value) -> Vec<String> {
        let want = serde_json::to_value(self).expect("Info serializes");
        INFO_COMPARED
            .into_iter()
            .filter(|field| !same_value(&want[field], &have[field]))
            .map(|field| format!("{field}: expected {}, V3 has {}", want[field], have[field]))
            .collect()
    }
}

/// A content payload as V3 shows it, file ids left out: the title, the height and each file's
/// name and text in display order. `verify` compares what it expects with what V3 holds through
/// it, so no code outside `v3` names the content's fields.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentView {
    title: Value,
    height: Value,
    /// `(name, text)` of each file, in the files map's order.
    files: Vec<(Value, Value)>,
}

impl ContentView {
    pub fn of(content: &Value) -> Self {
        let files = content["files"]
            .as_object()
            .map(|f| {
                f.values()
                    .map(|f| (f["name"].clone(), f["text"].clone()))
                    .collect()
            })
            .unwrap_or_default();
        ContentView {
            title: content["title"].clone(),
            height: content["height"].clone(),
            files,
        }
    }

    /// How `have` differs from `self` (what was expected), the first difference found, for a
    /// report; `None` when they show the same (numbers compare by value).
    pub fn first_difference(&self, have: &ContentView) -> Option<String> {
        if !same_value(&self.title, &have.title) {
            return Some(format!(
                "title: expected {}, V3 has {}",
                self.title, have.title
            ));
        }
        if !same_value(&self.height, &have.height) {
            return Some(format!(
                "height: expected {}, V3 has {}",
                self.height, have.height
            ));
        }
        if self.files.len() != have.files.len() {
            return Some(format!(
                "expected {} files, V3 has {}",
                self.files.len(),
                have.files.len()
            ));
        }
        for ((name, text), (has_name, has_text)) in self.files.iter().zip(&have.files) {
            if name != has_name {
                return Some(format!(
                    "file order/name: expected {name}, V3 has {has_name}"
                ));
            }
            if text != has_text {
                return Some(format!("text of {name} differs"));
            }
        }
        None
    }
}

/// Whether two payload values are the same, numbers by value (V3 may store 500 as 500.0).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_content_view_ignores_file_ids_but_not_order_or_text() {
        let view = |v: Value| ContentView::of(&v);
        let a = view(json!({"title": "T", "height": 500, "files": {
            "aaaa": {"name": "a", "text": "1"}, "bbbb": {"name": "b", "text": "2"}}}));
        let b = view(json!({"title": "T", "height": 500.0, "files": {
            "cccc": {"name": "a", "text": "1"}, "dddd": {"name": "b", "text": "2"}}}));
        assert_eq!(a.first_difference(&b), None);
        let reordered = view(json!({"title": "T", "height": 500, "files": {
            "bbbb": {"name": "b", "text": "2"}, "aaaa": {"name": "a", "text": "1"}}}));
        assert!(a.first_difference(&reordered).unwrap().contains("order"));
        let edited = view(json!({"title": "T", "height": 500, "files": {
            "aaaa": {"name": "a", "text": "1🐧"}, "bbbb": {"name": "b", "text": "2"}}}));
        assert_eq!(
            a.first_difference(&edited).as_deref(),
            Some("text of \"a\" differs")
        );
        let retitled = view(json!({"title": "U", "height": 500, "files": {}}));
        assert!(a.first_difference(&retitled).unwrap().starts_with("title"));
        let fewer = view(json!({"title": "T", "height": 500, "files": {}}));
        assert_eq!(
            a.first_difference(&fewer).as_deref(),
            Some("expected 2 files, V3 has 0")
        );
    }

    #[test]
    fn an_info_differs_in_the_fields_v2_decides_numbers_by_value() {
        let info = Info {
            id: "v".into(),
            owner: "u".into(),
            title: "T".into(),
            forked_from: Some("p".into()),
            forked_from_is_backfilled: None,
            created: 10,
            updated: 20,
            start: "s".into(),
            end: "e".into(),
            committed: true,
            commit_authors: vec!["u".into()],
            forks_count: 0,
            upvotes_count: 0,
            visibility: "public".into(),
            migrated_from_v2: true,
            migrated_timestamp: 30,
        };
        let mut have = serde_json::to_value(&info).unwrap();
        have["created"] = json!(10.0);
        have["forksCount"] = json!(7);
        assert_eq!(info.differences_from(&have), Vec::<String>::new());
        have["title"] = json!("U");
        have["visibility"] = json!("private");
        assert_eq!(
            info.differences_from(&have),
            vec![
                "title: expected \"T\", V3 has \"U\"".to_string(),
                "visibility: expected \"public\", V3 has \"private\"".to_string()
            ]
        );
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(same_value(&json!(500), &json!(500.0)));
        assert!(!same_value(&json!(500), &json!("500")));
    }
}
