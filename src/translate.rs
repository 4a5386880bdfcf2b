//! Translation of one V2 viz into the V3 documents that represent it (spec 3).
//!
//! Two steps, so the worker can batch its reads in between:
//! - [`prepare`] parses and validates the raw V2 docs and decides every outcome that needs no
//!   other document (tombstones, datasets, partial docs, `_id` ≠ `id`, missing or oversized
//!   content). It says which users, which parent and which analytics record the viz needs.
//! - [`translate`] takes those (and, on re-sync, the ledger's record of the last migration) and
//!   produces Info, Content, the new Commits, Users, Upvotes, Permissions and the merged
//!   AnalyticsEvent. It is pure: same inputs, byte-identical outputs.
//!
//! Decisions where the spec is silent:
//! - Title and height have no history in V2 (they live on Info), so every historical state uses
//!   the current title and height; the first commit sets them.
//! - A `documentInfo` without `owner` or `createdTimestamp` is a partial doc (skipped); an owner id
//!   with no V2 `user` doc is a failure (dead-letter), as the spec's table says.
//! - `content.files` absent on a visualization is malformed content (dead-letter); a list left
//!   empty once `bundle.js` is removed is skipped.
//! - Content size counts the UTF-8 bytes of names and texts, `bundle.js` excluded.
//! - The same user upvoting twice yields one Upvote (ids are `<user>-<viz>`), with the earliest time.
//! - Null V2 user fields become empty strings (V3's User fields are strings); `displayName` falls
//!   back to `userName`, `userName` to the id.
//! - `forksCount` and `upvotesCount` are recomputed from V3 by the store; here `upvotesCount` is
//!   the number of migrated upvotes and `forksCount` 0.
//! - If Info's `updated` is later than the last commit (V2 bumped `lastUpdatedTimestamp` without a
//!   content change we can see), an `ops: null` commit at `updated` ends the chain, as in the
//!   fallback form.

use crate::history::{self, InitialIds, Mode, Stamp};
use crate::v2::{self, DocumentContent, DocumentInfo, Intervals, V2Viz};
use crate::{analytics, ids, v3, Disposition, PRIMORDIAL_VIZ_ID};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Default content limit, `bundle.js` excluded.
pub const DEFAULT_MAX_CONTENT_BYTES: usize = 5 * 1024 * 1024;
/// V2's height when none (or 0) is set.
pub const DEFAULT_HEIGHT: i64 = 500;

#[derive(Debug, Clone)]
pub struct Config {
    pub session_gap_secs: i64,
    pub max_content_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            session_gap_secs: history::DEFAULT_SESSION_GAP_SECS,
            max_content_bytes: DEFAULT_MAX_CONTENT_BYTES,
        }
    }
}

/// Why a viz was not translated. [`TranslateError::disposition`] says what the worker does.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TranslateError {
    #[error("viz {viz}: documentInfo is a tombstone (deleted in V2)")]
    Tombstone { viz: String },
    #[error("documentInfo {doc_id}: no `id` field")]
    NoId { doc_id: String },
    #[error("viz {viz}: not a visualization (documentType {document_type:?})")]
    NotVisualization { viz: String, document_type: String },
    #[error("viz {viz}: partial documentInfo (no {missing})")]
    Partial { viz: String, missing: &'static str },
    #[error("viz {viz}: no files left once bundle.js is removed")]
    NoFiles { viz: String },
    #[error("viz {viz}: documentContent is missing")]
    ContentMissing { viz: String },
    #[error("viz {viz}: documentContent is a tombstone")]
    ContentTombstone { viz: String },
    #[error("viz {viz}: content is {bytes} bytes without bundle.js, over the {limit}-byte limit")]
    ContentTooLarge {
        viz: String,
        bytes: usize,
        limit: usize,
    },
    #[error("viz {id}: documentInfo _id {doc_id:?} differs from id {id:?}")]
    IdMismatch { doc_id: String, id: String },
    #[error("viz {viz}: owner {owner} is missing from V2 user")]
    OwnerMissing { viz: String, owner: String },
    /// The owner deleted their V3 account: neither it nor the viz is re-created (spec 3.4).
    #[error(
        "viz {viz}: owner deleted in V3 (user {owner} deleted their V3 account); not re-created"
    )]
    OwnerDeletedInV3 { viz: String, owner: String },
    #[error("viz {viz}: {source}")]
    Malformed { viz: String, source: v2::V2Error },
    #[error("viz {viz}: {reason}")]
    BadContent { viz: String, reason: String },
}

