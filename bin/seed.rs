//! `seed`: development and demo data for a V2 database (the quick start, demos, the scale
//! benchmark). Never needed in production; it refuses to touch a V2 database that already holds
//! vizzes unless told `--force`.

use anyhow::Context as _;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use vizhub_migrate::cli::{self, GenerateArgs, LogArgs};
use vizhub_migrate::config::redact;
use vizhub_migrate::seed::{self, Dataset, Options};

/// Exit code when V2 already holds data and `--force` was not given: its own, so that scripts
/// keeping an earlier seed tell it from a usage error (clap's 2) or a failure (1).
const REFUSED: u8 = 3;

#[derive(Parser)]
#[command(
    name = "seed",
    version,
    about = "Seed a development V2 database with the real fixtures and generated vizzes",
    long_about = "Seed a development V2 database: the real fixtures (vizzes and users), plus \
        --synthetic N generated vizzes shaped like the real 2019 sample (fork graph, titles, \
        heights, owners, op logs of 0-500 edits, upvotes, collaborators, private vizzes, \
        analytics records) with a share of the bad inputs of spec 3.5. Deterministic for a \
        given --rng-seed.\n\nExit codes: 0 seeded; 1 error; 2 usage error (a bad flag, no --v2-uri); \
        3 V2 already holds vizzes (nothing written; --force replaces them)."
)]
struct Cli {
    /// V2 MongoDB URI of a development database; must name its database.
    #[arg(long, env = "V2_MONGO_URI", hide_env_values = true)]
    v2_uri: Option<String>,
    /// Directory of the V2 fixtures (`vizV2-*.json`, `userV2-*.json`,
    /// `documentInfo-sample-2019.json`); default: the workplace's `shared/fixtures/v2`.
    #[arg(long, env = "SEED_FIXTURES_DIR", value_name = "DIR")]
    fixtures: Option<PathBuf>,
    /// Leave out the real fixtures (only generated vizzes; they then hang from the primordial
    /// viz id without it being present).
    #[arg(long)]
    no_fixtures: bool,
    /// Generated vizzes to add.
    #[arg(long, value_name = "N", default_value_t = 0)]
    synthetic: usize,
    /// Copies of the fixtures to add as forks of one hot parent (the primordial viz): the
    /// shape of a template with thousands of forks.
    #[arg(long, value_name = "N", default_value_t = 0)]
    hot_parent: usize,
    /// Share of the generated vizzes that are bad inputs (tombstones, datasets, missing content or
    /// owner, `_id` ≠ `id`, broken op logs, one oversized content), 0–1.
    #[arg(long, default_value_t = 0.02)]
    bad_share: f64,
    /// Seed of the generator.
    #[arg(long, default_value_t = 42)]
    rng_seed: u64,
    /// Longest generated op log.
    #[arg(long, default_value_t = 500)]
    max_ops: usize,
    /// Drop the V2 collections the seed writes, then seed, even if they hold data.
    #[arg(long)]
    force: bool,
    /// Print the summary as one JSON document on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    generate: GenerateArgs,
    // Last: it sets the help heading of what follows.
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(kind) = cli.generate.generate {
        return cli::generate_to_stdout::<Cli>(kind);
    }
    if let Err(e) = cli.log.init() {
        return cli::exit_code("seed", Err(e.into()));
    }
    cli::finish("seed", run(cli).await).await
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let v2_uri = cli::require(
        cli.v2_uri.as_deref(),
        "the V2 MongoDB URI",
        "--v2-uri",
        "V2_MONGO_URI",
    )?;
    if let Some(dir) = &cli.fixtures {
        anyhow::ensure!(
            dir.is_dir(),
            "--fixtures {}: not a directory",
            dir.display()
        );
        // The fixtures module reads this (tests and benchmarks use the same variable).
        std::env::set_var("VIZHUB_FIXTURES_DIR", dir);
    }
    let dir = vizhub_migrate::fixtures::dir();
    anyhow::ensure!(
        dir.join("documentInfo-sample-2019.json").is_file(),
        "no V2 fixtures in {} (give --fixtures DIR or SEED_FIXTURES_DIR)",
        dir.display()
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&cli.bad_share),
        "--bad-share must be between 0 and 1"
    );
    let db = cli::mongo(v2_uri, "vizhub-migrate-seed").await?;
    let existing = seed::holds_data(&db)
        .await
        .with_context(|| format!("reading {}", redact(v2_uri)))?;
    if existing > 0 {
        if !cli.force {
            cli::report_warning(
                "seed",
                &format_args!(
                    "V2 database {} already holds {existing} vizzes; nothing written \
                     (--force drops and re-seeds it)",
                    db.name()
                ),
            );
            return Ok(ExitCode::from(REFUSED));
        }
        tracing::warn!(
            db = db.name(),
            existing,
            "--force: dropping the seeded V2 collections"
        );
        seed::clear(&db).await?;
    }

    let mut data = if cli.no_fixtures {
        Dataset::default()
    } else {
        Dataset::fixtures()
    };
    let roots: Vec<String> = if data.vizzes.is_empty() {
        vec![vizhub_migrate::PRIMORDIAL_VIZ_ID.to_string()]
    } else {
        data.vizzes
            .iter()
            .filter_map(|v| v.info["_id"].as_str().map(str::to_string))
            .collect()
    };
    let opts = Options {
        vizzes: cli.synthetic,
        bad_share: cli.bad_share,
        rng_seed: cli.rng_seed,
        max_ops: cli.max_ops,
    };
    data.extend(Dataset::generate(&opts, &roots));
    if cli.hot_parent > 0 {
        let parent = vizhub_migrate::PRIMORDIAL_VIZ_ID;
        let created = data
            .vizzes
            .iter()
            .find(|v| v.info["_id"] == parent)
            .and_then(|v| v.info["createdTimestamp"].as_i64())
            .unwrap_or(1_400_000_000_000);
        data.extend(Dataset::hot_parent(cli.hot_parent, parent, created));
    }

    let bar = cli::progress_bar("seeding V2");
    bar.set_length(data.doc_count() as u64);
    let summary = seed::write(&db, &data, |n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    tracing::info!(
        db = db.name(),
        vizzes = summary.vizzes,
        users = summary.users,
        ops = summary.ops,
        "seeded"
    );
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "seeded V2 database {}: {} vizzes, {} users, {} ops, {} analytics records, {:.1} MiB of content",
            db.name(),
            summary.vizzes,
            summary.users,
            summary.ops,
            summary.analytics_records,
            summary.content_bytes as f64 / (1 << 20) as f64
        );
        if !summary.bad_inputs.is_empty() {
            let kinds: Vec<String> = summary
                .bad_inputs
                .iter()
                .map(|(k, n)| format!("{k} × {n}"))
                .collect();
            println!("bad inputs on purpose: {}", kinds.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}
