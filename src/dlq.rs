//! The dead-letter queue, for operators: list and group what failed, export it, and move it back
//! to the work queue once the cause is fixed. Listing and exporting are non-destructive (messages
//! are browsed and returned untouched); requeueing publishes with confirm first and acks second.

use crate::broker::{self, BrokerError, Browsed, Topology};
use crate::job::{self, Stamps};
use serde::Serialize;
use std::collections::BTreeMap;

/// One dead letter, as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub viz: String,
    pub error_kind: String,
    pub reason: String,
    pub fingerprint: String,
    pub attempts: i64,
    pub first_failure: Option<i64>,
    pub last_failure: Option<i64>,
    /// Raw job body.
    pub job: serde_json::Value,
}

impl DeadLetter {
    pub fn from_browsed(b: &Browsed) -> Self {
        // Shown as it is, JSON or not (a body that is no job is one reason to be here).
        let job: serde_json::Value = serde_json::from_slice(&b.body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&b.body).into_owned())
        });
        let s = Stamps::read(&b.headers);
        DeadLetter {
            viz: s.viz.unwrap_or_else(|| {
                crate::job::Job::parse(&b.body).map_or_else(|_| "<unknown>".to_string(), |j| j.viz)
            }),
            // A dead letter without our headers came from the broker's delivery limit (a crash loop).
            error_kind: s.error_kind.unwrap_or_else(|| "delivery_limit".into()),
            reason: s.error_message.unwrap_or_else(|| {
                "delivered too many times without an outcome (worker crash loop?)".into()
            }),
            fingerprint: s.fingerprint.unwrap_or_else(|| "delivery_limit".into()),
            attempts: s.attempts.unwrap_or(0),
            first_failure: s.first_failure,
            last_failure: s.last_failure,
            job,
        }
    }
}

/// Every dead letter (non-destructive).
pub async fn list(conn: &lapin::Connection, t: &Topology) -> Result<Vec<DeadLetter>, BrokerError> {
    let browsed = broker::browse(conn, &t.dead(), usize::MAX).await?;
    Ok(browsed.iter().map(DeadLetter::from_browsed).collect())
}

/// Count per fingerprint, with an example reason, most frequent first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub fingerprint: String,
    pub error_kind: String,
    pub count: usize,
    pub example: String,
    pub vizzes: Vec<String>,
}

pub fn stats(letters: &[DeadLetter]) -> Vec<Group> {
    let mut groups: BTreeMap<&str, Group> = BTreeMap::new();
    for l in letters {
        let g = groups.entry(&l.fingerprint).or_insert_with(|| Group {
            fingerprint: l.fingerprint.clone(),
            error_kind: l.error_kind.clone(),
            count: 0,
            example: l.reason.clone(),
            vizzes: Vec::new(),
        });
        g.count += 1;
        g.vizzes.push(l.viz.clone());
    }
    let mut out: Vec<Group> = groups.into_values().collect();
    out.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.fingerprint.cmp(&b.fingerprint))
    });
    out
}

/// Which dead letters to requeue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    All,
    Fingerprint(String),
    Viz(String),
}

impl Filter {
    pub fn matches(&self, l: &DeadLetter) -> bool {
        match self {
            Filter::All => true,
            Filter::Fingerprint(f) => &l.fingerprint == f,
            Filter::Viz(v) => &l.viz == v,
        }
    }
}

/// Move matching dead letters back to the work queue (attempt counters reset). Returns how many
/// moved (or, with `dry_run`, would move).
pub async fn requeue(
    conn: &lapin::Connection,
    t: &Topology,
    filter: &Filter,
    dry_run: bool,
) -> Result<usize, BrokerError> {
    broker::requeue(
        conn,
        &t.dead(),
        &t.work(),
        dry_run,
        |b| filter.matches(&DeadLetter::from_browsed(b)),
        job::reset_for_requeue,
    )
    .await
}

/// Where `dlq export` writes: a file, or stdout for `--out -`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportTo {
    Stdout,
    File(std::path::PathBuf),
}

impl From<std::path::PathBuf> for ExportTo {
    fn from(p: std::path::PathBuf) -> Self {
        if p.as_os_str() == "-" {
            ExportTo::Stdout
        } else {
            ExportTo::File(p)
        }
    }
}

impl std::fmt::Display for ExportTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExportTo::Stdout => f.write_str("stdout"),
            ExportTo::File(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("writing the dead letters to {to}: {source}")]
    Write {
        to: ExportTo,
        source: std::io::Error,
    },
    #[error("serializing the dead letters: {0}")]
    Json(#[from] serde_json::Error),
}

/// Write `letters` as one pretty JSON array. A file is replaced atomically (a crash or a reader
/// sees the previous export or the whole new one); stdout gets the document and a newline.
pub fn export(letters: &[DeadLetter], to: &ExportTo) -> Result<(), ExportError> {
    use std::io::Write as _;
    let mut json = serde_json::to_vec_pretty(letters)?;
    json.push(b'\n');
    let written = match to {
        ExportTo::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(&json).and_then(|()| out.flush())
        }
        ExportTo::File(path) => crate::cli::write_atomically(path, &json),
    };
    written.map_err(|source| ExportError::Write {
        to: to.clone(),
        source,
    })
}