impl TranslateError {
    /// Skip outcomes are final and expected; everything else needs a human (dead-letter queue).
    pub fn disposition(&self) -> Disposition {
        use TranslateError::*;
        match self {
            Tombstone { .. }
            | NoId { .. }
            | NotVisualization { .. }
            | Partial { .. }
            | NoFiles { .. }
            | OwnerDeletedInV3 { .. } => Disposition::Skip,
            ContentMissing { .. }
            | ContentTombstone { .. }
            | ContentTooLarge { .. }
            | IdMismatch { .. }
            | OwnerMissing { .. }
            | Malformed { .. }
            | BadContent { .. } => Disposition::DeadLetter,
        }
    }

    /// A stable, short name for dashboards and DLQ headers.
    pub fn kind(&self) -> &'static str {
        self.error_kind().as_str()
    }

    /// The failure class (the `error_kind` label). Every variant, no wildcard.
    pub fn error_kind(&self) -> crate::outcome::ErrorKind {
        use crate::outcome::ErrorKind as K;
        use TranslateError as T;
        match self {
            T::Tombstone { .. } => K::Tombstone,
            T::NoId { .. } => K::NoId,
            T::NotVisualization { .. } => K::NotVisualization,
            T::Partial { .. } => K::PartialDoc,
            T::NoFiles { .. } => K::NoFiles,
            T::ContentMissing { .. } => K::ContentMissing,
            T::ContentTombstone { .. } => K::ContentTombstone,
            T::ContentTooLarge { .. } => K::ContentTooLarge,
            T::IdMismatch { .. } => K::IdMismatch,
            T::OwnerMissing { .. } => K::OwnerMissing,
            T::OwnerDeletedInV3 { .. } => K::OwnerDeletedInV3,
            T::Malformed { .. } => K::Malformed,
            T::BadContent { .. } => K::BadContent,
        }
    }
}

/// Which parent a viz's history hangs from (spec 3, `forkedFrom`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParentRequest {
    /// The primordial viz itself: no parent.
    Root,
    /// V2 names this parent; if it cannot be migrated the caller falls back to the primordial viz.
    Viz(String),
    /// No (usable) `forkedFrom`: hang it from the primordial viz, marked backfilled.
    Primordial,
}

/// A validated viz, ready to translate once its users and parent are known.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub viz: String,
    pub info: DocumentInfo,
    pub content: DocumentContent,
    /// Content payload, envelope stripped: the json0 state history is rebuilt from.
    pub content_state: Value,
    pub ops: Vec<v2::ContentOp>,
    /// Why the op log was not loaded, if it was not (see [`V2Viz::ops_withheld`]).
    pub ops_withheld: Option<String>,
    pub owner: String,
    pub created: i64,
    pub title: String,
    pub height: Value,
    pub parent: ParentRequest,
    /// Owner first, then upvoters and collaborators, each once.
    pub user_ids: Vec<String>,
    pub analytics_id: String,
    pub info_v: u64,
    pub content_v: u64,
}

impl Prepared {
    /// `lastUpdatedTimestamp`, or `createdTimestamp` when absent (or earlier).
    pub fn updated_hint(&self) -> i64 {
        self.info
            .last_updated_timestamp
            .unwrap_or(self.created)
            .max(self.created)
    }

    /// A digest of every V2 input that shapes the V3 documents, except analytics: when it is
    /// unchanged since the last migration there is nothing to re-sync. (Info's `_v` is useless
    /// for this: V2's scoring job bumped it hourly.)
    pub fn source_fingerprint(&self) -> String {
        self.source().fingerprint()
    }

