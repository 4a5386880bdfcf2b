//! Job outcomes (spec 3.5) and the decision, before any write, of what a job has to do with a viz
//! that may already be in V3: migrate it fresh, re-sync it, leave it alone, or report a conflict.
//! Every job ends in exactly one [`Outcome`], recorded in the ledger.

use serde::{Deserialize, Serialize};

/// The one recorded end of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Migrated,
    Skipped,
    Failed,
    Conflict,
    Unchanged,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Migrated => "migrated",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
            Outcome::Conflict => "conflict",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// What the worker does with an error: retry later, dead-letter it, or record a skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Retry,
    DeadLetter,
    Skip,
}

impl Disposition {
    /// The outcome recorded once retries (if any) are exhausted.
    pub fn final_outcome(self) -> Outcome {
        match self {
            Disposition::Skip => Outcome::Skipped,
            Disposition::Retry | Disposition::DeadLetter => Outcome::Failed,
        }
    }
}

/// Why a job failed, as the `error_kind` label of the retry and dead-letter counters and the
/// `x-vizhub-error-kind` header: one value per failure class of [`JobError`] and
/// [`TranslateError`], the fixed set [`ErrorKind::ALL`]. `JobError::error_kind` and
/// `TranslateError::error_kind` match every variant without a wildcard, so a new failure class
/// does not compile until it has its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    // TranslateError: the V2 documents cannot become V3 ones.
    Tombstone,
    NoId,
    NotVisualization,
    PartialDoc,
    NoFiles,
    ContentMissing,
    ContentTombstone,
    ContentTooLarge,
    IdMismatch,
    OwnerMissing,
    OwnerDeletedInV3,
    Malformed,
    BadContent,
    // JobError: reading, writing, the fork chain, the delivery itself.
    V2Read,
    V3Write,
    NotFound,
    Parent,
    Chain,
    Raced,
    BadMessage,
    CrashLoop,
    Panic,
}

impl ErrorKind {
    /// Every kind, in the order `/metrics` lists them.
    pub const ALL: [ErrorKind; 22] = [
        ErrorKind::Tombstone,
        ErrorKind::NoId,
        ErrorKind::NotVisualization,
        ErrorKind::PartialDoc,
        ErrorKind::NoFiles,
        ErrorKind::ContentMissing,
        ErrorKind::ContentTombstone,
        ErrorKind::ContentTooLarge,
        ErrorKind::IdMismatch,
        ErrorKind::OwnerMissing,
        ErrorKind::OwnerDeletedInV3,
        ErrorKind::Malformed,
        ErrorKind::BadContent,
        ErrorKind::V2Read,
        ErrorKind::V3Write,
        ErrorKind::NotFound,
        ErrorKind::Parent,
        ErrorKind::Chain,
        ErrorKind::Raced,
        ErrorKind::BadMessage,
        ErrorKind::CrashLoop,
        ErrorKind::Panic,
    ];

    /// The label value (the same names `JobError::kind` gives headers and `dlq stats`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Tombstone => "tombstone",
            ErrorKind::NoId => "no_id",
            ErrorKind::NotVisualization => "not_visualization",
            ErrorKind::PartialDoc => "partial_doc",
            ErrorKind::NoFiles => "no_files",
            ErrorKind::ContentMissing => "content_missing",
            ErrorKind::ContentTombstone => "content_tombstone",
            ErrorKind::ContentTooLarge => "content_too_large",
            ErrorKind::IdMismatch => "id_mismatch",
            ErrorKind::OwnerMissing => "owner_missing",
            ErrorKind::OwnerDeletedInV3 => "owner_deleted_in_v3",
            ErrorKind::Malformed => "malformed",
            ErrorKind::BadContent => "bad_content",
            ErrorKind::V2Read => "v2_read",
            ErrorKind::V3Write => "v3_write",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Parent => "parent",
            ErrorKind::Chain => "chain",
            ErrorKind::Raced => "raced",
            ErrorKind::BadMessage => "bad_message",
            ErrorKind::CrashLoop => "crash_loop",
            ErrorKind::Panic => "panic",
        }
    }

    /// Position in [`ErrorKind::ALL`] (for per-kind counters).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reason of a `skipped` viz that V3's users deleted after it was migrated (info or content
/// `_type: null`): never re-created (spec 3.4, 3.5).
pub const DELETED_IN_V3: &str = "deleted in V3";

