//! Command-line plumbing shared by the binaries: the common flags (global, so accepted before or
//! after a subcommand, each with its environment fallback, spec 4.4), their validation into the
//! values a command needs (clap cannot require a global flag, so a missing URI is reported here,
//! naming the flag and its variable), logging set-up (JSON in Kubernetes or when asked, readable
//! text otherwise, colour only on a terminal), how a binary reports an error and exits, shell
//! completions and man pages, atomic file output, time parsing and shutdown signals.

use crate::config::Endpoints;
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, Parser, ValueEnum};
use std::io::{IsTerminal, Write};
use std::num::NonZeroU32;
use std::path::Path;
use std::process::ExitCode;

/// Exit code of a usage error: clap's own, a missing required URI, an invalid `--log`.
pub const EXIT_USAGE: u8 = 2;

/// A command line that parsed but cannot run as given. Exits [`EXIT_USAGE`], like clap's errors.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("{what} is required: give {flag} or set {env}")]
    Missing {
        what: &'static str,
        flag: &'static str,
        env: &'static str,
    },
    #[error("invalid log filter {value:?} (--log or RUST_LOG): {reason}")]
    LogFilter { value: String, reason: String },
}

/// A flag clap leaves optional (it is global) that the running command needs.
pub fn require<'a>(
    value: Option<&'a str>,
    what: &'static str,
    flag: &'static str,
    env: &'static str,
) -> Result<&'a str, UsageError> {
    value.ok_or(UsageError::Missing { what, flag, env })
}

/// The two MongoDB databases. Global: `planner --v2-uri U plan …` and `planner plan --v2-uri U …`
/// mean the same. Optional here; [`MongoArgs::v2_uri`] and [`MongoArgs::v3_uri`] say which
/// commands need them.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connections")]
pub struct MongoArgs {
    /// V2 MongoDB URI; must name its database (read only). Required by commands that read V2.
    #[arg(long, global = true, env = "V2_MONGO_URI", hide_env_values = true)]
    pub v2_uri: Option<String>,
    /// V3 MongoDB URI; must name its database (also holds the ledger). Required by commands that
    /// read or write V3.
    #[arg(long, global = true, env = "V3_MONGO_URI", hide_env_values = true)]
    pub v3_uri: Option<String>,
    /// Per-process budget of V2 queries per second.
    #[arg(long, global = true, env = "V2_READS_PER_SEC", default_value = "200")]
    pub v2_reads_per_sec: NonZeroU32,
}

impl MongoArgs {
    pub fn v2_uri(&self) -> Result<&str, UsageError> {
        require(
            self.v2_uri.as_deref(),
            "the V2 MongoDB URI",
            "--v2-uri",
            "V2_MONGO_URI",
        )
    }

    pub fn v3_uri(&self) -> Result<&str, UsageError> {
        require(
            self.v3_uri.as_deref(),
            "the V3 MongoDB URI",
            "--v3-uri",
            "V3_MONGO_URI",
        )
    }
}

/// The broker. Global, like [`MongoArgs`]; both have defaults, so nothing to validate.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connections")]
pub struct BrokerArgs {
    /// RabbitMQ URI.
    #[arg(
        long,
        global = true,
        env = "AMQP_URI",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_uri: String,
    /// Prefix of every queue name (several environments can share one broker).
    #[arg(
        long,
        global = true,
        env = "QUEUE_PREFIX",
        default_value = "vizhub-migrate"
    )]
    pub queue_prefix: String,
}

/// Translation settings; the worker and `planner verify` must agree on them.
#[derive(Debug, Clone, Args)]
pub struct TranslateArgs {
    /// Idle gap that separates two commits of the rebuilt history, in minutes.
    #[arg(long, env = "SESSION_GAP_MINS", default_value_t = 15)]
    pub session_gap_mins: i64,
    /// Content size limit without bundle.js, in bytes (larger vizzes are dead-lettered).
    #[arg(long, env = "MAX_CONTENT_BYTES", default_value_t = 5 * 1024 * 1024)]
    pub max_content_bytes: usize,
}

impl TranslateArgs {
    pub fn config(&self) -> crate::translate::Config {
        crate::translate::Config {
            session_gap_secs: self.session_gap_mins * 60,
            max_content_bytes: self.max_content_bytes,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// JSON in Kubernetes (KUBERNETES_SERVICE_HOST is set), text otherwise.
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log format (logs go to stderr).
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
    /// Log filter, tracing `EnvFilter` syntax (`info`, `warn,vizhub_migrate=debug`); an invalid
    /// one is a usage error.
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    pub log: String,
}

impl LogArgs {
    /// Whether logs are JSON: asked for, or `auto` inside Kubernetes, where a log collector reads
    /// them. Anywhere else (a terminal, a redirected quick start, CI) `auto` is text.
    pub fn json(&self) -> bool {
        match self.log_format {
            LogFormat::Json => true,
            LogFormat::Text => false,
            LogFormat::Auto => {
                std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty())
            }
        }
    }

    /// Install the global subscriber. Logs go to stderr: stdout is for `--json` output. Colour
    /// only when stderr is a terminal and `NO_COLOR` is unset, so files and pipes stay plain.
    pub fn init(&self) -> Result<(), UsageError> {
        let filter = tracing_subscriber::EnvFilter::try_new(&self.log).map_err(|e| {
            UsageError::LogFilter {
                value: self.log.clone(),
                reason: e.to_string(),
            }
        })?;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        let _ = if self.json() {
            builder.json().try_init()
        } else {
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).try_init()
        };
        Ok(())
    }
}