    /// The same inputs, field by field (see [`Source`]).
    pub fn source(&self) -> Source {
        Source::of(&self.viz, &self.info, self.content_v)
            .expect("a prepared viz has an owner and a created time")
    }
}

/// Every V2 input that shapes a viz's V3 documents (analytics aside), as the translation reads
/// them: the one definition of "V2 changed" for both the worker's plan (its [`Source::fingerprint`]
/// against the ledger's) and the planner's change detection ([`SourceFields`] field by field, so
/// `planner plan --dry-run` can say which ones moved). It needs only `documentInfo` and content's
/// `_v`, so the planner computes it from a projected scan without reading any content.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    viz: String,
    content_v: u64,
    owner: String,
    title: String,
    height: Value,
    created: i64,
    updated: Option<i64>,
    forked_from: Option<String>,
    fork_from_backfilled: Option<bool>,
    privacy: Option<String>,
    upvotes: Vec<(Option<String>, Option<i64>)>,
    collaborators: Vec<Option<String>>,
}

impl Source {
    /// `None` for an info the translation would not take (no owner or no created time: partial).
    pub fn of(viz: &str, info: &DocumentInfo, content_v: u64) -> Option<Source> {
        Some(Source {
            viz: viz.to_string(),
            content_v,
            owner: info.owner.clone()?,
            title: title_of(info),
            height: height_of(info),
            created: info.created_timestamp?,
            updated: info.last_updated_timestamp,
            forked_from: info.forked_from.clone(),
            fork_from_backfilled: info.fork_from_backfilled,
            privacy: info.privacy.clone(),
            upvotes: info
                .upvotes
                .iter()
                .flatten()
                .map(|u| (u.user_id.clone(), u.timestamp))
                .collect(),
            collaborators: info
                .collaborators
                .iter()
                .flatten()
                .map(|c| c.user_id.clone())
                .collect(),
        })
    }

    /// The digest the ledger keeps as `fingerprint` (its layout is fixed: records written
    /// before [`SourceFields`] existed compare by it alone).
    pub fn fingerprint(&self) -> String {
        ids::fingerprint(&serde_json::json!([
            self.viz,
            self.content_v,
            self.owner,
            self.title,
            self.height,
            self.created,
            self.updated,
            self.forked_from,
            self.fork_from_backfilled,
            self.privacy,
            self.upvotes,
            self.collaborators
        ]))
    }

    /// A short digest per input field, for the ledger and change detection.
    pub fn fields(&self) -> SourceFields {
        let d = |v: Value| ids::fingerprint(&v)[..12].to_string();
        SourceFields {
            content_v: self.content_v as i64,
            owner: d(Value::from(self.owner.as_str())),
            title: d(Value::from(self.title.as_str())),
            height: d(self.height.clone()),
            created: self.created,
            updated: self.updated,
            forked_from: d(serde_json::json!([
                self.forked_from,
                self.fork_from_backfilled
            ])),
            visibility: d(serde_json::json!(self.privacy)),
            upvotes: d(serde_json::json!(self.upvotes)),
            collaborators: d(serde_json::json!(self.collaborators)),
        }
    }
}

/// [`Source`] field by field (numbers as they are, the rest as short digests), as the ledger
/// records it with each migration (`migrated.source`). Field names are the V3 concepts an
/// operator knows (`visibility`, not V2's `privacy`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceFields {
    pub content_v: i64,
    pub owner: String,
    pub title: String,
    pub height: String,
    pub created: i64,
    pub updated: Option<i64>,
    pub forked_from: String,
    pub visibility: String,
    pub upvotes: String,
    pub collaborators: String,
}

impl SourceFields {
    /// The names of the fields that differ, in a fixed order (`content` for the content version).
    pub fn changed_since(&self, then: &SourceFields) -> Vec<&'static str> {
        let pairs = [
            ("content", self.content_v != then.content_v),
            ("owner", self.owner != then.owner),
            ("title", self.title != then.title),
            ("height", self.height != then.height),
            ("created", self.created != then.created),
            ("updated", self.updated != then.updated),
            ("forkedFrom", self.forked_from != then.forked_from),
            ("visibility", self.visibility != then.visibility),
            ("upvotes", self.upvotes != then.upvotes),
            ("collaborators", self.collaborators != then.collaborators),
        ];
        pairs
            .into_iter()
            .filter(|(_, d)| *d)
            .map(|(n, _)| n)
            .collect()
    }
}

