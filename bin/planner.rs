//! `planner`: plans jobs (one per viz) onto the work queue, and reports status.

use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::process::ExitCode;
use vizhub_migrate::broker::{self, Publisher, Topology};
use vizhub_migrate::cli::{self, BrokerArgs, GenerateArgs, LogArgs, MongoArgs, TranslateArgs};
use vizhub_migrate::config::redact;
use vizhub_migrate::ledger::Ledger;
use vizhub_migrate::migrate::Migrator;
use vizhub_migrate::planner::{self, PlanError, Selection};
use vizhub_migrate::status;
use vizhub_migrate::v2::reader::Reader;
use vizhub_migrate::v3::store::Store;
use vizhub_migrate::verify::{self, Scope};
use vizhub_migrate::{preflight, report};

#[derive(Parser)]
#[command(
    name = "planner",
    override_usage = "planner [OPTIONS] <COMMAND>",
    version,
    about = "Plan VizHub V2 → V3 migration jobs and watch their progress"
)]
struct Cli {
    // The common flags are global: before or after the subcommand.
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    mongo: MongoArgs,
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    generate: GenerateArgs,
    /// Optional for clap only, so that `--generate` needs none; `main` requires it.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Publish one job per selected V2 viz, in (createdTimestamp, _id) order.
    Plan(PlanArgs),
    /// Queue depths, batches and outcomes.
    Status(StatusArgs),
    /// Re-derive V3 from V2 as it is now and compare (exit 0 all equal, 3 mismatches, 4 nothing compared).
    Verify(VerifyArgs),
    /// The ledger's per-viz outcomes and reasons (table, --json or --csv).
    Report(ReportArgs),
    /// Read-only pre-flight of V2: does an index serve every query the fleet makes?
    /// (exit 0 all covered, 5 some are not)
    Check(CheckArgs),
}

#[derive(Args)]
struct ReportArgs {
    /// Only this batch.
    #[arg(long, conflicts_with = "from")]
    batch: Option<String>,
    /// Window start (inclusive): the last job on the viz ended at or after FROM. Unix seconds or RFC 3339.
    #[arg(long, requires = "to", value_parser = cli::parse_time)]
    from: Option<i64>,
    /// Window end (exclusive): the last job ended before TO.
    #[arg(long, requires = "from", value_parser = cli::parse_time)]
    to: Option<i64>,
    /// Only this outcome (repeatable): migrated, unchanged, skipped, failed, conflict.
    #[arg(long, value_name = "O", value_parser = report::parse_outcome)]
    outcome: Vec<vizhub_migrate::Outcome>,
    /// One JSON document on stdout.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// RFC 4180 CSV on stdout.
    #[arg(long)]
    csv: bool,
}

#[derive(Args)]
struct CheckArgs {
    /// One JSON document on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[group(id = "scope", required = true, multiple = false, args = ["from", "all", "viz"])]
struct VerifyArgs {
    #[command(flatten)]
    translate: TranslateArgs,
    /// Window start (inclusive), as for `plan`. Unix seconds or RFC 3339.
    #[arg(long, requires = "to", value_parser = cli::parse_time)]
    from: Option<i64>,
    /// Window end (exclusive).
    #[arg(long, requires = "from", value_parser = cli::parse_time)]
    to: Option<i64>,
    /// Every V2 viz.
    #[arg(long)]
    all: bool,
    /// Exactly this V2 viz (repeatable). Refuses (exit 2) when an id is not in V2's documentInfo.
    #[arg(long, value_name = "ID")]
    viz: Vec<String>,
    /// Print the report as one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
// Not `#[group(id = "selection", args = [...])]`: in a struct without a flattened field, clap's
// derive also puts every other field into that group, so `--all --json` would conflict.
#[group(skip)]
#[command(group(
    clap::ArgGroup::new("selection")
        .required(true)
        .args(["from", "next_batch", "since_last", "all", "viz"])
))]
struct PlanArgs {
    /// Window start (inclusive): vizzes created, updated or upvoted in [FROM, TO). Unix seconds or RFC 3339.
    #[arg(long, requires = "to", value_parser = cli::parse_time)]
    from: Option<i64>,
    /// Window end (exclusive).
    #[arg(long, requires = "from", value_parser = cli::parse_time)]
    to: Option<i64>,
    /// The next N vizzes by creation after the previous --next-batch run.
    #[arg(long, value_name = "N")]
    next_batch: Option<u64>,
    /// Cron mode: from the last high-water mark (minus --overlap) to now (minus --settle), plus
    /// every migrated viz whose V2 inputs changed with no timestamp moving (privacy,
    /// collaborators, page views, a live content edit): a projected scan compared with the
    /// ledger. --dry-run lists them with the fields that moved.
    #[arg(long)]
    since_last: bool,
    /// Every viz (full catch-up or reconcile).
    #[arg(long)]
    all: bool,
    /// Exactly this V2 viz (repeatable), as a new batch even if an earlier batch covered it.
    /// Refuses (exit 2, nothing published) when an id is not in V2's documentInfo.
    #[arg(long, value_name = "ID")]
    viz: Vec<String>,
    /// Publish a new batch even if the same selection was published before (for a window, to
    /// re-migrate it); without it a selection already published publishes nothing.
    #[arg(long)]
    force: bool,
    /// Count only: publish nothing, record nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as one JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// --since-last: seconds re-planned before the high-water mark.
    #[arg(long, env = "PLAN_OVERLAP_SECS", default_value_t = 3600)]
    overlap: i64,
    /// --since-last: edits younger than this many seconds wait for the next run.
    #[arg(long, env = "PLAN_SETTLE_SECS", default_value_t = 300)]
    settle: i64,
}