/// Report an error once: through the log subscriber when it shows errors (so JSON logs stay
/// JSON), otherwise (before logging is set up, or a filter that hides errors) as one line on
/// stderr, so an operator always learns why a command failed.
pub fn report_error(bin: &str, message: &dyn std::fmt::Display) {
    if tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!("{message}");
    } else {
        eprintln!("{bin}: {message}");
    }
}

/// [`report_error`] for a warning (a refusal that is not a failure to run).
pub fn report_warning(bin: &str, message: &dyn std::fmt::Display) {
    if tracing::enabled!(tracing::Level::WARN) {
        tracing::warn!("{message}");
    } else {
        eprintln!("{bin}: {message}");
    }
}

/// The exit code of a binary whose `run` returned `result`. An error is reported once (see
/// [`report_error`]) and exits 1, or [`EXIT_USAGE`] for a [`UsageError`]; codes `run` chose
/// itself (verify's mismatches, seed's refusal) pass through.
pub fn exit_code(bin: &str, result: anyhow::Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|e| {
        // `{:#}` prints an `anyhow` error with its causes on one line.
        report_error(bin, &format_args!("{e:#}"));
        if e.chain().any(|c| c.is::<UsageError>()) {
            ExitCode::from(EXIT_USAGE)
        } else {
            ExitCode::from(1)
        }
    })
}

/// Validated endpoints for a command that needs all of them.
pub fn endpoints(m: &MongoArgs, b: &BrokerArgs) -> Result<Endpoints, UsageError> {
    Ok(Endpoints {
        v2_uri: m.v2_uri()?.to_string(),
        v3_uri: m.v3_uri()?.to_string(),
        amqp_uri: b.amqp_uri.clone(),
        queue_prefix: b.queue_prefix.clone(),
    })
}

/// What `--generate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Generate {
    CompleteBash,
    CompleteZsh,
    CompleteFish,
    CompletePowershell,
    CompleteElvish,
    /// A roff man page (`man -l -`).
    Man,
}

/// The hidden `--generate KIND` flag every binary has (as ripgrep's): completions and man page
/// come from the clap definitions, so they never drift from `--help`.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Print a shell completion script or the man page on stdout, and exit.
    #[arg(long, value_enum, value_name = "KIND", hide = true)]
    pub generate: Option<Generate>,
}

/// Write `kind` for the command line `cmd` to `out`.
pub fn generate(
    kind: Generate,
    mut cmd: clap::Command,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    use clap_complete::Shell;
    let shell = match kind {
        Generate::Man => return clap_mangen::Man::new(cmd).render(out),
        Generate::CompleteBash => Shell::Bash,
        Generate::CompleteZsh => Shell::Zsh,
        Generate::CompleteFish => Shell::Fish,
        Generate::CompletePowershell => Shell::PowerShell,
        Generate::CompleteElvish => Shell::Elvish,
    };
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
    Ok(())
}

/// `--generate` for binary `C`: print on stdout, exit 0 (1 if stdout cannot be written).
pub fn generate_to_stdout<C: CommandFactory>(kind: Generate) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match generate(kind, C::command(), &mut out).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // `… --generate man | head`: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: writing to stdout: {e}", C::command().get_name());
            ExitCode::from(1)
        }
    }
}

/// A binary whose subcommand is optional at the clap layer (so that `--generate` needs none)
/// was run without one: clap's usage error, exit 2.
pub fn missing_subcommand<C: CommandFactory>() -> ! {
    let mut cmd = C::command();
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    cmd.error(
        clap::error::ErrorKind::MissingSubcommand,
        format!("a subcommand is required: one of {}", names.join(", ")),
    )
    .exit()
}

/// Parse `C`, whose top-level arguments `R` (the worker's run flags) only apply when no
/// subcommand is given. Global flags (URIs, logging) are fine anywhere, which rules out clap's
/// `args_conflicts_with_subcommands` (it counts them too); so an `R` flag given on the command line
/// with a subcommand is refused here, with clap's conflict error (exit 2). Environment values
/// do not count: a pod's `WORKER_CONCURRENCY` must not break `worker preview`.
pub fn parse_with_run_args<C: Parser, R: Args>() -> C {
    let mut cmd = C::command();
    let matches = cmd.get_matches_mut();
    if let Some((sub, _)) = matches.subcommand() {
        let run = R::augment_args(clap::Command::new("run"));
        for arg in run.get_arguments() {
            let id = arg.get_id().as_str();
            if matches.value_source(id) == Some(ValueSource::CommandLine) {
                let flag = arg
                    .get_long()
                    .map_or_else(|| id.to_string(), |l| format!("--{l}"));
                cmd.error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!("the argument '{flag}' cannot be used with the '{sub}' subcommand"),
                )
                .exit();
            }
        }
    }
    C::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut cmd).exit())
}