fn title_of(info: &DocumentInfo) -> String {
    match info.title.as_deref().map(str::trim) {
        Some(t) if !t.is_empty() => t.to_string(),
        _ => "Untitled".to_string(),
    }
}

fn height_of(info: &DocumentInfo) -> Value {
    match info.height {
        Some(h) if h > 0.0 && h.is_finite() => {
            if h.fract() == 0.0 {
                Value::from(h as i64)
            } else {
                Value::from(h)
            }
        }
        _ => Value::from(DEFAULT_HEIGHT),
    }
}

/// Parse and validate (spec 3.5, the outcomes decidable from the viz's own docs).
pub fn prepare(raw: &V2Viz, cfg: &Config) -> Result<Prepared, TranslateError> {
    let info = v2::parse_info(&raw.info).map_err(|source| TranslateError::Malformed {
        viz: v2::raw_id(&raw.info),
        source,
    })?;
    let doc_id = info.envelope.doc_id.clone().unwrap_or_default();
    if info.envelope.is_tombstone() {
        return Err(TranslateError::Tombstone {
            viz: info.id.clone().unwrap_or(doc_id),
        });
    }
    let Some(viz) = info.id.clone() else {
        return Err(TranslateError::NoId { doc_id });
    };
    match info.document_type.as_deref() {
        Some("visualization") => {}
        Some(other) => {
            return Err(TranslateError::NotVisualization {
                viz,
                document_type: other.to_string(),
            })
        }
        None => {
            return Err(TranslateError::Partial {
                viz,
                missing: "documentType",
            })
        }
    }
    let Some(owner) = info.owner.clone() else {
        return Err(TranslateError::Partial {
            viz,
            missing: "owner",
        });
    };
    let Some(created) = info.created_timestamp else {
        return Err(TranslateError::Partial {
            viz,
            missing: "createdTimestamp",
        });
    };
    if doc_id != viz {
        return Err(TranslateError::IdMismatch { doc_id, id: viz });
    }
    let content_raw = raw
        .content
        .as_ref()
        .ok_or_else(|| TranslateError::ContentMissing { viz: viz.clone() })?;
    let content = v2::parse_content(content_raw).map_err(|source| TranslateError::Malformed {
        viz: viz.clone(),
        source,
    })?;
    if content.envelope.is_tombstone() {
        return Err(TranslateError::ContentTombstone { viz });
    }
    let Some(files) = &content.files else {
        return Err(TranslateError::BadContent {
            viz,
            reason: "documentContent has no `files` list".into(),
        });
    };
    let kept = files.iter().filter(|f| f.name != history::BUNDLE_JS);
    let bytes: usize = kept.clone().map(|f| f.name.len() + f.text.len()).sum();
    if kept.count() == 0 {
        return Err(TranslateError::NoFiles { viz });
    }
    if bytes > cfg.max_content_bytes {
        return Err(TranslateError::ContentTooLarge {
            viz,
            bytes,
            limit: cfg.max_content_bytes,
        });
    }
    let content_v = content.envelope.version.unwrap_or(0);
    let ops = v2::parse_ops(&raw.ops).unwrap_or_else(|e| {
        // A log we cannot even parse is an unusable log: history falls back (spec 3.5).
        tracing::warn!(viz = %viz, error = %e, "op log does not parse; history will fall back");
        Vec::new()
    });
    let parent = if viz == PRIMORDIAL_VIZ_ID {
        ParentRequest::Root
    } else {
        match &info.forked_from {
            Some(p) if p != &viz => ParentRequest::Viz(p.clone()),
            _ => ParentRequest::Primordial,
        }
    };
    let mut user_ids = vec![owner.clone()];
    let others = info
        .upvotes
        .iter()
        .flatten()
        .filter_map(|u| u.user_id.as_ref());
    let others = others.chain(
        info.collaborators
            .iter()
            .flatten()
            .filter_map(|c| c.user_id.as_ref()),
    );
    for u in others {
        if !user_ids.contains(u) {
            user_ids.push(u.clone());
        }
    }
    Ok(Prepared {
        analytics_id: v2::pageview_event_id(&owner, &viz),
        title: title_of(&info),
        height: height_of(&info),
        content_state: v2::payload(content_raw),
        info_v: info.envelope.version.unwrap_or(0),
        viz,
        content_v,
        ops,
        ops_withheld: raw.ops_withheld.clone(),
        owner,
        created,
        parent,
        user_ids,
        info,
        content,
    })
}

