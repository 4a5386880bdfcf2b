//! Writing V3: ShareDB snapshots and op logs exactly as `sharedb-mongo` lays them out, so the V3
//! web app opens and edits what we write as if ShareDB had created it (spec 2.1).
//!
//! - A new doc is a `v = 0` `create` op in `o_<collection>` followed by the snapshot
//!   (`_type: "p"`, `_v: 1`, `_m`, `_o` = that op), the order `sharedb-mongo` uses.
//! - A changed doc gets a json1 op (the diff between what V3 has and what we want) appended to its
//!   op log, then the snapshot is replaced *on the condition that `_v` is still what we read*,
//!   as ShareDB does. If a concurrent ShareDB edit won the race, our update matches nothing and we
//!   report it (the op we inserted is an orphan that `sharedb-mongo` ignores: it follows `_o`).
//! - Op `_id`s are derived from (collection, doc id, version, op body): a re-run of an attempt
//!   that stopped half-way inserts the same op once (duplicate-key errors are expected and
//!   ignored), while two writers racing at one version with *different* ops (two forks
//!   recounting their parent's `forksCount`, 1 and 2) insert two ops; the loser takes its op
//!   back (it is an orphan no snapshot links to) once its snapshot update matched nothing.
//!   Derived from the version alone, the loser's op would have been dropped as a duplicate and
//!   the winner's snapshot would link to an op that says something else.
//! - Every update keeps the snapshot's `_m.ctime`; every op carries `src: "vizhub-migrate"`
//!   ([`OP_SRC`]), which is how V3's own edits are told from ours ([`Policy::UpdateIfOurs`],
//!   `verify`). The op-log indexes are made exactly as sharedb-mongo makes them
//!   ([`Store::ensure_indexes`]), so V3's own index calls are no-ops.
//! - [`Store::stop_after_writes`] is a test hook: the store refuses every write after the n-th,
//!   as if the pod had been killed there.
//! - Reads and writes are batched per collection (`$in` finds, unordered `insert_many`) to keep
//!   round trips per viz low; [`Store::round_trips`] counts them for the benchmark.
//! - Every write command is timed by [`WriteKind`] in [`WriteTimes`] (shared by clones), which
//!   `/metrics` exports as `vizhub_migrate_v3_write_duration_seconds{write}`.

use crate::json1;
use crate::v3::{collections, Commit, OT_TYPE};
use futures_util::TryStreamExt;
use mongodb::bson::{self, doc, oid::ObjectId, Bson, Document};
use mongodb::error::{ErrorKind, WriteConcernError, WriteFailure};
use mongodb::options::InsertManyOptions;
use mongodb::{Collection, Database};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// MongoDB's duplicate-key error code.
pub const DUPLICATE_KEY: i32 = 11000;

/// Fields of a ShareDB snapshot that are envelope, not payload.
const ENVELOPE: [&str; 5] = ["_id", "_type", "_v", "_m", "_o"];

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("V3 MongoDB: {}", describe_mongo(.0))]
    Mongo(#[from] mongodb::error::Error),
    #[error("V3 document {collection}/{id} cannot be stored: {reason}")]
    Encode {
        collection: String,
        id: String,
        reason: String,
    },
    /// The write budget of [`Store::stop_after_writes`] is spent: a test stopping a job between
    /// two writes, as a killed pod would.
    #[error("stopped before a V3 write (test hook)")]
    Stopped,
    /// A statement of a multi-document write the server refused (its code and message).
    #[error("V3 MongoDB refused a write (code {code}): {message}")]
    Refused { code: i32, message: String },
}

impl StoreError {
    /// A write that collided with another one on the server (`WriteConflict`): worth running
    /// again at once.
    pub fn is_conflict(&self) -> bool {
        match self {
            StoreError::Mongo(e) => server_code(e) == Some(112),
            StoreError::Refused { code, .. } => *code == 112,
            StoreError::Encode { .. } | StoreError::Stopped => false,
        }
    }

    /// Network errors, timeouts, elections, write conflicts: worth retrying.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Mongo(e) => is_transient_mongo(e),
            StoreError::Refused { .. } => self.is_conflict(),
            StoreError::Encode { .. } | StoreError::Stopped => false,
        }
    }
}

/// A MongoDB error in one line an operator can read and the DLQ can group by: for server
/// errors the code, its name and the message, without the raw reply the driver's `Display`
/// appends (it carries cluster times that would make every fingerprint unique).
pub fn describe_mongo(e: &mongodb::error::Error) -> String {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => format!("error {} ({}): {}", c.code, c.code_name, c.message),
        ErrorKind::Write(WriteFailure::WriteError(w)) => {
            format!("write error {}: {}", w.code, w.message)
        }
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => {
            format!(
                "write concern error {} ({}): {}",
                w.code, w.code_name, w.message
            )
        }
        ErrorKind::InsertMany(m) => {
            // What failed the insert: a statement refused for another reason than a duplicate
            // key, else the write concern (a retry of an insert that timed out meets its own
            // docs as duplicates: they are no cause), else the first statement refused.
            let writes = m.write_errors.as_deref().unwrap_or_default();
            let refused = writes.iter().find(|w| w.code != DUPLICATE_KEY);
            match (refused, &m.write_concern_error, writes.first()) {
                (Some(w), _, _) | (None, None, Some(w)) => {
                    format!("insert error {}: {}", w.code, w.message)
                }
                (None, Some(w), _) => format!(
                    "write concern error {} ({}): {}",
                    w.code, w.code_name, w.message
                ),
                (None, None, None) => "insert failed".to_string(),
            }
        }
        other => other.to_string(),
    }
}

/// Whether a MongoDB error is worth retrying (network, pool, election, write conflict, a write
/// concern not met in time).
/// `InternalError` (1) is retried too: a server reports it for failures it did not foresee
/// (SecantusDB, for one, when its storage cache is full), and a later attempt may well succeed;
/// if it keeps failing the job ends in the DLQ as any other.
///
/// A `writeConcernError` (from a driver write or, through [`write_command`], a raw one) is
/// retried unless no retry can cure it ([`is_transient_write_concern`]): the write was applied
/// on the primary but is not known to be durable, and every write of a job is idempotent, so
/// running the job again is both safe and the only way to get the acknowledgement.
pub fn is_transient_mongo(e: &mongodb::error::Error) -> bool {
    if e.contains_label("RetryableWriteError") || e.contains_label("TransientTransactionError") {
        return true;
    }
    match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. } => true,
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => is_transient_write_concern(w),
        // An unordered insert can fail both ways at once: a statement the server refused fails
        // again on a retry (unless its own code says otherwise), whatever the write concern.
        // Duplicate keys are no failure of ours (`insert_ignoring_duplicates` expects them).
        ErrorKind::InsertMany(im) => {
            let refused = im
                .write_errors
                .iter()
                .flatten()
                .filter(|w| w.code != DUPLICATE_KEY)
                .collect::<Vec<_>>();
            if refused.iter().any(|w| !RETRYABLE_CODES.contains(&w.code)) {
                return false;
            }
            match &im.write_concern_error {
                Some(w) => is_transient_write_concern(w),
                None => !refused.is_empty(),
            }
        }
        _ => server_code(e).is_some_and(|c| RETRYABLE_CODES.contains(&c)),
    }
}

/// Server error codes worth retrying: the driver's retryable-write codes, `InternalError` (1),
/// `WriteConflict` (112) and `WriteConcernFailed` (64, a wtimeout: replication lagged, a later
/// attempt may well be acknowledged in time).
const RETRYABLE_CODES: [i32; 14] = [
    1, 6, 7, 64, 89, 91, 112, 189, 262, 9001, 10107, 11600, 11602, 13436,
];

/// Whether a write concern error is worth retrying: all but the two that say the write concern
/// itself is wrong for this deployment — `UnknownReplWriteConcern` (79, a tag set no member
/// has) and `UnsatisfiableWriteConcern` (100, more nodes than there are) — which no retry
/// cures and which dead-letter at once instead of spending every job's retries.
pub fn is_transient_write_concern(w: &WriteConcernError) -> bool {
    !matches!(w.code, 79 | 100)
}

/// The `writeConcernError` of a raw write command's reply, as the driver's own typed error
/// (what `update_one` and friends return for it), so one classifier serves both. The server
/// answers `ok: 1` with it — the write was applied but not acknowledged as asked — and
/// `run_command` hands such a reply back as a success.
pub fn write_concern_error(reply: &Document) -> Option<mongodb::error::Error> {
    let w = reply.get_document("writeConcernError").ok()?;
    let code = match w.get("code") {
        Some(Bson::Int32(c)) => *c,
        Some(Bson::Int64(c)) => i32::try_from(*c).unwrap_or(0),
        Some(Bson::Double(c)) => *c as i32,
        _ => 0,
    };
    // Rebuilt field by field so that a reply with an odd field still yields the typed error.
    let mut normalized = doc! {
        "code": code,
        "codeName": w.get_str("codeName").unwrap_or_default(),
        "errmsg": w.get_str("errmsg").unwrap_or("write concern error"),
    };
    if let Ok(info) = w.get_document("errInfo") {
        normalized.insert("errInfo", info.clone());
    }
    // Cannot fail (every field has the type the driver reads); were it to, the write must
    // still fail, never pass for acknowledged.
    Some(match bson::from_document::<WriteConcernError>(normalized) {
        Ok(wce) => ErrorKind::Write(WriteFailure::WriteConcernError(wce)).into(),
        Err(e) => mongodb::error::Error::custom(format!("write concern error {code}: {e}")),
    })
}