/// The reason of a `skipped` viz whose owner deleted their V3 account: neither the viz nor the
/// account is re-created (spec 3.4).
pub const OWNER_DELETED_IN_V3: &str = "owner deleted in V3";

/// What the ledger says about the last successful migration of a viz.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastMigration<'a> {
    /// [`crate::translate::Prepared::source_fingerprint`] at that time.
    pub fingerprint: &'a str,
    /// Fingerprint of the V2 analytics record merged then (`None`: none existed).
    pub analytics: Option<&'a str>,
}

/// What V3 holds for the viz now (its info and content snapshots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V3Now {
    /// Neither is there (never written, or wiped by an operator).
    Absent,
    /// Info or content is a ShareDB tombstone (`_type: null`): V3's users deleted the viz.
    Deleted,
    /// Both live (or info live and content not written yet).
    Live,
}

/// What a job must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Never migrated (or only skipped/failed before): translate from scratch.
    Fresh,
    /// Migrated, and V2 changed since: bring V2's changes, merged three-way with V3's
    /// (spec 3.4: fields both changed end the job `conflict`, V3's kept).
    Resync,
    /// Migrated, and only V2's page-view record changed: merge the analytics delta, touch nothing else.
    AnalyticsOnly,
    /// Migrated and V2 unchanged: write nothing.
    Unchanged,
    /// V3's users deleted the viz: never re-created, the job ends `skipped` ([`DELETED_IN_V3`]).
    DeletedInV3,
}

/// Decide the plan from the ledger, V2 now and V3 now. A deletion in V3 is an act of its users
/// and wins over everything V2 says. Edits in V3 no longer decide here: a re-sync merges them
/// field by field (see [`crate::merge`]); an unchanged V2 has nothing to bring.
pub fn plan(
    last: Option<&LastMigration>,
    fingerprint_now: &str,
    analytics_now: Option<&str>,
    v3: V3Now,
) -> Plan {
    match (last, v3) {
        (_, V3Now::Deleted) => Plan::DeletedInV3,
        // Info gone from V3 (wiped, or rolled back by an operator): migrate again from scratch.
        (None, _) | (_, V3Now::Absent) => Plan::Fresh,
        (Some(last), V3Now::Live) if last.fingerprint != fingerprint_now => Plan::Resync,
        (Some(last), V3Now::Live) if last.analytics != analytics_now => Plan::AnalyticsOnly,
        (Some(_), V3Now::Live) => Plan::Unchanged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        let last = LastMigration {
            fingerprint: "f1",
            analytics: Some("a1"),
        };
        let live = V3Now::Live;
        assert_eq!(plan(None, "f1", None, V3Now::Absent), Plan::Fresh);
        assert_eq!(plan(None, "f1", None, live), Plan::Fresh);
        assert_eq!(
            plan(Some(&last), "f1", Some("a1"), V3Now::Absent),
            Plan::Fresh
        );
        assert_eq!(plan(Some(&last), "f1", Some("a1"), live), Plan::Unchanged);
        assert_eq!(plan(Some(&last), "f2", Some("a1"), live), Plan::Resync);
        assert_eq!(plan(Some(&last), "f2", Some("a2"), live), Plan::Resync);
        assert_eq!(
            plan(Some(&last), "f1", Some("a2"), live),
            Plan::AnalyticsOnly
        );
        // A deletion in V3 wins, whatever V2 or the ledger says.
        for (l, f) in [(Some(&last), "f1"), (Some(&last), "f2"), (None, "f1")] {
            assert_eq!(plan(l, f, Some("a2"), V3Now::Deleted), Plan::DeletedInV3);
        }
    }

    #[test]
    fn dispositions_map_to_outcomes() {
        assert_eq!(Disposition::Skip.final_outcome(), Outcome::Skipped);
        assert_eq!(Disposition::DeadLetter.final_outcome(), Outcome::Failed);
        assert_eq!(Disposition::Retry.final_outcome(), Outcome::Failed);
        assert_eq!(Outcome::Conflict.as_str(), "conflict");
    }

    #[test]
    fn error_kinds_are_a_fixed_set() {
        // ALL is in declaration order (index() relies on it) and its names are distinct.
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k}");
        }
        let names: std::collections::HashSet<_> =
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), ErrorKind::ALL.len());
    }
}
