//! `worker`: consumes migration jobs until stopped (or idle), or previews one viz.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use mongodb::Database;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use vizhub_migrate::broker::Topology;
use vizhub_migrate::cli::{self, BrokerArgs, GenerateArgs, LogArgs, MongoArgs, TranslateArgs};
use vizhub_migrate::ledger::Ledger;
use vizhub_migrate::metrics::{self, Metrics};
use vizhub_migrate::migrate::Migrator;
use vizhub_migrate::translate::Config;
use vizhub_migrate::v2::reader::Reader;
use vizhub_migrate::v3::store::Store;
use vizhub_migrate::worker::{self, Options, Stats};

/// Parsed by [`cli::parse_with_run_args`]: the [`RunArgs`] flags are refused with a subcommand,
/// the global ones (URIs, logging) are accepted before or after it.
#[derive(Parser)]
#[command(
    name = "worker",
    version,
    about = "Migrate VizHub V2 vizzes to V3, one job per viz from the work queue"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    generate: GenerateArgs,
    // Last: they set the help heading of what follows.
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    mongo: MongoArgs,
    #[command(flatten)]
    broker: BrokerArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print the V3 documents a job would write for one viz; writes nothing.
    Preview(PreviewArgs),
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    translate: TranslateArgs,
    /// Jobs in flight at once: waiting for their batch, migrating, or being acked or moved (also
    /// the per-consumer prefetch, so several batches run at once only within it). At least 1.
    #[arg(
        long,
        env = "WORKER_CONCURRENCY",
        value_name = "N",
        default_value_t = worker::DEFAULT_CONCURRENCY,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    concurrency: u16,
    /// Most jobs migrated together in one batch; the batch used is the smaller of this and
    /// --concurrency. At least 1 (1: every job runs alone).
    #[arg(
        long,
        env = "WORKER_BATCH_SIZE",
        value_name = "N",
        default_value_t = worker::DEFAULT_BATCH_SIZE,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    batch_size: u16,
    /// Milliseconds the first job waiting for a batch waits for it to fill before the batch runs
    /// with what it has (0: at once).
    #[arg(
        long,
        env = "WORKER_BATCH_WAIT_MS",
        value_name = "MS",
        default_value_t = worker::DEFAULT_BATCH_WAIT_MS
    )]
    batch_wait_ms: u64,
    /// Exit 0 once the work and retry queues were empty with nothing in flight for SECS.
    #[arg(long, value_name = "SECS")]
    until_idle: Option<u64>,
    /// On SIGTERM/SIGINT, seconds to let in-flight jobs finish before they are returned to the queue.
    #[arg(long, env = "DRAIN_DEADLINE_SECS", default_value_t = 25)]
    drain_deadline: u64,
    /// Where to serve /metrics (Prometheus), /healthz and /readyz; port 0 picks a free port (the
    /// bound address is logged as `metrics_addr`). If it cannot be bound (in use, not a local
    /// address, a privileged port), the worker exits 1 before consuming any job.
    #[arg(
        long,
        env = "METRICS_ADDR",
        value_name = "ADDR",
        default_value = "0.0.0.0:9090"
    )]
    metrics_addr: SocketAddr,
}

#[derive(Args)]
struct PreviewArgs {
    #[command(flatten)]
    translate: TranslateArgs,
    /// The viz id.
    viz: String,
    /// Print what a job would change against V3 now (per document: new, unchanged, or changed
    /// with the fields that differ) instead of the documents.
    #[arg(long)]
    diff: bool,
    /// With --diff: one JSON document on stdout.
    #[arg(long, requires = "diff")]
    json: bool,
}

/// The migrator, and the V3 database it writes (for `/readyz`).
async fn migrator(mongo: &MongoArgs, cfg: Config) -> anyhow::Result<(Migrator, Database)> {
    let (v2_uri, v3_uri) = (mongo.v2_uri()?, mongo.v3_uri()?);
    let v2 = Reader::new(
        cli::mongo(v2_uri, "vizhub-migrate-worker").await?,
        mongo.v2_reads_per_sec,
    );
    let v3 = cli::mongo(v3_uri, "vizhub-migrate-worker").await?;
    let m = Migrator::new(v2, Store::new(v3.clone()), Ledger::new(v3.clone()), cfg);
    Ok((m, v3))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = cli::parse_with_run_args::<Cli, RunArgs>();
    if let Some(kind) = cli.generate.generate {
        return cli::generate_to_stdout::<Cli>(kind);
    }
    if let Err(e) = cli.log.init() {
        return cli::exit_code("worker", Err(e.into()));
    }
    cli::finish("worker", run(cli).await.map(|()| ExitCode::SUCCESS)).await
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Preview(a)) => {
            let (m, _) = migrator(&cli.mongo, a.translate.config()).await?;
            if a.diff {
                let d = vizhub_migrate::preview::diff(&m, &a.viz).await?;
                if a.json {
                    println!("{}", serde_json::to_string(&d)?);
                } else {
                    println!("{}", d.render());
                }
                return Ok(());
            }
            let docs = m.preview(&a.viz).await?;
            println!("{}", serde_json::to_string_pretty(&docs)?);
            Ok(())
        }
        None => {
            let r = cli.run;
            let (m, v3) = migrator(&cli.mongo, r.translate.config()).await?;
            let opts = Options {
                concurrency: r.concurrency,
                batch_size: r.batch_size,
                batch_wait: Duration::from_millis(r.batch_wait_ms),
                until_idle: r.until_idle.map(Duration::from_secs),
                drain_deadline: Duration::from_secs(r.drain_deadline),
            };
            let stats = Arc::new(Stats::default());
            let endpoints = Arc::new(
                Metrics::new(stats.clone(), m.v2.clone(), v3)
                    .with_v3_writes(m.v3.write_times())
                    .with_v2_budget(cli.mongo.v2_reads_per_sec.get()),
            );
            // Probes first: building indexes on a large V3 can take longer than a liveness
            // probe waits. `/healthz` answers from now on; `/readyz` only once the worker
            // consumes, which is after the indexes exist. A worker that cannot serve them
            // stops here: unprobed and unscraped, it would run unseen (or be killed by its
            // liveness probe later, with a less clear reason).
            let server = metrics::Server::start(r.metrics_addr, endpoints)
                .await
                .with_context(|| {
                    format!(
                        "cannot serve /metrics, /healthz, /readyz on --metrics-addr {}",
                        r.metrics_addr
                    )
                })?;
            // A worker without the right to create indexes still works, only slower.
            if let Err(e) = m.v3.ensure_indexes().await {
                tracing::warn!(error = %e, "cannot create the V3 indexes the migration queries use");
            }
            let ran = worker::run(
                m,
                &cli.broker.amqp_uri,
                &Topology::new(&cli.broker.queue_prefix),
                &opts,
                stats,
                cli::shutdown_signal(),
            )
            .await;
            server.stop().await;
            Ok(ran?)
        }
    }
}