/// Run a raw write command (`insert`, `update`, `delete`, `createIndexes`) as the driver runs
/// its own writes: with the database's configured write concern (the URI's `w`, `wtimeoutMS`,
/// `journal`), which `run_command` never adds by itself, and failing on a `writeConcernError`
/// in the reply, which `run_command` returns as a success. Per-statement `writeErrors` are left
/// to the caller ([`write_errors`]): only it knows which are expected.
pub async fn write_command(db: &Database, mut cmd: Document) -> mongodb::error::Result<Document> {
    if let Some(wc) = db.write_concern() {
        let wc = bson::to_document(wc).map_err(|e| mongodb::error::Error::custom(e.to_string()))?;
        // An empty one means "the server's default": sending `{}` would say the same, but the
        // command then differs from the driver's own for no reason.
        if !wc.is_empty() {
            cmd.insert("writeConcern", wc);
        }
    }
    let reply = db.run_command(cmd).await?;
    match write_concern_error(&reply) {
        Some(e) => Err(e),
        None => Ok(reply),
    }
}

/// The server's error code of a command or write error.
fn server_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        _ => None,
    }
}

/// What may happen to a doc that already exists in V3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Bring it to the wanted payload with an op.
    Update,
    /// Update only docs we created (`migratedFromV2: true`); leave V3-native ones alone.
    UpdateIfMigrated,
    /// Update only docs we created and still own: `migratedFromV2: true` *and* the newest op in
    /// their log is the migration's (V3 has not edited them since). The listed fields are
    /// V3's: an update keeps what V3 holds there.
    UpdateIfOurs { v3_owned: &'static [&'static str] },
    /// Create if absent, never modify.
    CreateOnly,
}

/// A ShareDB snapshot as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub id: String,
    pub version: i64,
    /// `None` for a deleted doc (`_type: null`).
    pub doc_type: Option<String>,
    pub data: Value,
    pub last_op: Option<ObjectId>,
    /// `_m.ctime` (ms): when the doc was created. Every update keeps it, as ShareDB does.
    pub ctime: Option<i64>,
    /// `_m.mtime` (ms): when the doc last changed (for a tombstone: when it was deleted).
    pub mtime: Option<i64>,
}

/// What a sync did, per doc.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub deleted: usize,
    /// Left alone by policy (V3-native docs).
    pub kept: usize,
    /// A concurrent ShareDB edit moved the doc on between our read and our write.
    pub lost_races: Vec<String>,
    /// Creates that found the doc already there (an earlier attempt, or a racing job, wrote it
    /// after the snapshots we went by were read, or the caller read none): left as they were.
    pub existed: Vec<String>,
    /// Wanted docs V3 holds as tombstones (deleted there): left deleted (see
    /// [`Store::sync_known`]).
    pub tombstones: Vec<String>,
}

impl SyncReport {
    pub fn wrote(&self) -> bool {
        self.created + self.updated + self.deleted > 0
    }
}

/// V3 database handle.
#[derive(Clone)]
pub struct Store {
    db: Database,
    round_trips: Arc<AtomicU64>,
    /// Writes left before [`StoreError::Stopped`]; negative: no limit (see
    /// [`Store::stop_after_writes`]). Shared by clones, so a test sets it on a job's store.
    writes_left: Arc<AtomicI64>,
    /// Time of each write command, by kind. Shared by clones: one per worker process.
    write_times: WriteTimes,
}

/// The write commands a job sends V3: the `write` label of the V3 write latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// ShareDB ops (`create`, json1 edit, `del`) into an `o_<collection>` op log.
    OpInsert,
    /// New snapshots (after their `create` ops), one unordered insert per collection.
    SnapshotInsert,
    /// A snapshot moved on to its next version (conditional replace on `_v`).
    SnapshotReplace,
    /// Commits of the rebuilt history.
    CommitInsert,
}

impl WriteKind {
    pub const ALL: [WriteKind; 4] = [
        WriteKind::OpInsert,
        WriteKind::SnapshotInsert,
        WriteKind::SnapshotReplace,
        WriteKind::CommitInsert,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WriteKind::OpInsert => "op_insert",
            WriteKind::SnapshotInsert => "snapshot_insert",
            WriteKind::SnapshotReplace => "snapshot_replace",
            WriteKind::CommitInsert => "commit_insert",
        }
    }
}

/// Seconds each V3 write command took (until the server answered, errors included), one
/// histogram per [`WriteKind`]. Cheap to clone: the histograms are shared.
#[derive(Debug, Clone)]
pub struct WriteTimes(Arc<[Histogram; 4]>);

impl Default for WriteTimes {
    fn default() -> Self {
        // 1 ms … ~16 s: an insert on an idle replica set takes a millisecond or two; a
        // many-document insert under load or an election much longer.
        WriteTimes(Arc::new(std::array::from_fn(|_| {
            Histogram::new(exponential_buckets(0.001, 2.0, 15))
        })))
    }
}

impl WriteTimes {
    /// The histogram of `kind`.
    pub fn of(&self, kind: WriteKind) -> &Histogram {
        &self.0[kind as usize]
    }

    /// `(kind, histogram)` for every kind.
    pub fn iter(&self) -> impl Iterator<Item = (WriteKind, &Histogram)> {
        WriteKind::ALL.into_iter().map(|k| (k, self.of(k)))
    }
}

/// The `src` of every op the migration writes (ShareDB clients write their connection id there):
/// how an op of ours is told from one of V3's.
pub const OP_SRC: &str = "vizhub-migrate";

/// `wanted`, with the `fields` V3 owns taken from what V3 holds (`now`) instead.
fn keep_fields(wanted: &Value, now: &Value, fields: &[&str]) -> Value {
    let mut out = wanted.clone();
    if let Value::Object(o) = &mut out {
        for f in fields {
            match now.get(*f) {
                Some(v) => o.insert((*f).to_string(), v.clone()),
                None => o.remove(*f),
            };
        }
    }
    out
}

/// A deterministic ObjectId for op `v` of `collection/id` whose body (`create`, `op` or `del`)
/// is `body`.
/// A write command's per-document errors (its reply's `writeErrors`): position in the
/// command, code, message.
pub fn write_errors(reply: &Document) -> Vec<(usize, i32, String)> {
    let Ok(errors) = reply.get_array("writeErrors") else {
        return Vec::new();
    };
    errors
        .iter()
        .filter_map(Bson::as_document)
        .map(|e| {
            (
                e.get_i32("index").map(|i| i as usize).unwrap_or(usize::MAX),
                e.get_i32("code").unwrap_or(0),
                e.get_str("errmsg").unwrap_or("write error").to_string(),
            )
        })
        .collect()
}

pub fn op_id(collection: &str, id: &str, v: i64, body: &Document) -> ObjectId {
    op_id_salted(collection, id, v, body, None)
}

/// [`op_id`], told apart by `salt` when there is one: what the op stands for beyond its body
/// (see [`Store::move_known`]).
fn op_id_salted(
    collection: &str,
    id: &str,
    v: i64,
    body: &Document,
    salt: Option<&str>,
) -> ObjectId {
    let body = bson::to_vec(body).expect("a document encodes");
    let mut h = Sha256::new();
    for part in [
        collection.as_bytes(),
        id.as_bytes(),
        v.to_string().as_bytes(),
        &body,
    ]
    .into_iter()
    .chain(salt.map(str::as_bytes))
    {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 12];
    bytes.copy_from_slice(&digest[..12]);
    ObjectId::from_bytes(bytes)
}

/// The Info stamp `migratedTimestamp`: the one part of a write of ours that differs between
/// two runs of the same job (it says when). Left out of op ids, so a job run again after it
/// stopped between an op and its snapshot finds that op (same id) and adopts it instead of
/// writing a second op at the same version and leaving the first an orphan.
const STAMP: &str = crate::merge::STAMP;

/// `body` as its op id sees it: without the [`STAMP`] (in a `create`'s data, or a json1
/// component at it).
fn identity(body: &Document) -> Cow<'_, Document> {
    if let Ok(data) = body
        .get_document("create")
        .and_then(|c| c.get_document("data"))
    {
        if data.contains_key(STAMP) {
            let mut data = data.clone();
            data.remove(STAMP);
            let mut out = body.clone();
            if let Ok(create) = out.get_document_mut("create") {
                create.insert("data", data);
            }
            return Cow::Owned(out);
        }
    }
    let at_stamp =
        |b: &Bson| matches!(b, Bson::Array(a) if a.first() == Some(&Bson::String(STAMP.into())));
    match body.get("op") {
        Some(op @ Bson::Array(_)) if at_stamp(op) => {
            let mut out = body.clone();
            out.insert("op", Bson::Null);
            Cow::Owned(out)
        }
        Some(Bson::Array(parts)) if parts.iter().any(at_stamp) => {
            let kept: Vec<Bson> = parts.iter().filter(|p| !at_stamp(p)).cloned().collect();
            let mut out = body.clone();
            out.insert("op", kept);
            Cow::Owned(out)
        }
        _ => Cow::Borrowed(body),
    }
}

