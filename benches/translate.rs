//! Translation cost per viz vs the cost of merely deserializing the same V2 documents.
//!
//! `cargo bench --bench translate` prints, for each real fixture, the median time to
//! deserialize its documents (JSON text → typed V2 model) and to translate the deserialized
//! documents (validate, rebuild history, diff, build every V3 document), and the ratio.
//! A plain harness rather than criterion/divan: the figure we need is the ratio of two medians
//! measured in the same run, which those frameworks do not report. Figures also go to
//! `target/bench-translate.json`. Under `cargo test` the same code runs once per fixture as a
//! smoke test (no timing claims).

#[path = "../tests/common/mod.rs"]
mod common;

use serde_json::{json, Value};
use std::hint::black_box;
use std::time::{Duration, Instant};
use vizhub_migrate::translate::{self, Context, Parent};
use vizhub_migrate::{v2, v3};

/// Median wall time of `f` over enough runs to fill ~`budget`.
fn median(budget: Duration, mut f: impl FnMut()) -> Duration {
    f(); // warm up
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 5 || (start.elapsed() < budget && samples.len() < 10_000) {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let budget = if bench {
        Duration::from_secs(2)
    } else {
        Duration::ZERO
    };
    let mut world = common::World::with_fixtures(&[]);
    let ids: Vec<String> = world.v2.keys().cloned().collect();
    for id in &ids {
        world.migrate(id).unwrap();
    }
    let mut rows = Vec::new();
    println!(
        "{:<34} {:>8} {:>14} {:>14} {:>8}",
        "fixture", "commits", "deserialize", "translate", "ratio"
    );
    for (id, raw) in vizhub_migrate::fixtures::viz_fixtures() {
        let text = raw.to_string();
        let deserialize = median(budget, || {
            let v: Value = serde_json::from_str(black_box(&text)).unwrap();
            black_box(v2::parse_viz_docs(&v).unwrap());
        });
        let docs = vizhub_migrate::fixtures::v2_viz(&raw);
        let t = &world.translations[&id];
        let fork = t.commits[0].parent.as_ref().map(|c| {
            (
                world.commits[c].viz.clone(),
                c.clone(),
                v3::content_at(&world.commits, c).unwrap(),
            )
        });
        let parent = match &fork {
            None => Parent::Root,
            Some((viz, commit, content)) => Parent::Fork {
                viz,
                commit,
                content,
                backfilled: t.info.forked_from_is_backfilled == Some(true),
            },
        };
        let translate_time = median(budget, || {
            let p = translate::prepare(black_box(&docs), &world.cfg).unwrap();
            let ctx = Context {
                parent: parent.clone(),
                users: &world.users,
                analytics: None,
                v3_analytics: None,
                previous: None,
                deleted_users: &vizhub_migrate::translate::NO_DELETED_USERS,
                now: common::NOW,
            };
            black_box(translate::translate(&p, &ctx, &world.cfg).unwrap());
        });
        let ratio = translate_time.as_secs_f64() / deserialize.as_secs_f64();
        println!(
            "{:<34} {:>8} {:>12.1}µs {:>12.1}µs {:>7.2}×",
            id,
            t.commits.len(),
            deserialize.as_secs_f64() * 1e6,
            translate_time.as_secs_f64() * 1e6,
            ratio
        );
        rows.push(json!({"viz": id, "commits": t.commits.len(), "deserialize_us": deserialize.as_secs_f64() * 1e6, "translate_us": translate_time.as_secs_f64() * 1e6, "ratio": ratio}));
    }
    // The whole set, weighted by real cost: what a worker's CPU actually spends per job mix.
    let (d, t): (f64, f64) = rows.iter().fold((0.0, 0.0), |(d, t), r| {
        (
            d + r["deserialize_us"].as_f64().unwrap(),
            t + r["translate_us"].as_f64().unwrap(),
        )
    });
    println!(
        "{:<34} {:>8} {:>12.1}µs {:>12.1}µs {:>7.2}×",
        "all fixtures (sum)",
        "",
        d,
        t,
        t / d
    );
    if bench {
        let out =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-translate.json");
        std::fs::write(
            &out,
            serde_json::to_vec_pretty(&json!({ "fixtures": rows, "total": {"deserialize_us": d, "translate_us": t, "ratio": t / d} })).unwrap(),
        )
        .unwrap();
        println!("wrote {}", out.display());
    }
}
