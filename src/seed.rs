//! Development and demo data for V2 (the `seed` binary, the quick start and the scale
//! benchmark; never part of a production run): the real fixtures, plus generated vizzes shaped
//! like the real ones, plus a chosen share of the bad inputs of spec 3.5.
//!
//! Generated vizzes take their titles, owners, heights and descriptions from the real
//! `documentInfo-sample-2019.json`; most fork an earlier viz (uniformly, so early vizzes gather
//! many forks, as on VizHub) and start from its files; op logs of 0–500 json0 ops (text inserts
//! and deletes counted in UTF-16 units, file adds and removes) are applied to the initial files
//! by the json0 engine, so every snapshot is exactly the result of its log; some logs are
//! truncated (start at a high `v`), as in production. Generation is deterministic for a given
//! [`Options::rng_seed`]. The data is built in memory (about 5 KiB of content per viz) and
//! written with unordered bulk inserts.

use crate::json0;
use crate::translate::{self, Config};
use crate::v2::reader::collections;
use crate::v2::V2Viz;
use mongodb::bson::{self, doc, Document};
use mongodb::options::IndexOptions;
use mongodb::{Database, IndexModel};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Generated vizzes, bad inputs included.
    pub vizzes: usize,
    /// Share of the generated vizzes that are bad inputs (spec 3.5), 0–1.
    pub bad_share: f64,
    pub rng_seed: u64,
    /// Longest generated op log.
    pub max_ops: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            vizzes: 0,
            bad_share: 0.02,
            rng_seed: 42,
            max_ops: 500,
        }
    }
}

/// Bad inputs planted on purpose, and the outcome a job must end in (spec 3.5).
pub const BAD_KINDS: [(&str, &str); 8] = [
    ("tombstone", "skipped"),
    ("dataset", "skipped"),
    ("bundle-only", "skipped"),
    ("content-missing", "failed"),
    ("owner-missing", "failed"),
    ("id-mismatch", "failed"),
    ("broken-op-log", "migrated"),
    ("content-too-large", "failed"),
];

/// V2 documents to write.
#[derive(Debug, Default, Clone)]
pub struct Dataset {
    pub vizzes: Vec<V2Viz>,
    /// Raw V2 `user` docs, one per id.
    pub users: BTreeMap<String, Value>,
    /// Raw `eventRecords` docs.
    pub events: Vec<Value>,
    /// Planted bad inputs: kind → viz ids.
    pub bad: BTreeMap<&'static str, Vec<String>>,
}

/// What [`write`] wrote.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub vizzes: usize,
    pub users: usize,
    pub ops: usize,
    pub analytics_records: usize,
    pub content_bytes: usize,
    pub bad_inputs: BTreeMap<String, usize>,
}

impl Dataset {
    /// The real fixtures, with a user synthesized for every referenced id that has no fixture.
    pub fn fixtures() -> Dataset {
        let mut d = Dataset::default();
        for (_, raw) in crate::fixtures::viz_fixtures() {
            d.vizzes.push(crate::fixtures::v2_viz(&raw));
        }
        for (id, raw) in crate::fixtures::user_fixtures() {
            d.users.insert(id, raw);
        }
        d.add_referenced_users();
        d
    }

    /// Users for every id a viz references (owner, upvoters, collaborators) that has none,
    /// except the owners of `owner-missing` bad inputs.
    fn add_referenced_users(&mut self) {
        let cfg = Config::default();
        let keep_out: BTreeSet<String> = self
            .bad
            .get("owner-missing")
            .into_iter()
            .flatten()
            .filter_map(|id| {
                let v = self.vizzes.iter().find(|v| v.info["_id"] == *id.as_str())?;
                Some(v.info["owner"].as_str()?.to_string())
            })
            .collect();
        let referenced: Vec<String> = self
            .vizzes
            .iter()
            .filter_map(|v| translate::prepare(v, &cfg).ok())
            .flat_map(|p| p.user_ids)
            .collect();
        for id in referenced {
            if !keep_out.contains(&id) {
                self.users.entry(id.clone()).or_insert_with(|| user(&id));
            }
        }
    }