/// Op `v` of `collection/id` as sharedb-mongo stores it (`body`: its `create`, `op` or `del`;
/// `prev`: the op before it, which `_o` links follow), and its id.
fn op_doc(
    collection: &str,
    id: &str,
    v: i64,
    body: Document,
    prev: Option<ObjectId>,
    ts_ms: i64,
    salt: Option<&str>,
) -> (ObjectId, Document) {
    let oid = op_id_salted(collection, id, v, &identity(&body), salt);
    let mut op = doc! {"_id": oid, "src": OP_SRC, "seq": v + 1, "v": v};
    op.extend(body);
    op.extend(doc! {"m": {"ts": ts_ms}, "c": collection, "d": id, "o": prev.map_or(Bson::Null, Bson::ObjectId)});
    (oid, op)
}

/// The op-log indexes `sharedb-mongo` creates on every `o_<collection>` (its `getOpCollection`).
pub fn sharedb_op_indexes() -> [Document; 2] {
    [doc! {"d": 1, "v": 1}, doc! {"src": 1, "seq": 1, "v": 1}]
}

/// MongoDB's default name of an index on `keys` (`d_1_v_1`).
fn index_name(keys: &Document) -> String {
    keys.iter()
        .map(|(k, v)| format!("{k}_{v}"))
        .collect::<Vec<_>>()
        .join("_")
}

/// When an insert of `n` documents failed only because some `_id`s were taken: the positions
/// of those documents (all `n` for the single-document forms of the error). `None` for any
/// other failure.
fn duplicate_positions(e: &mongodb::error::Error, n: usize) -> Option<Vec<usize>> {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == DUPLICATE_KEY => {
            Some((0..n).collect())
        }
        ErrorKind::InsertMany(im) if im.write_concern_error.is_none() => {
            let errs = im.write_errors.as_ref()?;
            errs.iter()
                .all(|w| w.code == DUPLICATE_KEY)
                .then(|| errs.iter().map(|w| w.index).collect())
        }
        ErrorKind::Command(c) if c.code == DUPLICATE_KEY => Some((0..n).collect()),
        _ => None,
    }
}

pub fn to_bson(collection: &str, id: &str, v: &Value) -> Result<Bson, StoreError> {
    bson::to_bson(v).map_err(|e| StoreError::Encode {
        collection: collection.to_string(),
        id: id.to_string(),
        reason: e.to_string(),
    })
}

fn to_document(collection: &str, id: &str, v: &Value) -> Result<Document, StoreError> {
    match to_bson(collection, id, v)? {
        Bson::Document(d) => Ok(d),
        other => Err(StoreError::Encode {
            collection: collection.to_string(),
            id: id.to_string(),
            reason: format!("payload is not an object: {other}"),
        }),
    }
}

/// The JSON view of a BSON value the way the V3 app sees it (ints as numbers, no `$numberLong`).
pub fn to_json(b: Bson) -> Value {
    b.into_relaxed_extjson()
}

impl Store {
    pub fn new(db: Database) -> Self {
        Store {
            db,
            round_trips: Arc::default(),
            writes_left: Arc::new(AtomicI64::new(-1)),
            write_times: WriteTimes::default(),
        }
    }

    /// The V3 write latency histograms (for `/metrics`), shared with this store and its clones.
    pub fn write_times(&self) -> WriteTimes {
        self.write_times.clone()
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Create (idempotently) the indexes the migration's V3 queries need: op logs by `(d, v)`
    /// and `(src, seq, v)`, commits by viz, infos by parent, upvotes by viz, permissions by
    /// resource. Without them every job scans whole collections and a run slows down as V3
    /// fills. Workers call it at start-up.
    ///
    /// The op-log indexes are created exactly as `sharedb-mongo` creates them itself the first
    /// time it touches an op collection (`createIndex(keys, {background: true})`, default names),
    /// so V3's own calls are no-ops on any server. A server that compares index options (as
    /// SecantusDB does) refuses a same-named index with other options, and V3 could then submit
    /// no op at all: an op-log index this migration once made without those options (before
    /// this rule) is dropped and made again, here, before V3 meets it.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        use mongodb::IndexModel;
        let index = |keys: Document| IndexModel::builder().keys(keys).build();
        for c in collections::SHAREDB {
            let ops = format!("o_{c}");
            for keys in sharedb_op_indexes() {
                // The command the Node driver sends for `createIndex(keys, {background: true})`
                // (the Rust driver's own `background` option is deprecated).
                let name = index_name(&keys);
                let create = doc! {
                    "createIndexes": &ops,
                    "indexes": [{"key": keys, "name": &name, "background": true}],
                };
                match write_command(&self.db, create.clone()).await {
                    Ok(_) => {}
                    Err(e) if matches!(server_code(&e), Some(85 | 86)) => {
                        // IndexOptionsConflict / IndexKeySpecsConflict: ours, made without
                        // `background`. Same keys, so dropping it loses nothing.
                        self.coll(&ops).drop_index(name).await?;
                        write_command(&self.db, create).await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        for (c, keys) in [
            (collections::COMMIT, doc! {"viz": 1}),
            (collections::INFO, doc! {"forkedFrom": 1}),
            (collections::UPVOTE, doc! {"viz": 1}),
            (collections::PERMISSION, doc! {"resource": 1}),
        ] {
            self.coll(c).create_index(index(keys)).await?;
        }
        Ok(())
    }

    /// Test hook: let `n` more write commands through, then refuse every write with
    /// [`StoreError::Stopped`] (`None`: no limit, the default). A job stopped so ends exactly
    /// as one whose pod was killed after its `n`-th write: what it wrote stays, nothing after.
    pub fn stop_after_writes(&self, n: Option<u64>) {
        let n = n.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        self.writes_left.store(n, Ordering::SeqCst);
    }

    /// Take one write from the test hook's budget.
    fn write_allowed(&self) -> Result<(), StoreError> {
        let took = self
            .writes_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                n if n < 0 => Some(n),
                0 => None,
                n => Some(n - 1),
            });
        took.map(|_| ()).map_err(|_| StoreError::Stopped)
    }

    /// Database commands issued so far.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn trip(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    fn coll(&self, name: &str) -> Collection<Document> {
        self.db.collection(name)
    }

    /// Snapshots by id (one query).
    pub async fn snapshots(
        &self,
        collection: &str,
        ids: &[String],
    ) -> Result<HashMap<String, Snapshot>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        self.find_snapshots(collection, doc! {"_id": {"$in": ids}})
            .await
    }

    /// Snapshots matching a filter on payload fields (one query).
    pub async fn find_snapshots(
        &self,
        collection: &str,
        filter: Document,
    ) -> Result<HashMap<String, Snapshot>, StoreError> {
        self.trip();
        let docs: Vec<Document> = self
            .coll(collection)
            .find(filter)
            .await?
            .try_collect()
            .await?;
        Ok(docs
            .into_iter()
            .filter_map(snapshot_of)
            .map(|s| (s.id.clone(), s))
            .collect())
    }

    /// Make the docs of `collection` match `wanted` (id → payload), per `policy`.
    /// `ts_ms` stamps new ops and `_m`.
    pub async fn sync(
        &self,
        collection: &str,
        wanted: &[(String, Value)],
        policy: Policy,
        ts_ms: i64,
    ) -> Result<SyncReport, StoreError> {
        if wanted.is_empty() {
            return Ok(SyncReport::default());
        }
        let ids: Vec<String> = wanted.iter().map(|(id, _)| id.clone()).collect();
        let existing = self.snapshots(collection, &ids).await?;
        self.sync_known(collection, wanted, &existing, policy, ts_ms)
            .await
    }

    /// [`Store::sync`] when the caller already read the snapshots (`existing`, from
    /// [`Store::snapshots`] of the same ids): one query less. Updates stay conditional on the
    /// version read, so a snapshot that moved on since is reported as a lost race.
    ///
    /// A doc deleted in V3 (a tombstone) is never re-created here: V3's users deleted it, and
    /// deletions are acts (spec 3.4). It is counted in `kept` and listed in `tombstones`; the
    /// caller that may bring one back says so with [`Store::sync_reviving`].
    pub async fn sync_known(
        &self,
        collection: &str,
        wanted: &[(String, Value)],
        existing: &HashMap<String, Snapshot>,
        policy: Policy,
        ts_ms: i64,
    ) -> Result<SyncReport, StoreError> {
        self.sync_reviving(collection, wanted, existing, policy, &HashSet::new(), ts_ms)
            .await
    }