/// The commit of the parent a fork hangs from: the parent's last commit with timestamp ≤ the
/// child's creation, else the parent's first (spec 3.1). `commits` in chain order.
pub fn fork_point(commits: &[v3::Commit], child_created: i64) -> Option<&v3::Commit> {
    commits
        .iter()
        .rev()
        .find(|c| c.timestamp <= child_created)
        .or(commits.first())
}

/// The parent the translation hangs the viz from.
#[derive(Debug, Clone)]
pub enum Parent<'a> {
    /// The primordial viz: its first commit has no parent and diffs from `{}`.
    Root,
    Fork {
        viz: &'a str,
        /// The parent's commit at the fork point ([`fork_point`]).
        commit: &'a str,
        /// V3 content at that commit.
        content: &'a Value,
        /// True when V2 had no usable `forkedFrom` or flagged it `forkFromBackfilled`.
        backfilled: bool,
    },
}

/// What the ledger remembers of the last successful migration, needed to re-sync.
#[derive(Debug, Clone, PartialEq)]
pub struct Previous {
    pub content_v: u64,
    pub start_commit: String,
    pub end_commit: String,
    pub end_timestamp: i64,
    /// The V3 content at `end_commit`.
    pub content: Value,
    /// File ids aligned with the V2 files array at `content_v`.
    pub file_ids: Vec<String>,
    /// The V2 analytics record at the last merge.
    pub analytics: Option<Intervals>,
    pub forked_from: Option<String>,
    pub forked_from_is_backfilled: Option<bool>,
}

/// Everything besides the viz's own docs.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub parent: Parent<'a>,
    /// Raw V2 `user` docs found for [`Prepared::user_ids`] (missing ones are simply absent).
    pub users: &'a HashMap<String, Value>,
    /// Raw V2 page-view record, if any.
    pub analytics: Option<&'a Value>,
    /// V3's `analyticsevent` doc as it is now, if it exists.
    pub v3_analytics: Option<&'a v3::AnalyticsEvent>,
    /// Set on re-sync.
    pub previous: Option<&'a Previous>,
    /// Users of [`Prepared::user_ids`] whose V3 account is deleted (a `user` tombstone): never
    /// re-created; the viz of such an owner is skipped, their upvotes and collaborations are
    /// skipped entries (spec 3.4). [`NO_DELETED_USERS`] when none are.
    pub deleted_users: &'a BTreeSet<String>,
    /// `migratedTimestamp` (seconds); passed in so translation stays pure.
    pub now: i64,
}

/// An empty [`Context::deleted_users`].
pub static NO_DELETED_USERS: BTreeSet<String> = BTreeSet::new();

/// A referenced user that could not be migrated; its upvote or permission was skipped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedEntry {
    pub kind: &'static str,
    pub user: String,
    pub reason: String,
}

/// The V3 documents of one viz.
#[derive(Debug, Clone)]
pub struct Translation {
    pub viz: String,
    pub info: v3::Info,
    pub content: Value,
    /// New commits, oldest first: all of them on a first migration, the appended ones on re-sync.
    pub commits: Vec<v3::Commit>,
    pub users: Vec<v3::User>,
    pub upvotes: Vec<v3::Upvote>,
    pub permissions: Vec<v3::Permission>,
    pub analytics: Option<v3::AnalyticsEvent>,
    /// The V2 record merged this time (the ledger keeps it for the next delta).
    pub analytics_v2: Option<Intervals>,
    pub history: Mode,
    pub skipped: Vec<SkippedEntry>,
    /// Ledger: file ids aligned with the V2 files array at `content_v`.
    pub file_ids: Vec<String>,
    pub content_v: u64,
}