    /// `n` copies of the real fixtures, every one a fork of `parent` created after it (ids
    /// `ff…` + a counter, 32 hex digits): the shape of a VizHub template with thousands of
    /// forks, where every fork's job recounts the same parent's `forksCount`. Add it to a
    /// dataset that holds `parent`.
    pub fn hot_parent(n: usize, parent: &str, parent_created: i64) -> Dataset {
        let base = Dataset::fixtures();
        let sources: Vec<&V2Viz> = base
            .vizzes
            .iter()
            .filter(|v| v.info["_id"] != parent && v.content.is_some())
            .collect();
        let mut d = Dataset {
            users: base.users.clone(),
            ..Dataset::default()
        };
        for i in 0..n {
            let id = format!("ff{i:030x}");
            let mut c = sources[i % sources.len()].clone();
            for field in ["_id", "id"] {
                c.info[field] = json!(id);
                if let Some(content) = c.content.as_mut() {
                    content[field] = json!(id);
                }
            }
            c.info["forkedFrom"] = json!(parent);
            c.info["createdTimestamp"] = json!(parent_created + 1 + i as i64);
            for op in &mut c.ops {
                op["d"] = json!(id);
                // Op `_id`s are unique per collection: the copy's are the server's to assign.
                if let Some(o) = op.as_object_mut() {
                    o.remove("_id");
                }
            }
            d.vizzes.push(c);
        }
        d
    }

    /// Add `other` (users merged by id).
    pub fn extend(&mut self, other: Dataset) {
        self.vizzes.extend(other.vizzes);
        for (id, u) in other.users {
            self.users.entry(id).or_insert(u);
        }
        self.events.extend(other.events);
        for (k, v) in other.bad {
            self.bad.entry(k).or_default().extend(v);
        }
    }

    /// Documents [`write`] inserts.
    pub fn doc_count(&self) -> usize {
        self.vizzes
            .iter()
            .map(|v| 1 + usize::from(v.content.is_some()) + v.ops.len())
            .sum::<usize>()
            + self.users.len()
            + self.events.len()
    }

    /// `opts.vizzes` generated vizzes; `roots` are existing viz ids (the fixtures) they may
    /// fork from besides each other.
    pub fn generate(opts: &Options, roots: &[String]) -> Dataset {
        Generator::new(opts, roots).run()
    }
}

/// A V2 user doc as V2 stores it.
pub fn user(id: &str) -> Value {
    json!({"_id": id, "id": id, "userName": format!("user{id}"), "fullName": format!("User {id}"),
           "email": format!("{id}@example.com"), "avatarUrl": format!("https://avatars.githubusercontent.com/u/{id}?v=4"),
           "company": null, "website": null, "location": null, "bio": null,
           "_type": "http://sharejs.org/types/JSONv0", "_v": 1})
}

struct Generator<'a> {
    opts: &'a Options,
    rng: StdRng,
    sample: Vec<Value>,
    roots: Vec<String>,
    /// Generated good vizzes: (id, final files), fork candidates.
    made: Vec<(String, Value)>,
    owners: Vec<String>,
    out: Dataset,
}

const WORDS: [&str; 16] = [
    "const", "data", "svg", "select", "append", "attr", "scale", "axis", "width", "height",
    "margin", "circle", "then", "csv", "🐧", "vizhub",
];

impl<'a> Generator<'a> {
    fn new(opts: &'a Options, roots: &[String]) -> Self {
        let sample = crate::fixtures::info_sample_2019();
        let owners: Vec<String> = sample
            .iter()
            .filter_map(|s| s["owner"].as_str().map(str::to_string))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        Generator {
            opts,
            rng: StdRng::seed_from_u64(opts.rng_seed),
            sample,
            roots: roots.to_vec(),
            made: Vec::new(),
            owners,
            out: Dataset::default(),
        }
    }

    fn run(mut self) -> Dataset {
        let n = self.opts.vizzes;
        let bad = ((n as f64) * self.opts.bad_share.clamp(0.0, 1.0)).round() as usize;
        // Spread creation over two years from mid-2018; bad inputs evenly among the good.
        let step = (63_000_000 / n.max(1)).max(1) as i64;
        let every = n.checked_div(bad).unwrap_or(usize::MAX);
        let mut planted = 0;
        for i in 0..n {
            let created = 1_530_000_000 + i as i64 * step + self.rng.random_range(0..step);
            let viz = self.good(created);
            if planted < bad && i % every == every / 2 {
                self.spoil(viz, planted);
                planted += 1;
            } else {
                self.out.vizzes.push(viz);
            }
        }
        self.out.add_referenced_users();
        self.out
    }