    /// [`Store::sync_known`], re-creating the tombstones listed in `revive` at their next
    /// version, as ShareDB would (an upvote V2 gave again after V3's removal, a doc the
    /// migration itself deleted).
    pub async fn sync_reviving(
        &self,
        collection: &str,
        wanted: &[(String, Value)],
        existing: &HashMap<String, Snapshot>,
        policy: Policy,
        revive: &HashSet<String>,
        ts_ms: i64,
    ) -> Result<SyncReport, StoreError> {
        let mut report = SyncReport::default();
        if wanted.is_empty() {
            return Ok(report);
        }
        let mut creates = Vec::new();
        // Updates wanted: the doc, the payload it is brought to, and the op that does it.
        let mut updates: Vec<(&Snapshot, Cow<Value>, Value)> = Vec::new();
        for (id, data) in wanted {
            match existing.get(id) {
                None => creates.push((id.as_str(), data)),
                Some(s) if s.doc_type.is_none() && revive.contains(id) => {
                    self.submit_create(collection, s, data, ts_ms, &mut report)
                        .await?;
                }
                Some(s) if s.doc_type.is_none() => {
                    report.kept += 1;
                    report.tombstones.push(id.clone());
                }
                Some(s) => {
                    let migrated = s.data.get("migratedFromV2") == Some(&Value::Bool(true));
                    let (allowed, data) = match policy {
                        Policy::Update => (true, Cow::Borrowed(data)),
                        Policy::UpdateIfMigrated => (migrated, Cow::Borrowed(data)),
                        Policy::UpdateIfOurs { v3_owned } => {
                            (migrated, Cow::Owned(keep_fields(data, &s.data, v3_owned)))
                        }
                        Policy::CreateOnly => (false, Cow::Borrowed(data)),
                    };
                    match json1::diff(&s.data, &data) {
                        None => report.unchanged += 1,
                        Some(_) if !allowed => report.kept += 1,
                        Some(op) => updates.push((s, data, op)),
                    }
                }
            }
        }
        if let Policy::UpdateIfOurs { .. } = policy {
            let docs: Vec<&Snapshot> = updates.iter().map(|(s, _, _)| *s).collect();
            let ours = self.last_op_is_ours(collection, &docs).await?;
            let before = updates.len();
            updates.retain(|(s, _, _)| ours.contains(&s.id));
            report.kept += before - updates.len();
        }
        self.submit_many(collection, &updates, None, ts_ms, &mut report)
            .await?;
        let existed = self.create_many(collection, &creates, ts_ms).await?;
        report.created += creates.len() - existed.len();
        report.existed.extend(existed);
        Ok(report)
    }

    /// Move existing live snapshots of `collection` to new payloads derived from other docs
    /// (`moves`: id, payload, and what the move stands for, e.g. the forks a count adds), each
    /// conditional on the snapshot in `existing`. Unlike [`Store::sync_known`], an identical op
    /// that another writer won is a lost race, not ours: two batches adding different forks to
    /// the same count from the same version write the same op body (`n` → `n + 1`), so the op's
    /// id also covers what it stands for, and only a re-run of the same move finds its own op.
    /// A doc not live in `existing` is left alone.
    pub async fn move_known(
        &self,
        collection: &str,
        moves: &[(String, Value, String)],
        existing: &HashMap<String, Snapshot>,
        ts_ms: i64,
    ) -> Result<SyncReport, StoreError> {
        let mut report = SyncReport::default();
        let mut updates: Vec<(&Snapshot, Cow<Value>, Value)> = Vec::new();
        let mut salts = HashMap::new();
        for (id, data, why) in moves {
            let Some(s) = existing.get(id).filter(|s| s.doc_type.is_some()) else {
                continue;
            };
            match json1::diff(&s.data, data) {
                None => report.unchanged += 1,
                Some(op) => {
                    salts.insert(id.clone(), why.clone());
                    updates.push((s, Cow::Borrowed(data), op));
                }
            }
        }
        self.submit_many(collection, &updates, Some(&salts), ts_ms, &mut report)
            .await?;
        Ok(report)
    }

    /// Of `docs`, the ids whose newest op (`_o`) the migration wrote (one query; none when
    /// `docs` is empty). A doc without `_o`, or whose op is gone, is not ours to change.
    pub async fn last_op_is_ours(
        &self,
        collection: &str,
        docs: &[&Snapshot],
    ) -> Result<HashSet<String>, StoreError> {
        let ops: Vec<ObjectId> = docs.iter().filter_map(|s| s.last_op).collect();
        if ops.is_empty() {
            return Ok(Default::default());
        }
        self.trip();
        // By `_id` alone, `src` compared here (see `indexed_then`).
        let found: Vec<Document> = self
            .coll(&format!("o_{collection}"))
            .find(doc! {"_id": {"$in": ops}})
            .projection(doc! {"d": 1, "src": 1})
            .await?
            .try_collect()
            .await?;
        Ok(found
            .iter()
            .filter(|d| d.get_str("src") == Ok(OP_SRC))
            .filter_map(|d| d.get_str("d").ok().map(str::to_string))
            .collect())
    }

    /// Create several docs: their `create` ops, then their snapshots (two unordered inserts).
    /// Returns the ids whose snapshot was already there (left untouched).
    async fn create_many(
        &self,
        collection: &str,
        docs: &[(&str, &Value)],
        ts_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        let mut ops = Vec::with_capacity(docs.len());
        for (id, data) in docs {
            let body = doc! {"create": {"type": OT_TYPE, "data": to_bson(collection, id, data)?}};
            ops.push(op_doc(collection, id, 0, body, None, ts_ms, None).1);
        }
        // A `create` op already there is one an earlier attempt wrote before it stopped: its
        // snapshot may be missing, so the snapshots are inserted regardless, saying what that
        // op says (the Info stamp may differ, see [`STAMP`]).
        let oids: Vec<Bson> = ops
            .iter()
            .map(|o| o.get("_id").cloned().unwrap_or(Bson::Null))
            .collect();
        let ops_there = self
            .insert_ignoring_duplicates(&format!("o_{collection}"), ops, WriteKind::OpInsert)
            .await?;
        let mut snaps = Vec::with_capacity(docs.len());
        for (i, (id, data)) in docs.iter().enumerate() {
            let Bson::ObjectId(oid) = oids[i] else {
                unreachable!("op ids are ObjectIds")
            };
            let adopted = if collection == collections::INFO && ops_there.contains(&i) {
                self.adopted(collection, None, oid).await?
            } else {
                None
            };
            let data = adopted.as_ref().unwrap_or(data);
            let mut snap = doc! {"_id": *id, "_type": OT_TYPE, "_v": 1_i64, "_m": {"ctime": ts_ms, "mtime": ts_ms}, "_o": oid};
            snap.extend(to_document(collection, id, data)?);
            snaps.push(snap);
        }
        let existed = self
            .insert_ignoring_duplicates(collection, snaps, WriteKind::SnapshotInsert)
            .await?;
        // A snapshot already there has its own history: a `create` op this call inserted for it
        // is an orphan unless that snapshot links it (a racing writer of the same create
        // inserted its snapshot first). Taken back then (an op that was there before is the
        // one an earlier attempt linked, or will be the one its snapshot insert links).
        for i in existed.iter().filter(|i| !ops_there.contains(i)) {
            let Bson::ObjectId(oid) = oids[*i] else {
                continue;
            };
            if !self.op_is_linked(collection, docs[*i].0, 0, oid).await? {
                self.write_allowed()?;
                self.trip();
                self.coll(&format!("o_{collection}"))
                    .delete_one(doc! {"_id": oid})
                    .await?;
            }
        }
        Ok(existed.into_iter().map(|i| docs[i].0.to_string()).collect())
    }

    /// The payload op `oid` of doc `s` (already in the log: a stopped attempt of this same
    /// write put it there, see [`STAMP`]) brings `s` to: what the snapshot must say for that op
    /// to be its history. `None` when the op is gone or does not apply.
    async fn adopted(
        &self,
        collection: &str,
        s: Option<&Snapshot>,
        oid: ObjectId,
    ) -> Result<Option<Value>, StoreError> {
        self.trip();
        let op = self
            .coll(&format!("o_{collection}"))
            .find_one(doc! {"_id": oid})
            .await?;
        let Some(op) = op else { return Ok(None) };
        if let Ok(create) = op.get_document("create") {
            return Ok(create.get("data").cloned().map(to_json));
        }
        match (op.get("op"), s) {
            (Some(body), Some(s)) => Ok(json1::apply(s.data.clone(), &to_json(body.clone())).ok()),
            _ => Ok(None),
        }
    }

    /// Unordered insert; documents whose `_id` is taken are left as they are. Returns the
    /// positions (in `docs`) of those.
    async fn insert_ignoring_duplicates(
        &self,
        collection: &str,
        docs: Vec<Document>,
        kind: WriteKind,
    ) -> Result<Vec<usize>, StoreError> {
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        let n = docs.len();
        self.write_allowed()?;
        self.trip();
        let opts = InsertManyOptions::builder().ordered(false).build();
        let started = Instant::now();
        let inserted = self
            .coll(collection)
            .insert_many(docs)
            .with_options(opts)
            .await;
        self.write_times
            .of(kind)
            .observe(started.elapsed().as_secs_f64());
        match inserted {
            Ok(_) => Ok(Vec::new()),
            Err(e) => duplicate_positions(&e, n).ok_or_else(|| e.into()),
        }
    }