/// Translate a prepared viz (spec 3, 3.1, 3.4). Pure.
pub fn translate(p: &Prepared, ctx: &Context, cfg: &Config) -> Result<Translation, TranslateError> {
    let users = migrate_users(p, ctx)?;
    let empty = Value::Object(Map::new());
    let (base, initial_ids, since_v) = match (ctx.previous, &ctx.parent) {
        (Some(prev), _) => (
            &prev.content,
            InitialIds::Aligned(prev.file_ids.clone()),
            Some(prev.content_v),
        ),
        (None, Parent::Fork { content, .. }) => (*content, InitialIds::MatchBase, None),
        (None, Parent::Root) => (&empty, InitialIds::MatchBase, None),
    };
    let hist = history::build(&history::Request {
        shape: history::Shape {
            viz: &p.viz,
            title: &p.title,
            height: p.height.clone(),
        },
        snapshot: &p.content_state,
        snapshot_v: p.content_v,
        head: p.content.envelope.op_link.as_deref(),
        ops: &p.ops,
        withheld: p.ops_withheld.as_deref(),
        base,
        since_v,
        initial_ids,
        session_gap_secs: cfg.session_gap_secs,
    })
    .map_err(|reason| TranslateError::BadContent {
        viz: p.viz.clone(),
        reason,
    })?;

    // Timestamps: the chain is monotonic, starts at `created` and ends at `updated` (spec 2.2).
    let floor = ctx
        .previous
        .map_or(p.created, |prev| prev.end_timestamp.max(p.created));
    let last_op = hist.drafts.iter().filter_map(|d| match d.stamp {
        Stamp::Op(t) => Some(t),
        _ => None,
    });
    let updated = last_op.fold(p.updated_hint().max(floor), i64::max);
    let mut parent_commit = match (ctx.previous, &ctx.parent) {
        (Some(prev), _) => Some(prev.end_commit.clone()),
        (None, Parent::Fork { commit, .. }) => Some(commit.to_string()),
        (None, Parent::Root) => None,
    };
    let mut commits: Vec<v3::Commit> = Vec::with_capacity(hist.drafts.len() + 1);
    let mut clock = floor;
    for d in &hist.drafts {
        let ts = match d.stamp {
            Stamp::Created => p.created,
            Stamp::Op(t) => t.clamp(clock, updated),
            Stamp::Updated => updated,
        };
        clock = ts;
        let purpose = format!(
            "{}|{}",
            d.purpose,
            parent_commit.as_deref().unwrap_or("root")
        );
        let id = ids::commit_id(&p.viz, d.v_from, d.v_to, &purpose);
        commits.push(commit(
            &id,
            parent_commit.replace(id.clone()),
            p,
            ts,
            d.ops.clone(),
        ));
    }
    if clock < updated || commits.is_empty() && ctx.previous.is_none() {
        // Like every commit id, it names what it hangs from: a retry that resolves another fork
        // point or history mode must not reuse a commit pointing elsewhere.
        let purpose = format!(
            "end@{updated}|{}",
            parent_commit.as_deref().unwrap_or("root")
        );
        let id = ids::commit_id(&p.viz, p.content_v, p.content_v, &purpose);
        commits.push(commit(
            &id,
            parent_commit.replace(id.clone()),
            p,
            updated,
            None,
        ));
    }
    let start = match ctx.previous {
        Some(prev) => prev.start_commit.clone(),
        None => commits[0].id.clone(),
    };
    let end = parent_commit.expect("a chain has an end");

    let (upvotes, permissions, skipped) = memberships(p, &users, ctx.deleted_users);
    let (forked_from, backfilled) = match &ctx.parent {
        Parent::Root => (None, None),
        Parent::Fork {
            viz, backfilled, ..
        } => (
            Some(viz.to_string()),
            (*backfilled || p.info.fork_from_backfilled == Some(true)).then_some(true),
        ),
    };
    // Re-sync never moves a viz to another parent: its first commit already points there.
    let (forked_from, backfilled) = match ctx.previous {
        Some(prev) => (prev.forked_from.clone(), prev.forked_from_is_backfilled),
        None => (forked_from, backfilled),
    };
    let info = v3::Info {
        id: p.viz.clone(),
        owner: p.owner.clone(),
        title: p.title.clone(),
        forked_from,
        forked_from_is_backfilled: backfilled,
        created: p.created,
        updated,
        start,
        end,
        committed: true,
        commit_authors: Vec::new(),
        forks_count: 0,
        upvotes_count: upvotes.len() as i64,
        visibility: if p.info.privacy.as_deref() == Some("private") {
            "private"
        } else {
            "public"
        }
        .to_string(),
        migrated_from_v2: true,
        migrated_timestamp: ctx.now,
    };
    let (analytics, analytics_v2) = match ctx.analytics.map(v2::parse_event_record) {
        None => (None, None),
        Some(Err(e)) => {
            return Err(TranslateError::Malformed {
                viz: p.viz.clone(),
                source: e,
            })
        }
        Some(Ok(rec)) => {
            let last = ctx.previous.and_then(|prev| prev.analytics.as_ref());
            let merged = analytics::merge_record(ctx.v3_analytics, &rec, last);
            (Some(merged), Some(rec.intervals))
        }
    };
    Ok(Translation {
        viz: p.viz.clone(),
        info,
        content: hist.content,
        commits,
        users: users.into_values().collect(),
        upvotes,
        permissions,
        analytics,
        analytics_v2,
        history: hist.mode,
        skipped,
        file_ids: hist.file_ids,
        content_v: p.content_v,
    })
}

