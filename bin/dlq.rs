//! `dlq`: inspect, export and requeue dead-lettered migration jobs.

use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;
use vizhub_migrate::broker::{self, Topology};
use vizhub_migrate::cli::{self, BrokerArgs, GenerateArgs, LogArgs};
use vizhub_migrate::dlq::{self, ExportTo, Filter};

#[derive(Parser)]
#[command(
    name = "dlq",
    override_usage = "dlq [OPTIONS] <COMMAND>",
    version,
    about = "Inspect and requeue dead-lettered VizHub migration jobs"
)]
struct Cli {
    // The common flags are global: before or after the subcommand.
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    generate: GenerateArgs,
    /// Optional for clap only, so that `--generate` needs none; `run` requires it.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// One line (or JSON entry) per dead letter; non-destructive.
    List {
        /// One JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Dead letters grouped by failure fingerprint.
    Stats {
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Move dead letters back to the work queue (publish with confirm, then ack).
    Requeue(RequeueArgs),
    /// Write every dead letter to a JSON file (replaced atomically), or to stdout; non-destructive.
    Export {
        /// The file to write, `-` for stdout.
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
    },
}

#[derive(Args)]
#[group(id = "which", required = true, multiple = false)]
struct RequeueArgs {
    /// Every dead letter.
    #[arg(long, group = "which")]
    all: bool,
    /// Only dead letters with this fingerprint (see `dlq stats`).
    #[arg(long, group = "which")]
    fingerprint: Option<String>,
    /// Only dead letters of this viz.
    #[arg(long, group = "which")]
    viz: Option<String>,
    /// Show how many would move; move nothing.
    #[arg(long)]
    dry_run: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(kind) = cli.generate.generate {
        return cli::generate_to_stdout::<Cli>(kind);
    }
    if let Err(e) = cli.log.init() {
        return cli::exit_code("dlq", Err(e.into()));
    }
    cli::finish("dlq", run(cli).await.map(|()| ExitCode::SUCCESS)).await
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Some(command) = cli.command else {
        cli::missing_subcommand::<Cli>()
    };
    let conn = broker::connect(&cli.broker.amqp_uri).await?;
    let t = Topology::new(&cli.broker.queue_prefix);
    broker::declare(&conn.create_channel().await?, &t).await?;
    match command {
        Command::List { json } => {
            let letters = dlq::list(&conn, &t).await?;
            if json {
                println!("{}", serde_json::to_string(&letters)?);
            } else {
                for l in &letters {
                    println!(
                        "{}  {:<18} attempts {:<2} {}  {}",
                        l.viz, l.error_kind, l.attempts, l.fingerprint, l.reason
                    );
                }
                println!("{} dead letters", letters.len());
            }
        }
        Command::Stats { json } => {
            let groups = dlq::stats(&dlq::list(&conn, &t).await?);
            if json {
                println!("{}", serde_json::to_string(&groups)?);
            } else {
                for g in &groups {
                    println!(
                        "{:>6}  {:<28} {:<18} {}",
                        g.count, g.fingerprint, g.error_kind, g.example
                    );
                }
            }
        }
        Command::Requeue(a) => {
            let filter = match (a.all, a.fingerprint, a.viz) {
                (_, Some(f), _) => Filter::Fingerprint(f),
                (_, _, Some(v)) => Filter::Viz(v),
                _ => Filter::All,
            };
            let n = dlq::requeue(&conn, &t, &filter, a.dry_run).await?;
            println!(
                "{} {n} dead letters to {}",
                if a.dry_run {
                    "would requeue"
                } else {
                    "requeued"
                },
                t.work()
            );
        }
        Command::Export { out } => {
            let letters = dlq::list(&conn, &t).await?;
            let to = ExportTo::from(out);
            dlq::export(&letters, &to)?;
            match to {
                // stdout holds the JSON document alone.
                ExportTo::Stdout => tracing::info!(count = letters.len(), "exported dead letters"),
                ExportTo::File(_) => println!("exported {} dead letters to {to}", letters.len()),
            }
        }
    }
    Ok(())
}