    /// [`Store::append`] of one json1 op to each of several docs: their ops in one unordered
    /// insert, then each snapshot replaced on the condition of its version (one command each:
    /// a conditional replace must say, per doc, whether it matched).
    async fn submit_many(
        &self,
        collection: &str,
        updates: &[(&Snapshot, Cow<'_, Value>, Value)],
        salts: Option<&HashMap<String, String>>,
        ts_ms: i64,
        report: &mut SyncReport,
    ) -> Result<(), StoreError> {
        if updates.len() < 2 {
            let salt = |id: &str| salts.and_then(|s| s.get(id)).map(String::as_str);
            for (s, data, op) in updates {
                let body = doc! {"op": to_bson(collection, &s.id, op)?};
                self.append(collection, s, body, Some(data), ts_ms, salt(&s.id), report)
                    .await?;
            }
            return Ok(());
        }
        let (oids, adopted) = self.insert_ops(collection, updates, salts, ts_ms).await?;
        let matched = self
            .replace_snapshots(collection, updates, &oids, &adopted, ts_ms)
            .await?;
        self.settle_races(collection, updates, oids, matched, report)
            .await
    }

    /// [`Store::submit_many`]'s first step: every update's op in one unordered insert. Returns
    /// the ops' ids, in `updates`' order, and, for info, the data to write instead of the
    /// update's where its op existed already (see [`Store::adopted`]), by index.
    async fn insert_ops(
        &self,
        collection: &str,
        updates: &[(&Snapshot, Cow<'_, Value>, Value)],
        salts: Option<&HashMap<String, String>>,
        ts_ms: i64,
    ) -> Result<(Vec<ObjectId>, HashMap<usize, Value>), StoreError> {
        let salt = |id: &str| salts.and_then(|s| s.get(id)).map(String::as_str);
        let mut ops = Vec::with_capacity(updates.len());
        let mut oids = Vec::with_capacity(updates.len());
        for (s, _, op) in updates {
            let body = doc! {"op": to_bson(collection, &s.id, op)?};
            let (oid, op) = op_doc(
                collection,
                &s.id,
                s.version,
                body,
                s.last_op,
                ts_ms,
                salt(&s.id),
            );
            ops.push(op);
            oids.push(oid);
        }
        let existed = self
            .insert_ignoring_duplicates(&format!("o_{collection}"), ops, WriteKind::OpInsert)
            .await?;
        let mut adopted: HashMap<usize, Value> = HashMap::new();
        if collection == collections::INFO {
            for i in &existed {
                if let Some(v) = self
                    .adopted(collection, Some(updates[*i].0), oids[*i])
                    .await?
                {
                    adopted.insert(*i, v);
                }
            }
        }
        Ok((oids, adopted))
    }

    /// [`Store::submit_many`]'s second step: every snapshot in one `update` command, each
    /// replacement conditional on the version read, linking its op (`oids`) and holding the
    /// update's data (or the `adopted` one). Returns how many matched: the reply counts
    /// matches, not which matched.
    async fn replace_snapshots(
        &self,
        collection: &str,
        updates: &[(&Snapshot, Cow<'_, Value>, Value)],
        oids: &[ObjectId],
        adopted: &HashMap<usize, Value>,
        ts_ms: i64,
    ) -> Result<usize, StoreError> {
        let mut statements = Vec::with_capacity(updates.len());
        for (i, ((s, data, _), oid)) in updates.iter().zip(oids).enumerate() {
            let data = adopted.get(&i).unwrap_or(data);
            let snap = snapshot_doc(collection, s, *oid, Some(data), ts_ms)?;
            statements.push(doc! {"q": {"_id": &s.id, "_v": s.version}, "u": snap});
        }
        self.write_allowed()?;
        self.trip();
        let started = Instant::now();
        let reply = write_command(
            &self.db,
            doc! {"update": collection, "updates": statements, "ordered": false},
        )
        .await;
        self.write_times
            .of(WriteKind::SnapshotReplace)
            .observe(started.elapsed().as_secs_f64());
        let reply = reply?;
        if let Some((_, code, message)) = write_errors(&reply).into_iter().next() {
            return Err(StoreError::Refused { code, message });
        }
        Ok(match reply.get("n") {
            Some(Bson::Int32(n)) => *n as usize,
            Some(Bson::Int64(n)) => *n as usize,
            _ => 0,
        })
    }

    /// [`Store::submit_many`]'s last step: when all `matched` (the common case) every update
    /// is in; otherwise the snapshots are read back, and one whose newest op is not ours lost
    /// its race: its op, an orphan, is deleted and the doc reported in `lost_races`.
    async fn settle_races(
        &self,
        collection: &str,
        updates: &[(&Snapshot, Cow<'_, Value>, Value)],
        oids: Vec<ObjectId>,
        matched: usize,
        report: &mut SyncReport,
    ) -> Result<(), StoreError> {
        let ops_coll = format!("o_{collection}");
        for ((s, _, _), oid) in updates.iter().zip(oids) {
            // Not every statement matched: ours won exactly when its op is in the doc's
            // history now (an identical op that won is as good as ours).
            if matched == updates.len()
                || self.op_is_linked(collection, &s.id, s.version, oid).await?
            {
                report.updated += 1;
                continue;
            }
            // Not linked: an orphan, whoever inserted it (this call, or an earlier attempt
            // at the same version with the same op): no snapshot will ever link it now.
            self.write_allowed()?;
            self.trip();
            self.coll(&ops_coll).delete_one(doc! {"_id": oid}).await?;
            report.lost_races.push(s.id.clone());
        }
        Ok(())
    }

    async fn submit_create(
        &self,
        collection: &str,
        s: &Snapshot,
        data: &Value,
        ts_ms: i64,
        report: &mut SyncReport,
    ) -> Result<(), StoreError> {
        let create = doc! {"create": {"type": OT_TYPE, "data": to_bson(collection, &s.id, data)?}};
        self.append(collection, s, create, Some(data), ts_ms, None, report)
            .await
    }

    /// ShareDB delete: a `del` op, then a tombstone snapshot (`_type: null`, no payload).
    pub async fn delete(
        &self,
        collection: &str,
        s: &Snapshot,
        ts_ms: i64,
        report: &mut SyncReport,
    ) -> Result<(), StoreError> {
        self.append(collection, s, doc! {"del": true}, None, ts_ms, None, report)
            .await
    }

    /// Append one op at `s.version`, then move the snapshot on, conditional on `_v`.
    #[allow(clippy::too_many_arguments)]
    async fn append(
        &self,
        collection: &str,
        s: &Snapshot,
        body: Document,
        data: Option<&Value>,
        ts_ms: i64,
        salt: Option<&str>,
        report: &mut SyncReport,
    ) -> Result<(), StoreError> {
        let (oid, op) = op_doc(collection, &s.id, s.version, body, s.last_op, ts_ms, salt);
        let ops = format!("o_{collection}");
        let ours = self
            .insert_ignoring_duplicates(&ops, vec![op], WriteKind::OpInsert)
            .await?
            .is_empty();
        let adopted = match data {
            Some(_) if !ours && collection == collections::INFO => {
                self.adopted(collection, Some(s), oid).await?
            }
            _ => None,
        };
        let data = adopted.as_ref().or(data);
        self.replace_snapshot(collection, s, oid, ours, data, ts_ms, report)
            .await
    }

    /// Move snapshot `s` on to the version after it, its newest op `oid` (inserted already;
    /// `ours` when this write inserted it), on the condition that `_v` is still what we read.
    #[allow(clippy::too_many_arguments)]
    async fn replace_snapshot(
        &self,
        collection: &str,
        s: &Snapshot,
        oid: ObjectId,
        ours: bool,
        data: Option<&Value>,
        ts_ms: i64,
        report: &mut SyncReport,
    ) -> Result<(), StoreError> {
        let ops = format!("o_{collection}");
        let snap = snapshot_doc(collection, s, oid, data, ts_ms)?;
        self.write_allowed()?;
        self.trip();
        let started = Instant::now();
        let replaced = self
            .coll(collection)
            .replace_one(doc! {"_id": &s.id, "_v": s.version}, snap)
            .await;
        self.write_times
            .of(WriteKind::SnapshotReplace)
            .observe(started.elapsed().as_secs_f64());
        let res = replaced?;
        if res.matched_count == 0 {
            // Lost the race: the op just inserted is most likely an orphan no snapshot links
            // to (another writer's op holds this version); sharedb-mongo would skip it, but it
            // is noise in the doc's op log, so it is taken back, unless it is linked after all:
            // a writer that made the very same op (same id) may have won with it.
            if ours && !self.op_is_linked(collection, &s.id, s.version, oid).await? {
                self.write_allowed()?;
                self.trip();
                self.coll(&ops).delete_one(doc! {"_id": oid}).await?;
            }
            report.lost_races.push(s.id.clone());
        } else if data.is_none() {
            report.deleted += 1;
        } else {
            report.updated += 1;
        }
        Ok(())
    }

    /// Delete the ops of ours in doc `id`'s log that its history does not link and never can:
    /// versions below the snapshot's `_v` that the `o` links from its `_o` do not reach. A
    /// writer of ours stopped between an op and its snapshot update leaves one; a rerun that
    /// brings the doc on with another op (a parent recounted in full where a batch's move had
    /// stopped) overtakes it. Ops at `_v` and above may still be linked by a writer in flight:
    /// left alone. Two queries (the snapshot, the log's links through its `d` index), and a
    /// delete when there is something to take back. Called after a recount's update, not on
    /// the batch path's hot writes.
    pub async fn take_back_orphans(&self, collection: &str, id: &str) -> Result<usize, StoreError> {
        self.trip();
        let Some(snap) = self
            .coll(collection)
            .find_one(doc! {"_id": id})
            .projection(doc! {"_v": 1, "_o": 1})
            .await?
        else {
            return Ok(0);
        };
        let Some(version) = bson_i64(snap.get("_v")) else {
            return Ok(0);
        };
        self.trip();
        let mut pipeline = indexed_then(doc! {"d": id}, Document::new());
        pipeline.push(doc! {"$project": {"_id": 1, "o": 1, "v": 1, "src": 1}});
        let ops: Vec<Document> = self
            .coll(&format!("o_{collection}"))
            .aggregate(pipeline)
            .await?
            .try_collect()
            .await?;
        let prev: HashMap<ObjectId, Option<ObjectId>> = ops
            .iter()
            .filter_map(|o| Some((o.get_object_id("_id").ok()?, o.get_object_id("o").ok())))
            .collect();
        let mut linked = HashSet::new();
        let mut at = snap.get_object_id("_o").ok();
        while let Some(oid) = at.filter(|oid| linked.insert(*oid)) {
            at = prev.get(&oid).copied().flatten();
        }
        let orphans: Vec<ObjectId> = ops
            .iter()
            .filter(|o| o.get_str("src") == Ok(OP_SRC))
            .filter(|o| bson_i64(o.get("v")).is_some_and(|v| v < version))
            .filter_map(|o| o.get_object_id("_id").ok())
            .filter(|oid| !linked.contains(oid))
            .collect();
        if orphans.is_empty() {
            return Ok(0);
        }
        self.write_allowed()?;
        self.trip();
        let n = orphans.len();
        self.coll(&format!("o_{collection}"))
            .delete_many(doc! {"_id": {"$in": orphans}})
            .await?;
        Ok(n)
    }

    /// Whether op `oid` (version `v` of doc `id`) is part of the doc's history: the snapshot's
    /// newest op, or the op the next version links to (`o`). Called after our snapshot update
    /// at `v` matched nothing, when no later write can link it any more: the snapshot is read
    /// first, so one moving past `v + 1` in between has already written the op that links.
    async fn op_is_linked(
        &self,
        collection: &str,
        id: &str,
        v: i64,
        oid: ObjectId,
    ) -> Result<bool, StoreError> {
        // By `_id` alone, `_o` compared here, and the op log through its `d` index (see
        // `indexed_then`).
        self.trip();
        let newest = self
            .coll(collection)
            .find_one(doc! {"_id": id})
            .projection(doc! {"_o": 1})
            .await?;
        if newest.is_some_and(|d| d.get_object_id("_o").ok() == Some(oid)) {
            return Ok(true);
        }
        self.trip();
        let mut pipeline = indexed_then(doc! {"d": id}, doc! {"v": v + 1, "o": oid});
        pipeline.extend([doc! {"$limit": 1}, doc! {"$project": {"_id": 1}}]);
        let next: Vec<Document> = self
            .coll(&format!("o_{collection}"))
            .aggregate(pipeline)
            .await?
            .try_collect()
            .await?;
        Ok(!next.is_empty())
    }

    /// Insert commits (plain docs, `_id = id`); commits already there are left as they are —
    /// commits are immutable and ids deterministic.
    pub async fn insert_commits<'c>(
        &self,
        commits: impl IntoIterator<Item = &'c Commit>,
    ) -> Result<(), StoreError> {
        let docs = commits
            .into_iter()
            .map(|c| {
                let v = serde_json::to_value(c).expect("commits serialize");
                let mut d = to_document(collections::COMMIT, &c.id, &v)?;
                d.insert("_id", &c.id);
                Ok(d)
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.insert_ignoring_duplicates(collections::COMMIT, docs, WriteKind::CommitInsert)
            .await?;
        Ok(())
    }

    /// Delete commits (by id) that nothing links: the new commits of a re-sync whose content
    /// update lost its race to a V3 edit, so its info never ended there. Left, a later fork or
    /// V3 commit could hang a second child off the old end (spec 3.4). One command.
    pub async fn delete_commits(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.write_allowed()?;
        self.trip();
        self.coll(collections::COMMIT)
            .delete_many(doc! {"_id": {"$in": ids}})
            .await?;
        Ok(())
    }

    /// Of `ids`, those V3 holds as tombstones in `collection` (deleted there: an account, a
    /// viz). One projected `find` by `_id` (the tombstone test is made here: a filter naming a
    /// second field makes SecantusDB scan, and an aggregate costs it 14 times a find, measured
    /// in the scale bench); none when `ids` is empty.
    pub async fn deleted(
        &self,
        collection: &str,
        ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        self.trip();
        let docs: Vec<Document> = self
            .coll(collection)
            .find(doc! {"_id": {"$in": ids}})
            .projection(doc! {"_type": 1})
            .await?
            .try_collect()
            .await?;
        Ok(docs
            .iter()
            .filter(|d| matches!(d.get("_type"), Some(Bson::Null)))
            .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
            .collect())
    }

    /// Whether doc `id` of `collection` has an op at version `from` or later that the migration
    /// did not write: V3 edited it since the migration left it at `from`. One query.
    pub async fn edited_since(
        &self,
        collection: &str,
        id: &str,
        from: i64,
    ) -> Result<bool, StoreError> {
        self.trip();
        let mut pipeline = indexed_then(
            doc! {"d": id},
            doc! {"v": {"$gte": from}, "src": {"$ne": OP_SRC}},
        );
        pipeline.extend([doc! {"$limit": 1}, doc! {"$project": {"_id": 1}}]);
        let found: Vec<Document> = self
            .coll(&format!("o_{collection}"))
            .aggregate(pipeline)
            .await?
            .try_collect()
            .await?;
        Ok(!found.is_empty())
    }

    /// The payload of doc `id` right after the migration's last op in its log: replayed from
    /// its `create` through its ops in version order (json1), so what the migration last wrote,
    /// whatever V3 did after. `None` when no op of the log is the migration's, the log does
    /// not replay, or the doc was deleted at that point. The three-way base of a re-sync when
    /// the ledger does not hold one (records written before it did). One query.
    pub async fn last_written(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<Option<Value>, StoreError> {
        self.trip();
        let ops: Vec<Document> = self
            .coll(&format!("o_{collection}"))
            .find(doc! {"d": id})
            .sort(doc! {"v": 1})
            .await?
            .try_collect()
            .await?;
        let mut state: Option<Value> = None;
        let mut ours = None;
        for op in ops {
            state = if let Ok(create) = op.get_document("create") {
                create.get("data").cloned().map(to_json)
            } else if op.get("del").is_some() {
                None
            } else if let (Some(body), Some(doc)) = (op.get("op").cloned(), state.take()) {
                json1::apply(doc, &to_json(body)).ok()
            } else {
                None
            };
            if op.get_str("src") == Ok(OP_SRC) {
                ours = Some(state.clone());
            }
        }
        Ok(ours.flatten())
    }

    /// Every commit of a viz as stored, branches included (no chain order). One query.
    pub async fn commits_all_of(&self, viz: &str) -> Result<Vec<Commit>, StoreError> {
        self.trip();
        let docs: Vec<Document> = self
            .coll(collections::COMMIT)
            .find(doc! {"viz": viz})
            .await?
            .try_collect()
            .await?;
        Ok(docs.into_iter().filter_map(commit_of).collect())
    }

    /// The commits whose `parent` is one of `ids` (any viz). One query.
    pub async fn commits_with_parent(&self, ids: &[String]) -> Result<Vec<Commit>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.trip();
        let docs: Vec<Document> = self
            .coll(collections::COMMIT)
            .find(doc! {"parent": {"$in": ids}})
            .await?
            .try_collect()
            .await?;
        Ok(docs.into_iter().filter_map(commit_of).collect())
    }

    /// Every commit of a viz, in chain order (start first). One query.
    pub async fn commits_of(&self, viz: &str) -> Result<Vec<Commit>, StoreError> {
        Ok(chain_order(self.commits_all_of(viz).await?))
    }

    /// The commit chains of several vizzes (one `$in` query), each in chain order; a viz
    /// without commits is absent.
    pub async fn commits_of_many(
        &self,
        vizzes: &[String],
    ) -> Result<HashMap<String, Vec<Commit>>, StoreError> {
        if vizzes.is_empty() {
            return Ok(HashMap::new());
        }
        self.trip();
        let docs: Vec<Document> = self
            .coll(collections::COMMIT)
            .find(doc! {"viz": {"$in": vizzes}})
            .await?
            .try_collect()
            .await?;
        let mut by_viz: HashMap<String, Vec<Commit>> = HashMap::new();
        for c in docs.into_iter().filter_map(commit_of) {
            by_viz.entry(c.viz.clone()).or_default().push(c);
        }
        Ok(by_viz
            .into_iter()
            .map(|(viz, commits)| (viz, chain_order(commits)))
            .collect())
    }

    /// Commits by id (one query).
    pub async fn commits(&self, ids: &[String]) -> Result<Vec<Commit>, StoreError> {
        self.trip();
        let docs: Vec<Document> = self
            .coll(collections::COMMIT)
            .find(doc! {"_id": {"$in": ids}})
            .await?
            .try_collect()
            .await?;
        Ok(docs.into_iter().filter_map(commit_of).collect())
    }

    /// Ops in the logs of `collection/ids` that the migration did not write (V3's own edits),
    /// by doc id (one aggregate); a doc without any is absent.
    pub async fn foreign_ops_many(
        &self,
        collection: &str,
        ids: &[String],
    ) -> Result<HashMap<String, i64>, StoreError> {
        self.counts_by(
            &format!("o_{collection}"),
            "d",
            ids,
            doc! {"src": {"$ne": OP_SRC}},
        )
        .await
    }

    /// What is wrong with the ShareDB envelope of each live snapshot of `collection`, if
    /// anything (by doc id; a sound one is absent): the type is not V3's, `_m.ctime` is
    /// missing, or `_o` does not name the op of this doc that made its current version
    /// (sharedb-mongo rebuilds and submits from there). One query for all.
    pub async fn envelope_problems<'s>(
        &self,
        collection: &str,
        snapshots: impl IntoIterator<Item = &'s Snapshot>,
    ) -> Result<HashMap<String, String>, StoreError> {
        let mut problems = HashMap::new();
        let mut named = Vec::new();
        for s in snapshots {
            if s.doc_type.as_deref() != Some(OT_TYPE) {
                let problem = format!("_type is {:?}, not {OT_TYPE:?}", s.doc_type);
                problems.insert(s.id.clone(), problem);
            } else if s.ctime.is_none() {
                problems.insert(s.id.clone(), "_m.ctime is missing".into());
            } else if let Some(last) = s.last_op {
                named.push((s, last));
            } else {
                problems.insert(s.id.clone(), "_o is missing".into());
            }
        }
        if named.is_empty() {
            return Ok(problems);
        }
        self.trip();
        let ops: Vec<Document> = self
            .coll(&format!("o_{collection}"))
            .find(doc! {"_id": {"$in": named.iter().map(|(_, last)| *last).collect::<Vec<_>>()}})
            .projection(doc! {"d": 1, "v": 1})
            .await?
            .try_collect()
            .await?;
        let at: HashMap<ObjectId, (String, i64)> = ops
            .iter()
            .filter_map(|o| {
                let v = match o.get("v") {
                    Some(Bson::Int32(v)) => i64::from(*v),
                    Some(Bson::Int64(v)) => *v,
                    _ => -1,
                };
                Some((
                    o.get_object_id("_id").ok()?,
                    (o.get_str("d").unwrap_or_default().to_string(), v),
                ))
            })
            .collect();
        for (s, last) in named {
            let problem = match at.get(&last) {
                None => Some(format!("_o {last} is not in o_{collection}")),
                Some((d, v)) if *d != s.id || *v != s.version - 1 => Some(format!(
                    "_o {last} is op v{v} of {d:?}, not v{} of this doc",
                    s.version - 1
                )),
                Some(_) => None,
            };
            if let Some(problem) = problem {
                problems.insert(s.id.clone(), problem);
            }
        }
        Ok(problems)
    }

    /// Number of live `info` docs forked from each of `vizzes` (one aggregate, served by the
    /// `forkedFrom` index); a viz without forks is absent.
    pub async fn forks_counts(
        &self,
        vizzes: &[String],
    ) -> Result<HashMap<String, i64>, StoreError> {
        let live = doc! {"_type": OT_TYPE};
        self.counts_by(collections::INFO, "forkedFrom", vizzes, live)
            .await
    }

    /// Number of live `upvote` docs for each of `vizzes` (one aggregate); a viz without
    /// upvotes is absent.
    pub async fn upvotes_counts(
        &self,
        vizzes: &[String],
    ) -> Result<HashMap<String, i64>, StoreError> {
        let live = doc! {"_type": OT_TYPE};
        self.counts_by(collections::UPVOTE, "viz", vizzes, live)
            .await
    }

    /// Documents of `collection` matching `filter` whose `field` is each of `values`, by
    /// value (one aggregate, `$in` then `$group`); a value without any is absent.
    async fn counts_by(
        &self,
        collection: &str,
        field: &str,
        values: &[String],
        also: Document,
    ) -> Result<HashMap<String, i64>, StoreError> {
        if values.is_empty() {
            return Ok(HashMap::new());
        }
        self.trip();
        let selected = match values {
            [one] => Bson::from(one.as_str()),
            many => Bson::from(doc! {"$in": many}),
        };
        let mut pipeline = indexed_then(doc! {field: selected}, also);
        pipeline.push(doc! {"$group": {"_id": format!("${field}"), "n": {"$sum": 1}}});
        let groups: Vec<Document> = self
            .coll(collection)
            .aggregate(pipeline)
            .await?
            .try_collect()
            .await?;
        Ok(groups
            .iter()
            .filter_map(|g| {
                let n = match g.get("n")? {
                    Bson::Int32(n) => i64::from(*n),
                    Bson::Int64(n) => *n,
                    Bson::Double(n) => *n as i64,
                    _ => return None,
                };
                Some((g.get_str("_id").ok()?.to_string(), n))
            })
            .collect())
    }

    /// Number of live `info` docs whose `forkedFrom` is `viz`.
    pub async fn forks_count(&self, viz: &str) -> Result<i64, StoreError> {
        let counts = self.forks_counts(&[viz.to_string()]).await?;
        Ok(counts.get(viz).copied().unwrap_or(0))
    }

    /// Number of live `upvote` docs for `viz`.
    pub async fn upvotes_count(&self, viz: &str) -> Result<i64, StoreError> {
        let counts = self.upvotes_counts(&[viz.to_string()]).await?;
        Ok(counts.get(viz).copied().unwrap_or(0))
    }
}

/// The `$match` stages of a read that selects by `indexed` (one indexed field) and keeps what
/// also matches `rest`: two stages, not one filter. SecantusDB (0.7) plans a filter with an
/// index only when it names a single field; `{forkedFrom: {$in}, _type}` scanned every info in
/// V3 for each recount, a cost that grew with V3 (20 % of the server's time in a 2,000-viz
/// bench). Its aggregate hands the first `$match` to the index; MongoDB merges the two stages
/// into one and uses the same index. `tests/batch.rs` explains every read a run makes.
fn indexed_then(indexed: Document, rest: Document) -> Vec<Document> {
    let mut stages = vec![doc! {"$match": indexed}];
    if !rest.is_empty() {
        stages.push(doc! {"$match": rest});
    }
    stages
}

/// Typed reads of an `info` snapshot's payload (see [`crate::v3::Info`]): the fields the
/// migration decides by, so no code outside `v3` names them.
impl Snapshot {
    /// The commit the viz ends at (`info.end`).
    pub fn info_end(&self) -> Option<&str> {
        self.data.get("end").and_then(Value::as_str)
    }

    /// `info.forksCount`, or `upvotesCount` with [`Snapshot::info_upvotes_count`].
    pub fn info_forks_count(&self) -> Option<i64> {
        self.data.get("forksCount").and_then(Value::as_i64)
    }

    /// `info.forkedFrom` (`None` for the primordial viz).
    pub fn info_forked_from(&self) -> Option<&str> {
        self.data.get("forkedFrom").and_then(Value::as_str)
    }

    pub fn info_upvotes_count(&self) -> Option<i64> {
        self.data.get("upvotesCount").and_then(Value::as_i64)
    }

    /// The payload with `forksCount` set to `n` (a recount).
    pub fn info_with_forks_count(&self, n: i64) -> Value {
        let mut data = self.data.clone();
        data["forksCount"] = Value::from(n);
        data
    }
}

impl Snapshot {
    /// `_m.ctime` for the next version: kept from the snapshot read; a snapshot written without
    /// one (by an older migration) gets the time of this write, which is the closest we know.
    fn ctime_or(&self, ts_ms: i64) -> Bson {
        Bson::Int64(self.ctime.unwrap_or(ts_ms))
    }
}

/// The snapshot `s` moves on to: the next version, its newest op `oid`, the payload `data`
/// (`None`: a tombstone), its creation time kept.
fn snapshot_doc(
    collection: &str,
    s: &Snapshot,
    oid: ObjectId,
    data: Option<&Value>,
    ts_ms: i64,
) -> Result<Document, StoreError> {
    let mut snap = doc! {
        "_id": &s.id,
        "_type": if data.is_some() { Bson::String(OT_TYPE.into()) } else { Bson::Null },
        "_v": s.version + 1,
        "_m": {"ctime": s.ctime_or(ts_ms), "mtime": ts_ms},
        "_o": oid,
    };
    if let Some(data) = data {
        snap.extend(to_document(collection, &s.id, data)?);
    }
    Ok(snap)
}

/// A stored number as an integer, whichever BSON type the writer gave it (ShareDB's Node
/// driver writes doubles where we write 64-bit integers).
pub(crate) fn bson_i64(b: Option<&Bson>) -> Option<i64> {
    match b {
        Some(Bson::Int32(n)) => Some(i64::from(*n)),
        Some(Bson::Int64(n)) => Some(*n),
        Some(Bson::Double(n)) if n.is_finite() => Some(*n as i64),
        _ => None,
    }
}

/// Payload of a stored snapshot.
fn snapshot_of(mut d: Document) -> Option<Snapshot> {
    let id = d.get_str("_id").ok()?.to_string();
    let version = bson_i64(d.get("_v")).unwrap_or(0);
    let doc_type = d.get_str("_type").ok().map(str::to_string);
    let last_op = d.get_object_id("_o").ok();
    let time = |key: &str| d.get_document("_m").ok().and_then(|m| bson_i64(m.get(key)));
    let (ctime, mtime) = (time("ctime"), time("mtime"));
    for k in ENVELOPE {
        d.remove(k);
    }
    Some(Snapshot {
        id,
        version,
        doc_type,
        data: to_json(Bson::Document(d)),
        last_op,
        ctime,
        mtime,
    })
}

fn commit_of(mut d: Document) -> Option<Commit> {
    d.remove("_id");
    serde_json::from_value(to_json(Bson::Document(d))).ok()
}

/// Order commits parent → child (each viz's commits form one chain).
pub fn chain_order(commits: Vec<Commit>) -> Vec<Commit> {
    let ids: std::collections::HashSet<&str> = commits.iter().map(|c| c.id.as_str()).collect();
    let mut by_parent: HashMap<Option<String>, Commit> = HashMap::new();
    let mut root = None;
    for c in &commits {
        match &c.parent {
            Some(p) if ids.contains(p.as_str()) => {
                by_parent.insert(Some(p.clone()), c.clone());
            }
            _ => root = Some(c.clone()),
        }
    }
    let mut out = Vec::with_capacity(commits.len());
    let mut next = root;
    while let Some(c) = next {
        next = by_parent.remove(&Some(c.id.clone()));
        out.push(c);
        if out.len() > commits.len() {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The driver's error for a write whose write concern failed with `code`.
    fn wce(code: i32) -> WriteConcernError {
        bson::from_document(doc! {"code": code, "codeName": "X", "errmsg": "waiting"}).unwrap()
    }

    fn insert_many_error(write_codes: &[i32], wce_code: Option<i32>) -> mongodb::error::Error {
        let mut d = doc! {};
        if !write_codes.is_empty() {
            let errs: Vec<Document> = write_codes
                .iter()
                .enumerate()
                .map(|(i, c)| doc! {"index": i as i32, "code": c, "errmsg": "e"})
                .collect();
            d.insert("writeErrors", errs);
        }
        if let Some(c) = wce_code {
            d.insert("writeConcernError", doc! {"code": c, "errmsg": "w"});
        }
        let im: mongodb::error::InsertManyError = bson::from_document(d).unwrap();
        ErrorKind::InsertMany(im).into()
    }

    #[test]
    fn a_write_concern_timeout_is_transient_however_it_arrives() {
        // From update_one / replace_one / delete_one, or a raw command through write_command.
        let e: mongodb::error::Error =
            ErrorKind::Write(WriteFailure::WriteConcernError(wce(64))).into();
        assert!(is_transient_mongo(&e));
        assert!(StoreError::Mongo(e).is_transient());
        // From insert_many, alone or beside the duplicate keys insert_ignoring_duplicates
        // expects (it passes such an error on: the inserted ops are not known durable).
        assert!(is_transient_mongo(&insert_many_error(&[], Some(64))));
        assert!(is_transient_mongo(&insert_many_error(
            &[DUPLICATE_KEY, DUPLICATE_KEY],
            Some(64)
        )));
        assert_eq!(
            duplicate_positions(&insert_many_error(&[DUPLICATE_KEY], Some(64)), 1),
            None
        );
        // Named by its cause, not by the duplicates a retry meets.
        assert!(
            describe_mongo(&insert_many_error(&[DUPLICATE_KEY], Some(64)))
                .starts_with("write concern error 64"),
        );
        assert!(
            describe_mongo(&insert_many_error(&[DUPLICATE_KEY, 10334], Some(64)))
                .starts_with("insert error 10334")
        );
        // As a command error (a server that fails the whole command with it).
        let c: mongodb::error::CommandError =
            bson::from_document(doc! {"code": 64, "codeName": "WriteConcernFailed", "errmsg": "w"})
                .unwrap();
        assert!(is_transient_mongo(&ErrorKind::Command(c).into()));
    }

    #[test]
    fn a_write_concern_the_deployment_cannot_meet_is_not_transient() {
        for code in [79, 100] {
            let e: mongodb::error::Error =
                ErrorKind::Write(WriteFailure::WriteConcernError(wce(code))).into();
            assert!(!is_transient_mongo(&e), "{code}");
            assert!(!is_transient_mongo(&insert_many_error(&[], Some(code))));
        }
        // Shutdown and step-down while waiting for replication: transient.
        for code in [91, 189, 11602] {
            let e: mongodb::error::Error =
                ErrorKind::Write(WriteFailure::WriteConcernError(wce(code))).into();
            assert!(is_transient_mongo(&e), "{code}");
        }
    }

    #[test]
    fn an_insert_refused_for_good_stays_permanent_whatever_the_write_concern() {
        // Document too large (10334): a retry is refused again.
        assert!(!is_transient_mongo(&insert_many_error(&[10334], Some(64))));
        assert!(!is_transient_mongo(&insert_many_error(&[10334], None)));
        // Only duplicates, durable: no failure worth a retry (the caller decides).
        assert!(!is_transient_mongo(&insert_many_error(
            &[DUPLICATE_KEY],
            None
        )));
        // A statement refused for a transient reason (an election): retried.
        assert!(is_transient_mongo(&insert_many_error(&[11602], None)));
    }

    #[test]
    fn a_write_concern_error_in_a_raw_reply_is_a_typed_failure() {
        let reply = doc! {
            "ok": 1, "n": 2,
            "writeConcernError": {"code": 64, "codeName": "WriteConcernFailed",
                                  "errmsg": "waiting for replication timed out",
                                  "errInfo": {"wtimeout": true}},
        };
        let e = write_concern_error(&reply).expect("a writeConcernError fails the write");
        match e.kind.as_ref() {
            ErrorKind::Write(WriteFailure::WriteConcernError(w)) => {
                assert_eq!(w.code, 64);
                assert_eq!(w.message, "waiting for replication timed out");
            }
            other => panic!("{other:?}"),
        }
        assert!(is_transient_mongo(&e));
        assert_eq!(
            describe_mongo(&e),
            "write concern error 64 (WriteConcernFailed): waiting for replication timed out"
        );
        // A code sent as another number type, no message: still the typed error.
        let odd = doc! {"ok": 1, "writeConcernError": {"code": 64_i64}};
        assert!(write_concern_error(&odd).is_some_and(|e| is_transient_mongo(&e)));
        // Write errors alone are the caller's (`write_errors`), not a write concern failure.
        let refused =
            doc! {"ok": 1, "n": 0, "writeErrors": [{"index": 0, "code": 11000, "errmsg": "dup"}]};
        assert!(write_concern_error(&refused).is_none());
        assert!(write_concern_error(&doc! {"ok": 1, "n": 1}).is_none());
    }

    #[test]
    fn op_ids_are_deterministic_and_tell_different_ops_at_one_version_apart() {
        let one = doc! {"op": ["forksCount", {"r": 0, "i": 1}]};
        let two = doc! {"op": ["forksCount", {"r": 0, "i": 2}]};
        // A re-run of a stopped attempt writes the same op: the same id, inserted once.
        assert_eq!(op_id("info", "a", 3, &one), op_id("info", "a", 3, &one));
        // Two writers racing at version 3 with different ops: two ids, so the loser's op is an
        // orphan instead of standing in for the winner's.
        assert_ne!(op_id("info", "a", 3, &one), op_id("info", "a", 3, &two));
        assert_ne!(op_id("info", "a", 3, &one), op_id("info", "a", 4, &one));
        assert_ne!(op_id("info", "a", 3, &one), op_id("content", "a", 3, &one));
        assert_ne!(op_id("info", "ab", 3, &one), op_id("info", "a", 3, &one));
    }

    #[test]
    fn a_salted_op_id_tells_the_same_body_for_other_forks_apart() {
        let one = doc! {"op": ["forksCount", {"r": 0, "i": 1}]};
        let a = Some("forks x");
        // A re-run of the same move finds its own op; another batch's identical move (other
        // forks) is not ours; an unsalted op is neither.
        assert_eq!(
            op_id_salted("info", "p", 3, &one, a),
            op_id_salted("info", "p", 3, &one, a)
        );
        assert_ne!(
            op_id_salted("info", "p", 3, &one, a),
            op_id_salted("info", "p", 3, &one, Some("forks y"))
        );
        assert_ne!(
            op_id_salted("info", "p", 3, &one, a),
            op_id("info", "p", 3, &one)
        );
        assert_eq!(
            op_id_salted("info", "p", 3, &one, None),
            op_id("info", "p", 3, &one)
        );
    }
}