    fn id(&mut self) -> String {
        format!("{:032x}", self.rng.random::<u128>())
    }

    fn text(&mut self, bytes: usize) -> String {
        let mut s = String::with_capacity(bytes + 64);
        while s.len() < bytes {
            for _ in 0..self.rng.random_range(3..10) {
                s.push_str(WORDS.choose(&mut self.rng).expect("words"));
                s.push(' ');
            }
            s.push_str(";\n");
        }
        s
    }

    fn size(&mut self) -> usize {
        match self.rng.random_range(0..100) {
            0..70 => self.rng.random_range(300..3_000),
            70..95 => self.rng.random_range(3_000..20_000),
            _ => self.rng.random_range(20_000..100_000),
        }
    }

    fn fresh_files(&mut self, description: &str) -> Value {
        let mut files = vec![json!({"name": "index.html", "text": self.text_sized()})];
        for name in ["index.js", "styles.css", "data.csv"] {
            if self.rng.random_bool(0.5) {
                files.push(json!({"name": name, "text": self.text_sized()}));
            }
        }
        files.push(json!({"name": "README.md", "text": description}));
        if self.rng.random_bool(0.3) {
            let n = self.size() * 3;
            files.push(json!({"name": "bundle.js", "text": self.text(n)}));
        }
        Value::Array(files)
    }

    fn text_sized(&mut self) -> String {
        let n = self.size();
        self.text(n)
    }

    fn good(&mut self, created: i64) -> V2Viz {
        let id = self.id();
        let s = self.sample.choose(&mut self.rng).expect("sample").clone();
        let owner = s["owner"].as_str().unwrap_or("68416").to_string();
        let mut title = s["title"].as_str().unwrap_or("Untitled").to_string();
        if self.rng.random_bool(0.03) {
            title.push_str(" 🐧");
        }
        let description = s["description"].as_str().unwrap_or("").to_string();
        let parent = self.parent();
        let files = match &parent {
            Some((_, Some(files))) => files.clone(),
            _ => self.fresh_files(&description),
        };
        let (content, ops, last) = self.history(&id, created, files);
        let mut info = json!({
            "_id": id, "id": id, "documentType": "visualization", "owner": owner, "title": title,
            "description": description, "createdTimestamp": created,
            "_type": "http://sharejs.org/types/JSONv0", "_v": 1 + self.rng.random_range(0..40),
            "_m": {"ctime": created * 1000, "mtime": last * 1000},
        });
        if self.rng.random_bool(0.95) {
            info["lastUpdatedTimestamp"] = json!(last);
        }
        if let Some(h) = s.get("height") {
            info["height"] = h.clone();
        }
        if let Some((Some(p), _)) = &parent {
            info["forkedFrom"] = json!(p);
            if self.rng.random_bool(0.03) {
                info["forkFromBackfilled"] = json!(true);
            }
        }
        self.social(&mut info, created);
        self.page_views(&owner, &id);
        let final_files = content["files"].clone();
        self.made.push((id.clone(), final_files));
        V2Viz {
            info,
            content: Some(content),
            ops,
            ..Default::default()
        }
    }

    /// The fork parent of a new viz: none (10 %), a root of another V2 (30 %, when given: its
    /// files unknown here), or a viz made before (its files, copied); `(parent id, files)`.
    fn parent(&mut self) -> Option<(Option<String>, Option<Value>)> {
        match self.rng.random_range(0..100) {
            0..10 => None,
            10..40 if !self.roots.is_empty() => {
                Some((self.roots.choose(&mut self.rng).cloned(), None))
            }
            _ if !self.made.is_empty() => {
                let (pid, files) = self.made.choose(&mut self.rng).expect("made").clone();
                Some((Some(pid), Some(files)))
            }
            _ => None,
        }
    }