fn commit(
    id: &str,
    parent: Option<String>,
    p: &Prepared,
    timestamp: i64,
    ops: Option<Value>,
) -> v3::Commit {
    v3::Commit {
        id: id.to_string(),
        parent,
        viz: p.viz.clone(),
        authors: vec![p.owner.clone()],
        timestamp,
        ops: ops.unwrap_or(Value::Null),
        milestone: Value::Null,
    }
}

/// V3 users for every referenced V2 user found (owner first). A missing owner fails the viz.
fn migrate_users(
    p: &Prepared,
    ctx: &Context,
) -> Result<BTreeMap<String, v3::User>, TranslateError> {
    let mut out = BTreeMap::new();
    for id in &p.user_ids {
        if ctx.deleted_users.contains(id) {
            if id == &p.owner {
                return Err(TranslateError::OwnerDeletedInV3 {
                    viz: p.viz.clone(),
                    owner: id.clone(),
                });
            }
            continue;
        }
        let found = ctx.users.get(id).and_then(|raw| v2::parse_user(raw).ok());
        match found.filter(|u| !u.envelope.is_tombstone()) {
            Some(u) => {
                out.insert(id.clone(), user(id, &u));
            }
            None if id == &p.owner => {
                return Err(TranslateError::OwnerMissing {
                    viz: p.viz.clone(),
                    owner: id.clone(),
                })
            }
            None => {}
        }
    }
    Ok(out)
}

/// A V3 user from a V2 user (spec 3, users).
pub fn user(id: &str, u: &v2::User) -> v3::User {
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    let user_name = u
        .user_name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| id.to_string());
    v3::User {
        id: id.to_string(),
        display_name: u
            .full_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| user_name.clone()),
        user_name,
        primary_email: s(&u.email),
        secondary_emails: Vec::new(),
        picture: s(&u.avatar_url),
        plan: "free".to_string(),
        company: s(&u.company),
        website: s(&u.website),
        location: s(&u.location),
        bio: s(&u.bio),
        migrated_from_v2: true,
    }
}

type Memberships = (Vec<v3::Upvote>, Vec<v3::Permission>, Vec<SkippedEntry>);

