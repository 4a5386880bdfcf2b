//! Command-line plumbing shared by the binaries: the connection arguments (flags with
//! environment fallbacks, spec 4.4), logging set-up (JSON in Kubernetes or when asked, readable on
//! a terminal), how a binary exits, time parsing (RFC 3339 or Unix seconds) and shutdown signals.

use crate::config::Endpoints;
use clap::{Args, ValueEnum};
use std::io::IsTerminal;
use std::process::ExitCode;

#[derive(Debug, Clone, Args)]
pub struct MongoArgs {
    /// V2 MongoDB URI; must name its database (read only).
    #[arg(long, env = "V2_MONGO_URI", hide_env_values = true)]
    pub v2_uri: String,
    /// V3 MongoDB URI; must name its database (also holds the ledger).
    #[arg(long, env = "V3_MONGO_URI", hide_env_values = true)]
    pub v3_uri: String,
    /// Per-process budget of V2 queries per second.
    #[arg(long, env = "V2_READS_PER_SEC", default_value_t = 200)]
    pub v2_reads_per_sec: u32,
}

#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// RabbitMQ URI.
    #[arg(
        long,
        env = "AMQP_URI",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_uri: String,
    /// Prefix of every queue name (several environments can share one broker).
    #[arg(long, env = "QUEUE_PREFIX", default_value = "vizhub-migrate")]
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
    /// JSON when running in Kubernetes or when stderr is not a terminal, text otherwise.
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,
}

impl LogArgs {
    /// Install the global subscriber. Logs go to stderr: stdout is for `--json` output.
    pub fn init(&self) {
        let json = match self.log_format {
            LogFormat::Json => true,
            LogFormat::Text => false,
            LogFormat::Auto => {
                std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
                    || !std::io::stderr().is_terminal()
            }
        };
        let filter = tracing_subscriber::EnvFilter::try_new(&self.log)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        let _ = if json {
            builder.json().try_init()
        } else {
            builder.try_init()
        };
    }
}

/// The exit code of a binary whose `run` returned `result`. An error is logged (for log
/// collectors) and printed once on stderr (for the operator at a terminal), and exits 1; codes
/// `run` chose itself (verify's mismatches, seed's refusal) pass through.
pub fn exit_code(bin: &str, result: Result<ExitCode, impl std::fmt::Display>) -> ExitCode {
    result.unwrap_or_else(|e| {
        // `{:#}` prints an `anyhow` error with its causes on one line.
        tracing::error!("{e:#}");
        eprintln!("{bin}: {e:#}");
        ExitCode::from(1)
    })
}

pub fn endpoints(m: &MongoArgs, b: &BrokerArgs) -> Endpoints {
    Endpoints {
        v2_uri: m.v2_uri.clone(),
        v3_uri: m.v3_uri.clone(),
        amqp_uri: b.amqp_uri.clone(),
        queue_prefix: b.queue_prefix.clone(),
    }
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
}
