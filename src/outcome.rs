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

/// What the ledger says about the last successful migration of a viz.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastMigration<'a> {
    /// [`crate::translate::Prepared::source_fingerprint`] at that time.
    pub fingerprint: &'a str,
    /// Fingerprint of the V2 analytics record merged then (`None`: none existed).
    pub analytics: Option<&'a str>,
    /// The `end` commit we wrote.
    pub end_commit: &'a str,
    /// `_v` of the V3 content snapshot right after our write.
    pub v3_content_v: i64,
}

/// What V3 holds for the viz now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V3Now<'a> {
    /// Info's `end` commit.
    pub end: &'a str,
    /// `_v` of the content snapshot.
    pub content_v: i64,
}

/// What a job must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Never migrated (or only skipped/failed before): translate from scratch.
    Fresh,
    /// Migrated, and V2 changed since: append commits, update snapshots.
    Resync,
    /// Migrated, and only V2's page-view record changed: merge the analytics delta, touch nothing else.
    AnalyticsOnly,
    /// Migrated and V2 unchanged: write nothing.
    Unchanged,
    /// V3 has commits after our last `end`: a human decides.
    Conflict { reason: String },
}

/// Decide the plan from the ledger, V2 now and V3 now. A V3 edit (a commit after our `end`, or a
/// content op after ours) is a conflict only when V2 changed too: an unchanged V2 has nothing to
/// overwrite it with, and a page-view merge never touches what users edit.
pub fn plan(
    last: Option<&LastMigration>,
    fingerprint_now: &str,
    analytics_now: Option<&str>,
    v3: Option<V3Now>,
) -> Plan {
    let Some(last) = last else { return Plan::Fresh };
    // Info gone from V3 (wiped, or rolled back by an operator): migrate again from scratch.
    let Some(v3) = v3 else { return Plan::Fresh };
    if last.fingerprint == fingerprint_now {
        return if last.analytics == analytics_now {
            Plan::Unchanged
        } else {
            Plan::AnalyticsOnly
        };
    }
    if v3.end != last.end_commit {
        return Plan::Conflict {
            reason: format!(
                "V3 info.end is {}, not our last migrated commit {}: the viz was edited in V3",
                v3.end, last.end_commit
            ),
        };
    }
    if v3.content_v != last.v3_content_v {
        return Plan::Conflict {
            reason: format!(
                "V3 content is at version {}, we left it at {}: the viz was edited in V3",
                v3.content_v, last.v3_content_v
            ),
        };
    }
    Plan::Resync
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        let last = LastMigration {
            fingerprint: "f1",
            analytics: Some("a1"),
            end_commit: "c9",
            v3_content_v: 4,
        };
        let same = Some(V3Now {
            end: "c9",
            content_v: 4,
        });
        let committed = Some(V3Now {
            end: "zz",
            content_v: 4,
        });
        let edited = Some(V3Now {
            end: "c9",
            content_v: 5,
        });
        assert_eq!(plan(None, "f1", None, None), Plan::Fresh);
        assert_eq!(plan(Some(&last), "f1", Some("a1"), None), Plan::Fresh);
        assert_eq!(plan(Some(&last), "f1", Some("a1"), same), Plan::Unchanged);
        assert_eq!(
            plan(Some(&last), "f1", Some("a1"), edited),
            Plan::Unchanged,
            "nothing to overwrite"
        );
        assert_eq!(plan(Some(&last), "f2", Some("a1"), same), Plan::Resync);
        assert_eq!(
            plan(Some(&last), "f1", Some("a2"), same),
            Plan::AnalyticsOnly
        );
        assert_eq!(
            plan(Some(&last), "f1", Some("a2"), edited),
            Plan::AnalyticsOnly,
            "analytics merge never conflicts"
        );
        assert!(
            matches!(plan(Some(&last), "f2", Some("a1"), committed), Plan::Conflict { reason } if reason.contains("zz"))
        );
        assert!(
            matches!(plan(Some(&last), "f2", Some("a1"), edited), Plan::Conflict { reason } if reason.contains("version 5"))
        );
    }

    #[test]
    fn dispositions_map_to_outcomes() {
        assert_eq!(Disposition::Skip.final_outcome(), Outcome::Skipped);
        assert_eq!(Disposition::DeadLetter.final_outcome(), Outcome::Failed);
        assert_eq!(Disposition::Retry.final_outcome(), Outcome::Failed);
        assert_eq!(Outcome::Conflict.as_str(), "conflict");
    }
}