    /// What other users did with a viz, into its `info`: upvotes (half the vizzes, newest
    /// first), a collaborator (8 %), and its privacy (4 % private, 3 % null, 43 % public, the
    /// rest unset). Drawn in this order after the viz's own fields: the same seed makes the
    /// same dataset.
    fn social(&mut self, info: &mut Value, created: i64) {
        if self.rng.random_bool(0.5) {
            let k = self.rng.random_range(1..9);
            let mut ups: Vec<Value> = (0..k)
                .map(|_| {
                    let u = self.owners.choose(&mut self.rng).expect("owners").clone();
                    json!({"userId": u, "timestamp": created + self.rng.random_range(60..7_776_000)})
                })
                .collect();
            ups.sort_by_key(|u| std::cmp::Reverse(u["timestamp"].as_i64()));
            ups.dedup_by(|a, b| a["userId"] == b["userId"]);
            info["upvotes"] = Value::Array(ups);
        }
        if self.rng.random_bool(0.08) {
            let u = self.owners.choose(&mut self.rng).expect("owners").clone();
            info["collaborators"] = json!([{"userId": u}]);
        }
        match self.rng.random_range(0..100) {
            0..4 => info["privacy"] = json!("private"),
            4..7 => info["privacy"] = Value::Null,
            7..50 => info["privacy"] = json!("public"),
            _ => {}
        }
    }

    /// A page-view record of the viz (60 % of them), into the dataset's `events`.
    fn page_views(&mut self, owner: &str, id: &str) {
        if self.rng.random_bool(0.6) {
            let views = self.rng.random_range(1..5_000);
            self.out.events.push(json!({
                "id": format!("event.pageview.viz.owner:{owner}.viz:{id}"),
                "days": {"2019-05-01": views / 3, "2019-05-02": views - views / 3},
                "months": {"2019-05": views}, "years": {"2019": views}, "all": {"all": views},
            }));
        }
    }

    /// An op log applied to `files`: (content snapshot, ops, time of the last op).
    fn history(&mut self, id: &str, created: i64, files: Value) -> (Value, Vec<Value>, i64) {
        let max = self.opts.max_ops;
        let count = match self.rng.random_range(0..100) {
            0..30 => 0,
            30..70 => self.rng.random_range(1..20),
            70..90 => self.rng.random_range(20..100),
            _ => self.rng.random_range(100..=500),
        }
        .min(max);
        // Some logs lost their oldest ops (the V2 log was truncated for old vizzes).
        let base_v: u64 = if self.rng.random_bool(0.1) {
            self.rng.random_range(20..200)
        } else {
            1
        };
        let mut state = json!({"id": id, "documentType": "visualization", "files": files});
        let mut ops = Vec::with_capacity(count);
        let mut t = created + 30;
        for _ in 0..count {
            t += if self.rng.random_bool(0.05) {
                self.rng.random_range(3_600..172_800)
            } else {
                self.rng.random_range(2..90)
            };
            let Some(op) = self.edit(&state) else {
                continue;
            };
            let parsed = json0::parse_op(&op).expect("generated op parses");
            if json0::apply(&mut state, &parsed).is_err() {
                continue;
            }
            let v = base_v + ops.len() as u64;
            ops.push(
                json!({"_id": format!("{id}-{v}"), "src": "seed", "seq": ops.len() + 1,
                "v": v, "op": op, "m": {"ts": t * 1000}, "d": id}),
            );
        }
        let last = if ops.is_empty() { created } else { t };
        let obj = state.as_object_mut().expect("object");
        obj.insert("_id".into(), json!(id));
        obj.insert("_type".into(), json!("http://sharejs.org/types/JSONv0"));
        obj.insert("_v".into(), json!(base_v + ops.len() as u64));
        obj.insert(
            "_m".into(),
            json!({"ctime": created * 1000, "mtime": last * 1000}),
        );
        (state, ops, last)
    }

    /// One json0 edit that fits `state`.
    fn edit(&mut self, state: &Value) -> Option<Value> {
        let files = state["files"].as_array()?;
        let i = self.rng.random_range(0..files.len().max(1));
        let roll = self.rng.random_range(0..100);
        if roll < 4 || files.is_empty() {
            let name = format!("file{}.js", self.rng.random_range(0..1_000));
            let file = json!({"name": name, "text": self.text(200)});
            return Some(json!([{"p": ["files", files.len()], "li": file}]));
        }
        if roll < 7 && files.len() > 1 {
            return Some(json!([{"p": ["files", i], "ld": files[i]}]));
        }
        let text = files[i]["text"].as_str()?;
        let chars: Vec<char> = text.chars().collect();
        let at = self.rng.random_range(0..=chars.len());
        let offset: usize = chars[..at].iter().map(|c| c.len_utf16()).sum();
        if roll < 15 && at < chars.len() {
            let end = (at + self.rng.random_range(1..20)).min(chars.len());
            let gone: String = chars[at..end].iter().collect();
            return Some(json!([{"p": ["files", i, "text", offset], "sd": gone}]));
        }
        let word = WORDS.choose(&mut self.rng).expect("words");
        Some(json!([{"p": ["files", i, "text", offset], "si": format!("{word} ")}]))
    }