#[derive(Args)]
struct StatusArgs {
    /// Print one JSON document on stdout (with --watch: one per refresh, one per line).
    #[arg(long)]
    json: bool,
    /// Refresh every SECS seconds (default 5) until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "5")]
    watch: Option<u64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(kind) = cli.generate.generate {
        return cli::generate_to_stdout::<Cli>(kind);
    }
    if let Err(e) = cli.log.init() {
        return cli::exit_code("planner", Err(e.into()));
    }
    cli::finish("planner", run(cli).await).await
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let Cli {
        mongo,
        broker: amqp,
        command,
        ..
    } = cli;
    let Some(command) = command else {
        cli::missing_subcommand::<Cli>()
    };
    match command {
        Command::Plan(a) => {
            let mut selection = match (a.from, a.to, a.next_batch, a.since_last) {
                _ if !a.viz.is_empty() => Selection::Vizzes(a.viz.clone()),
                (Some(from), Some(to), _, _) => Selection::Window { from, to },
                (_, _, Some(n), _) => Selection::NextBatch(n),
                (_, _, _, true) => Selection::SinceLast {
                    overlap_secs: a.overlap,
                    settle_secs: a.settle,
                },
                _ => Selection::All,
            };
            if a.force {
                selection = selection.forced();
            }
            let (v2_uri, v3_uri) = (mongo.v2_uri()?, mongo.v3_uri()?);
            let reader = Reader::new(
                cli::mongo(v2_uri, "vizhub-migrate-planner").await?,
                mongo.v2_reads_per_sec,
            );
            let ledger = Ledger::new(cli::mongo(v3_uri, "vizhub-migrate-planner").await?);
            let topology = Topology::new(&amqp.queue_prefix);
            let conn = if a.dry_run {
                None
            } else {
                Some(broker::connect(&amqp.amqp_uri).await?)
            };
            let publisher = match &conn {
                Some(c) => {
                    broker::declare(&c.create_channel().await?, &topology).await?;
                    Some(Publisher::new(c).await?)
                }
                None => None,
            };
            tracing::info!(amqp = %redact(&amqp.amqp_uri), ?selection, "planning");
            let report = match planner::plan(
                &reader,
                &ledger,
                publisher.as_ref(),
                &topology,
                &selection,
                a.dry_run,
            )
            .await
            {
                Err(e @ (PlanError::UnknownVizzes(_) | PlanError::NoVizzes)) => {
                    // Bad usage, not a failure to run: exit 2 like clap's own usage errors.
                    cli::report_error("planner", &e);
                    return Ok(ExitCode::from(cli::EXIT_USAGE));
                }
                r => r?,
            };
            if a.json {
                println!("{}", serde_json::to_string(&report)?);
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(d) = &report.detection {
                println!(
                    "change detection: {} V2 vizzes scanned, {} migrated compared, {} changed \
                     ({} outside the window) in {:.1}s, {} V2 queries",
                    d.scanned,
                    d.compared,
                    d.changes.len(),
                    d.added,
                    d.seconds,
                    d.v2_queries
                );
                // All of them in a dry run (the operator asked what and why); a sample otherwise.
                let shown = if report.dry_run { usize::MAX } else { 20 };
                for c in d.changes.iter().take(shown) {
                    println!("  {}: {}", c.viz, c.fields.join(", "));
                }
                if d.changes.len() > shown {
                    println!(
                        "  … {} more (--dry-run --json lists them all)",
                        d.changes.len() - shown
                    );
                }
            }
            if report.already_published {
                println!(
                    "batch {}: already published earlier ({} vizzes); nothing published",
                    report.batch, report.planned
                );
            } else if report.dry_run {
                println!(
                    "batch {}: {} vizzes would be planned (dry run)",
                    report.batch, report.planned
                );
            } else {
                println!(
                    "batch {}: planned {} vizzes, published {} jobs to {}",
                    report.batch,
                    report.planned,
                    report.published,
                    topology.work()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(a) => {
            let scope = match (a.from, a.to) {
                _ if !a.viz.is_empty() => Scope::Vizzes(a.viz.clone()),
                (Some(from), Some(to)) => Scope::Window { from, to },
                _ => Scope::All,
            };
            let (v2_uri, v3_uri) = (mongo.v2_uri()?, mongo.v3_uri()?);
            let v2 = Reader::new(
                cli::mongo(v2_uri, "vizhub-migrate-verify").await?,
                mongo.v2_reads_per_sec,
            );
            let v3 = cli::mongo(v3_uri, "vizhub-migrate-verify").await?;
            let m = Migrator::new(
                v2,
                Store::new(v3.clone()),
                Ledger::new(v3),
                a.translate.config(),
            );
            let bar = cli::progress_bar("verifying");
            let report = match verify::verify(&m, scope, |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .await
            {
                Err(e @ verify::VerifyError::UnknownVizzes(_)) => {
                    // Bad usage, as for `plan --viz`: exit 2.
                    bar.finish_and_clear();
                    eprintln!("planner: {e}");
                    return Ok(ExitCode::from(2));
                }
                r => r?,
            };
            bar.finish_and_clear();
            if a.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", report.render());
            }
            Ok(if !report.mismatches.is_empty() {
                ExitCode::from(3)
            } else if report.compared == 0 {
                cli::report_error(
                    "planner",
                    &"verify compared nothing: refusing to call that a pass",
                );
                ExitCode::from(4)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Report(a) => {
            let ledger = Ledger::new(cli::mongo(mongo.v3_uri()?, "vizhub-migrate-planner").await?);
            let filter = report::Filter {
                batch: a.batch,
                window: a.from.zip(a.to),
                outcomes: a.outcome,
            };
            let r = report::report(&ledger, filter).await?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else if a.csv {
                print!("{}", r.csv());
            } else {
                println!("{}", r.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(a) => {
            // About a dozen reads in all (listIndexes per collection, one explain per query):
            // a small fixed budget, well under any V2 read budget.
            let reader = Reader::new(
                cli::mongo(mongo.v2_uri()?, "vizhub-migrate-planner").await?,
                std::num::NonZeroU32::new(50).expect("non-zero"),
            );
            let c = preflight::check(&reader).await?;
            if a.json {
                println!("{}", serde_json::to_string(&c)?);
            } else {
                println!("{}", c.render());
            }
            Ok(ExitCode::from(if c.all_covered { 0 } else { 5 }))
        }
        Command::Status(a) => {
            let ledger = Ledger::new(cli::mongo(mongo.v3_uri()?, "vizhub-migrate-planner").await?);
            let conn = broker::connect(&amqp.amqp_uri).await?;
            let topology = Topology::new(&amqp.queue_prefix);
            let shutdown = cli::shutdown_signal();
            tokio::pin!(shutdown);
            loop {
                let s = status::collect(&ledger, &conn, &topology).await?;
                if a.json {
                    println!("{}", serde_json::to_string(&s)?);
                } else {
                    if a.watch.is_some() && std::io::stdout().is_terminal() {
                        print!("\x1b[2J\x1b[H"); // clear the screen, cursor home
                    }
                    print!("{}", s.render());
                }
                let Some(secs) = a.watch else { break };
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(secs.max(1))) => {}
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