/// Write `bytes` to `path` atomically: a temporary file in the same directory, flushed to disk,
/// then renamed over `path` (and the directory synced), so a reader or a crash sees the old file
/// or the whole new one, never half of it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: not a file name", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(
        ".{}.{}-{nanos}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    // The rename itself is durable once the directory is; not every platform can open one.
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// The MongoDB clients this process opened through [`mongo`], shut down by [`close_mongo`].
static MONGO_CLIENTS: std::sync::Mutex<Vec<mongodb::Client>> = std::sync::Mutex::new(Vec::new());

/// A binary's MongoDB database (see [`crate::config::mongo_database`]), its client remembered so
/// that [`close_mongo`] can shut it down before the runtime stops.
pub async fn mongo(uri: &str, app_name: &str) -> anyhow::Result<mongodb::Database> {
    let db = crate::config::mongo_database(uri, app_name).await?;
    MONGO_CLIENTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(db.client().clone());
    Ok(db)
}

/// Shut down every client [`mongo`] opened. Called by [`finish`] after a binary's work, before
/// `main` returns: left to the runtime's teardown, the driver's background tasks race it and
/// can panic (`SendError` in `connection_requester`, a backtrace on stderr after a command that
/// succeeded; mongo-rust-driver issues 674, 847). Immediate (nothing of ours is pending by then)
/// and bounded, so a stuck server never holds up an exit.
async fn close_mongo() {
    let clients = std::mem::take(
        &mut *MONGO_CLIENTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for client in clients {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::IntoFuture::into_future(client.shutdown().immediate(true)),
        )
        .await;
    }
}

/// How a binary ends once its `run` returned `result`: the MongoDB clients it opened are shut
/// down first ([`close_mongo`]), then the exit code is decided and any error reported once
/// ([`exit_code`]). Every binary's `main` ends here, so none can forget the shutdown.
pub async fn finish(bin: &str, result: anyhow::Result<ExitCode>) -> ExitCode {
    close_mongo().await;
    exit_code(bin, result)
}

/// Parse a time given as Unix seconds or RFC 3339 (`2019-01-01T00:00:00Z`).
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(n) = s.trim().parse::<i64>() {
        return Ok(n);
    }
    mongodb::bson::DateTime::parse_rfc3339_str(s.trim())
        .map(|d| d.timestamp_millis().div_euclid(1000))
        .map_err(|_| format!("{s:?} is neither Unix seconds nor an RFC 3339 time"))
}

/// A progress bar on stderr when stderr is a terminal; hidden otherwise (logs say enough there).
pub fn progress_bar(what: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("1534246611"), Ok(1534246611));
        assert_eq!(parse_time("2018-08-14T11:36:51Z"), Ok(1534246611));
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn a_missing_flag_names_flag_and_variable_and_is_a_usage_error() {
        let m = MongoArgs {
            v2_uri: Some("mongodb://h/v2".into()),
            v3_uri: None,
            v2_reads_per_sec: NonZeroU32::new(1).unwrap(),
        };
        assert_eq!(m.v2_uri().unwrap(), "mongodb://h/v2");
        let e = m.v3_uri().unwrap_err();
        assert_eq!(
            e.to_string(),
            "the V3 MongoDB URI is required: give --v3-uri or set V3_MONGO_URI"
        );
        assert_eq!(
            exit_code("test", Err(anyhow::Error::from(e).context("planning"))),
            ExitCode::from(EXIT_USAGE)
        );
        assert_eq!(
            exit_code("test", Err(anyhow::anyhow!("unreachable"))),
            ExitCode::from(1)
        );
    }

    #[test]
    fn an_invalid_log_filter_is_refused() {
        let log = |f: &str| LogArgs {
            log_format: LogFormat::Text,
            log: f.into(),
        };
        assert!(matches!(
            log("info,x=loud").init(),
            Err(UsageError::LogFilter { .. })
        ));
    }

    #[test]
    fn atomic_writes_replace_whole_files_and_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        std::fs::write(&path, "an older and much longer content").unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.json")]);
        // A directory that does not exist: an error, and nothing created.
        let missing = dir.path().join("no/such/out.json");
        assert!(write_atomically(&missing, b"x").is_err());
        assert!(!dir.path().join("no").exists());
        // A path that names no file.
        assert!(write_atomically(Path::new("/"), b"x").is_err());
    }
}