    /// Turn a good viz into the `n`-th bad input (kinds in turn; one oversized content at most).
    fn spoil(&mut self, mut v: V2Viz, n: usize) {
        let kinds = if n >= BAD_KINDS.len() {
            BAD_KINDS.len() - 1 // never a second 6 MiB content
        } else {
            BAD_KINDS.len()
        };
        let (kind, _) = BAD_KINDS[n % kinds];
        let id = v.info["_id"].as_str().expect("id").to_string();
        // Nothing forks a bad input.
        self.made.retain(|(m, _)| *m != id);
        match kind {
            "tombstone" => {
                v.info = json!({"_id": id, "_type": null, "_v": 7, "forksCount": 2});
                v.content = Some(json!({"_id": id, "_type": null, "_v": 3}));
                v.ops.clear();
            }
            "dataset" => {
                v.info["documentType"] = json!("dataset");
                v.content = Some(json!({"_id": id, "id": id, "documentType": "dataset",
                    "text": "a,b\n1,2\n", "_type": "http://sharejs.org/types/JSONv0", "_v": 1}));
                v.ops.clear();
            }
            "bundle-only" => {
                let c = v.content.as_mut().expect("content");
                c["files"] = json!([{"name": "bundle.js", "text": "(function(){})();\n"}]);
                v.ops.clear();
            }
            "content-missing" => v.content = None,
            "owner-missing" => v.info["owner"] = json!(format!("ghost{n}")),
            "id-mismatch" => v.info["id"] = json!(self.id()),
            "broken-op-log" => {
                v.ops
                    .push(json!({"_id": format!("{id}-broken"), "v": 1_000_000,
                    "op": [{"p": ["files", 0, "text", 0], "sd": "no such text"}],
                    "m": {"ts": 1_600_000_000_000_i64}, "d": id}));
            }
            _ => {
                let c = v.content.as_mut().expect("content");
                c["files"][0]["text"] = json!("y".repeat(6 << 20));
            }
        }
        self.out.bad.entry(kind).or_default().push(id);
        self.out.vizzes.push(v);
    }
}

/// Whether V2 already holds vizzes (the seed refuses to mix data sets).
pub async fn holds_data(db: &Database) -> mongodb::error::Result<u64> {
    db.collection::<Document>(collections::INFO)
        .estimated_document_count()
        .await
}

/// Drop the collections the seed writes (for `seed --force`).
pub async fn clear(db: &Database) -> mongodb::error::Result<()> {
    for c in [
        collections::INFO,
        collections::CONTENT,
        collections::CONTENT_OPS,
        collections::USER,
        collections::EVENT_RECORDS,
    ] {
        db.collection::<Document>(c).drop().await?;
    }
    Ok(())
}