/// An upvote or collaborator entry that is not migrated: its user is missing from V2 `user`,
/// or the entry names none (`userId` absent).
fn skipped_entry(
    kind: &'static str,
    role: &str,
    index: usize,
    user: Option<&str>,
    viz: &str,
    deleted: &BTreeSet<String>,
) -> SkippedEntry {
    SkippedEntry {
        kind,
        user: user.unwrap_or_default().to_string(),
        reason: match user {
            Some(u) if deleted.contains(u) => {
                format!("{role} {u} of viz {viz} deleted their V3 account")
            }
            Some(u) => format!("{role} {u} of viz {viz} is missing from V2 user"),
            None => format!("{kind} entry {index} of viz {viz} has no userId"),
        },
    }
}

fn memberships(
    p: &Prepared,
    users: &BTreeMap<String, v3::User>,
    deleted: &BTreeSet<String>,
) -> Memberships {
    let mut skipped = Vec::new();
    let mut upvotes: BTreeMap<String, v3::Upvote> = BTreeMap::new();
    for (i, u) in p.info.upvotes.iter().flatten().enumerate() {
        let Some(user) = u.user_id.as_ref().filter(|id| users.contains_key(*id)) else {
            skipped.push(skipped_entry(
                "upvote",
                "upvoter",
                i,
                u.user_id.as_deref(),
                &p.viz,
                deleted,
            ));
            continue;
        };
        let timestamp = u.timestamp.unwrap_or(p.created);
        let id = ids::user_viz_id(user, &p.viz);
        let entry = upvotes.entry(id.clone()).or_insert_with(|| v3::Upvote {
            id,
            user: user.clone(),
            viz: p.viz.clone(),
            timestamp,
            migrated_from_v2: true,
        });
        entry.timestamp = entry.timestamp.min(timestamp);
    }
    let granted_at = p.info.last_updated_timestamp.unwrap_or(p.created);
    let mut permissions: BTreeMap<String, v3::Permission> = BTreeMap::new();
    for (i, c) in p.info.collaborators.iter().flatten().enumerate() {
        let Some(user) = c.user_id.as_ref().filter(|id| users.contains_key(*id)) else {
            skipped.push(skipped_entry(
                "collaborator",
                "collaborator",
                i,
                c.user_id.as_deref(),
                &p.viz,
                deleted,
            ));
            continue;
        };
        let id = ids::user_viz_id(user, &p.viz);
        permissions
            .entry(id.clone())
            .or_insert_with(|| v3::Permission {
                id,
                user: user.clone(),
                resource: p.viz.clone(),
                role: "editor".to_string(),
                timestamp: granted_at,
                granted_by: p.owner.clone(),
                migrated_from_v2: true,
            });
    }
    (
        upvotes.into_values().collect(),
        permissions.into_values().collect(),
        skipped,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ledger's `fingerprint` keeps its layout: records written before [`Source`] existed
    /// still compare equal when V2 did not change (else every migrated viz would re-sync once).
    #[test]
    fn the_source_fingerprint_keeps_its_layout() {
        for (name, raw) in crate::fixtures::viz_fixtures() {
            let Ok(p) = prepare(&crate::fixtures::v2_viz(&raw), &Config::default()) else {
                continue;
            };
            let i = &p.info;
            let upvotes: Vec<_> = i
                .upvotes
                .iter()
                .flatten()
                .map(|u| (&u.user_id, u.timestamp))
                .collect();
            let collaborators: Vec<_> = i
                .collaborators
                .iter()
                .flatten()
                .map(|c| &c.user_id)
                .collect();
            let layout = ids::fingerprint(&serde_json::json!([
                p.viz,
                p.content_v,
                p.owner,
                p.title,
                p.height,
                p.created,
                i.last_updated_timestamp,
                i.forked_from,
                i.fork_from_backfilled,
                i.privacy,
                upvotes,
                collaborators
            ]));
            assert_eq!(p.source_fingerprint(), layout, "{name}");
            assert_eq!(
                Source::of(&p.viz, &p.info, p.content_v).unwrap().fields(),
                p.source().fields()
            );
        }
    }
}