/// Insert `data` (unordered bulk inserts of up to 1,000 docs) and the indexes V2 has for the
/// queries the migration makes; `progress` gets the number of documents written so far.
pub async fn write(
    db: &Database,
    data: &Dataset,
    progress: impl Fn(u64),
) -> mongodb::error::Result<Summary> {
    let mut written = 0u64;
    let put = |coll: &'static str, docs: Vec<Value>| {
        let db = db.clone();
        async move {
            for chunk in docs.chunks(1_000) {
                let docs: Vec<Document> = chunk
                    .iter()
                    .map(|d| bson::to_document(d).expect("JSON objects convert to BSON"))
                    .collect();
                db.collection::<Document>(coll)
                    .insert_many(docs)
                    .ordered(false)
                    .await?;
            }
            Ok::<usize, mongodb::error::Error>(docs.len())
        }
    };
    let mut summary = Summary::default();
    for (coll, docs) in [
        (
            collections::USER,
            data.users.values().cloned().collect::<Vec<_>>(),
        ),
        (collections::EVENT_RECORDS, data.events.clone()),
    ] {
        written += put(coll, docs).await? as u64;
        progress(written);
    }
    // Vizzes in slices, so progress moves and memory stays flat.
    for slice in data.vizzes.chunks(200) {
        let infos = slice.iter().map(|v| v.info.clone()).collect();
        let contents: Vec<Value> = slice.iter().filter_map(|v| v.content.clone()).collect();
        let ops: Vec<Value> = slice.iter().flat_map(|v| v.ops.iter().cloned()).collect();
        summary.ops += ops.len();
        summary.content_bytes += contents.iter().map(|c| c.to_string().len()).sum::<usize>();
        written += put(collections::INFO, infos).await? as u64;
        written += put(collections::CONTENT, contents).await? as u64;
        written += put(collections::CONTENT_OPS, ops).await? as u64;
        progress(written);
    }
    let index = |keys: Document| {
        IndexModel::builder()
            .keys(keys)
            .options(IndexOptions::default())
            .build()
    };
    db.collection::<Document>(collections::CONTENT_OPS)
        .create_index(index(doc! {"d": 1, "v": 1}))
        .await?;
    db.collection::<Document>(collections::INFO)
        .create_index(index(doc! {"createdTimestamp": 1, "_id": 1}))
        .await?;
    db.collection::<Document>(collections::EVENT_RECORDS)
        .create_index(index(doc! {"id": 1}))
        .await?;
    summary.vizzes = data.vizzes.len();
    summary.users = data.users.len();
    summary.analytics_records = data.events.len();
    summary.bad_inputs = data
        .bad
        .iter()
        .map(|(k, v)| (k.to_string(), v.len()))
        .collect();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Dataset {
        let roots = vec![crate::PRIMORDIAL_VIZ_ID.to_string()];
        Dataset::generate(
            &Options {
                vizzes: 200,
                bad_share: 0.05,
                ..Options::default()
            },
            &roots,
        )
    }

    #[test]
    fn generation_is_deterministic() {
        let (a, b) = (small(), small());
        assert_eq!(a.vizzes.len(), 200);
        for (x, y) in a.vizzes.iter().zip(&b.vizzes) {
            assert_eq!(x.info, y.info);
            assert_eq!(x.ops, y.ops);
        }
    }

    #[test]
    fn every_good_viz_translates_and_its_log_replays_to_the_snapshot() {
        let d = small();
        let bad: BTreeSet<&String> = d.bad.values().flatten().collect();
        assert_eq!(bad.len(), 10, "{:?}", d.bad);
        let cfg = Config::default();
        let mut with_ops = 0;
        let mut forks = 0;
        for v in &d.vizzes {
            let id = v.info["_id"].as_str().unwrap().to_string();
            if bad.contains(&id) {
                continue;
            }
            with_ops += usize::from(!v.ops.is_empty());
            forks += usize::from(v.info.get("forkedFrom").is_some());
            let p = translate::prepare(v, &cfg).unwrap_or_else(|e| panic!("{id}: {e}"));
            // Every referenced user exists.
            for u in &p.user_ids {
                assert!(d.users.contains_key(u), "{id}: user {u}");
            }
            let users: std::collections::HashMap<String, Value> = d
                .users
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let ctx = translate::Context {
                parent: translate::Parent::Root,
                users: &users,
                analytics: None,
                v3_analytics: None,
                previous: None,
                deleted_users: &translate::NO_DELETED_USERS,
                now: 1_700_000_000,
            };
            let t = translate::translate(&p, &ctx, &cfg).unwrap_or_else(|e| panic!("{id}: {e}"));
            // The generated log replays to the snapshot: history is rebuilt, not the fallback.
            if !v.ops.is_empty() {
                assert!(
                    matches!(t.history, crate::history::Mode::Replayed { .. }),
                    "{id}: {:?}",
                    t.history
                );
            }
        }
        assert!(
            with_ops > 100 && forks > 150,
            "{with_ops} logs, {forks} forks"
        );
    }

    #[test]
    fn bad_inputs_cover_every_kind_but_one_oversized_content_at_most() {
        let d = Dataset::generate(
            &Options {
                vizzes: 400,
                bad_share: 0.1,
                ..Options::default()
            },
            &[],
        );
        for (kind, _) in BAD_KINDS {
            assert!(d.bad.contains_key(kind), "{kind}");
        }
        assert_eq!(d.bad["content-too-large"].len(), 1);
        // The owner of an owner-missing viz has no user doc.
        let id = &d.bad["owner-missing"][0];
        let v = d
            .vizzes
            .iter()
            .find(|v| v.info["_id"] == *id.as_str())
            .unwrap();
        assert!(!d.users.contains_key(v.info["owner"].as_str().unwrap()));
    }
}
