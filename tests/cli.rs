//! The command-line conventions of the four binaries (issue 13, spec 4.4), run as an operator
//! runs them: common flags accepted before or after the subcommand, a missing URI named with its
//! flag and variable, an error printed once in the chosen log format, `--log-format auto` JSON
//! only in Kubernetes, an invalid log filter and seed's refusal with their own exit codes,
//! `dlq export` to stdout or atomically to a file, and completions and man pages generated from
//! the clap definitions. The tests that need services use their own databases and queue prefix.

mod common;
#[path = "common/env.rs"]
mod env;

use env::TestEnv;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Command, Output};
use vizhub_migrate::broker::{self, HeaderValue, Message};
use vizhub_migrate::job::headers;

/// Every variable the binaries read, so that a test sees only what it sets.
const ENV: &[&str] = &[
    "V2_MONGO_URI",
    "V3_MONGO_URI",
    "V2_READS_PER_SEC",
    "AMQP_URI",
    "QUEUE_PREFIX",
    "LOG_FORMAT",
    "RUST_LOG",
    "NO_COLOR",
    "KUBERNETES_SERVICE_HOST",
    "WORKER_CONCURRENCY",
    "WORKER_BATCH_SIZE",
    "WORKER_BATCH_WAIT_MS",
    "METRICS_ADDR",
];

/// A MongoDB URI that parses but names no database: a command that got it fails at once, before
/// any network, saying so; one that did not get it says the URI is missing.
const NO_DB: &str = "mongodb://127.0.0.1:1/";

fn bin(name: &str) -> Command {
    let exe = match name {
        "planner" => env!("CARGO_BIN_EXE_planner"),
        "worker" => env!("CARGO_BIN_EXE_worker"),
        "dlq" => env!("CARGO_BIN_EXE_dlq"),
        "seed" => env!("CARGO_BIN_EXE_seed"),
        _ => unreachable!("{name}"),
    };
    let mut c = Command::new(exe);
    for v in ENV {
        c.env_remove(v);
    }
    c
}

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(mut c: Command) -> Ran {
    let Output {
        status,
        stdout,
        stderr,
    } = c.output().expect("binary runs");
    Ran {
        code: status.code().expect("exited"),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn run_args(name: &str, args: &[&str]) -> Ran {
    let mut c = bin(name);
    c.args(args);
    run(c)
}

/// The non-empty lines of stderr.
fn lines(s: &str) -> Vec<&str> {
    s.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[test]
fn common_flags_are_accepted_before_and_after_the_subcommand() {
    let cases: &[(&str, &[&str])] = &[
        ("planner", &["plan", "--all"]),
        ("planner", &["verify", "--all"]),
        ("planner", &["status"]),
        ("worker", &["preview", "0123"]),
    ];
    for (name, sub) in cases {
        let flags = ["--v2-uri", NO_DB, "--v3-uri", NO_DB, "--log-format", "text"];
        let before = run_args(name, &[&flags[..], sub].concat());
        let after = run_args(name, &[sub, &flags[..]].concat());
        for (where_, r) in [("before", &before), ("after", &after)] {
            // Parsed (not clap's exit 2), and the value reached the command: it refuses a URI
            // without a database, which it could only have got from the flag.
            assert_eq!(r.code, 1, "{name} {sub:?}, flags {where_}: {}", r.stderr);
            assert!(
                r.stderr.contains("must name its database"),
                "{name} {sub:?}, flags {where_}: {}",
                r.stderr
            );
        }
    }
    // The worker's own run mode, and seed (no subcommand): the same flags, the same way.
    for (name, flags) in [
        ("worker", &["--v2-uri", NO_DB, "--v3-uri", NO_DB][..]),
        ("seed", &["--v2-uri", NO_DB][..]),
    ] {
        let r = run_args(name, flags);
        assert_eq!(r.code, 1, "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains("must name its database"),
            "{name}: {}",
            r.stderr
        );
    }
    // The environment fallbacks still work.
    let mut c = bin("planner");
    c.args(["status"]).env("V3_MONGO_URI", NO_DB);
    let r = run(c);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("must name its database"), "{}", r.stderr);
}

#[test]
fn a_missing_uri_is_a_usage_error_naming_its_flag_and_variable() {
    let cases: &[(&str, &[&str], &str, &str)] = &[
        ("planner", &["plan", "--all"], "--v2-uri", "V2_MONGO_URI"),
        ("planner", &["verify", "--all"], "--v2-uri", "V2_MONGO_URI"),
        ("planner", &["status"], "--v3-uri", "V3_MONGO_URI"),
        ("worker", &[], "--v2-uri", "V2_MONGO_URI"),
        ("worker", &["preview", "0123"], "--v2-uri", "V2_MONGO_URI"),
        ("seed", &[], "--v2-uri", "V2_MONGO_URI"),
    ];
    for (name, args, flag, var) in cases {
        let r = run_args(name, args);
        assert_eq!(r.code, 2, "{name} {args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(flag) && r.stderr.contains(var),
            "{name} {args:?} names {flag} and {var}: {}",
            r.stderr
        );
    }
    // V2 given, V3 missing: the message names what is still missing.
    let r = run_args("planner", &["plan", "--all", "--v2-uri", NO_DB]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("--v3-uri") && r.stderr.contains("V3_MONGO_URI"),
        "{}",
        r.stderr
    );
}

#[test]
fn an_error_is_printed_once_in_the_chosen_log_format() {
    // JSON: every stderr line is a JSON log record, and the error is one of them, once.
    let r = run_args("planner", &["--log-format", "json", "plan", "--all"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let records: Vec<Value> = lines(&r.stderr)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(records.len(), 1, "{}", r.stderr);
    assert_eq!(records[0]["level"], "ERROR", "{}", r.stderr);
    let msg = records[0]["fields"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("--v2-uri"), "{}", r.stderr);
    // Text: one readable line.
    let r = run_args("planner", &["--log-format", "text", "plan", "--all"]);
    let text = lines(&r.stderr);
    assert_eq!(text.len(), 1, "{}", r.stderr);
    assert!(
        text[0].contains("ERROR") && text[0].contains("--v2-uri"),
        "{}",
        r.stderr
    );
    // A filter that hides errors still leaves the operator one line saying why.
    let r = run_args("planner", &["--log", "off", "plan", "--all"]);
    assert_eq!(r.code, 2);
    assert_eq!(lines(&r.stderr).len(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("planner: ") && r.stderr.contains("--v2-uri"),
        "{}",
        r.stderr
    );
}

#[test]
fn an_invalid_log_filter_exits_2_naming_it() {
    for name in ["planner", "worker", "dlq", "seed"] {
        let sub: &[&str] = match name {
            "planner" => &["status"],
            "dlq" => &["stats"],
            _ => &[],
        };
        let mut c = bin(name);
        c.args(sub).env("RUST_LOG", "info,vizhub_migrate=loud");
        let r = run(c);
        assert_eq!(r.code, 2, "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains("RUST_LOG") && r.stderr.contains("vizhub_migrate=loud"),
            "{name}: {}",
            r.stderr
        );
        assert_eq!(lines(&r.stderr).len(), 1, "{name}: {}", r.stderr);
    }
    let r = run_args("dlq", &["stats", "--log", "warn,=x=y"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--log"), "{}", r.stderr);
}

#[test]
fn log_format_auto_is_json_only_in_kubernetes_and_never_coloured_off_a_terminal() {
    // stderr is a pipe here, as in a redirected quick start.
    let auto = |kubernetes: bool| {
        let mut c = bin("planner");
        c.args(["plan", "--all"]);
        if kubernetes {
            c.env("KUBERNETES_SERVICE_HOST", "1");
        }
        run(c)
    };
    let r = auto(false);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let line = lines(&r.stderr)[0];
    assert!(
        serde_json::from_str::<Value>(line).is_err() && line.contains("ERROR"),
        "text expected: {line}"
    );
    assert!(
        !r.stderr.contains('\x1b'),
        "no ANSI escapes off a terminal: {:?}",
        r.stderr
    );
    let r = auto(true);
    assert_eq!(r.code, 2, "{}", r.stderr);
    for line in lines(&r.stderr) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["level"], "ERROR");
    }
    // `text` asked for explicitly: no colour either.
    let r = run_args("planner", &["--log-format", "text", "status"]);
    assert!(!r.stderr.contains('\x1b'), "{:?}", r.stderr);
}

#[test]
fn the_workers_run_flags_are_refused_with_a_subcommand_but_not_from_the_environment() {
    let r = run_args("worker", &["--concurrency", "2", "preview", "0123"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("--concurrency") && r.stderr.contains("preview"),
        "{}",
        r.stderr
    );
    // A pod's WORKER_CONCURRENCY does not stop `worker preview` (it fails later, on the URI).
    let mut c = bin("worker");
    c.args(["preview", "0123", "--v2-uri", NO_DB, "--v3-uri", NO_DB])
        .env("WORKER_CONCURRENCY", "4");
    let r = run(c);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("must name its database"), "{}", r.stderr);
}

/// Secrets in a URI's query string (an AWS session token, a key file's password, an AMQP
/// `password` parameter) are redacted like the password before `@` in every error a binary
/// prints: here errors from URIs the driver refuses and a broker that does not answer, which
/// quote the URI, in both log formats.
#[test]
fn query_string_secrets_never_appear_in_errors() {
    const SECRETS: [&str; 4] = ["pw-s3cret", "tok-s3cret", "kp-s3cret", "q-s3cret"];
    let q = "authMechanismProperties=SERVICE_NAME:mongodb,AWS_SESSION_TOKEN:tok-s3cret\
             &tlsCertificateKeyFilePassword=kp-s3cret";
    let aws = format!("mongodb://AKIA:pw-s3cret@127.0.0.1:1/v3?authMechanism=MONGODB-AWS&{q}");
    let tls = format!("mongodb://u:pw-s3cret@127.0.0.1:1/v3?tls=true&{q}");
    let amqp = "amqp://guest:pw-s3cret@127.0.0.1:1/%2f?heartbeat=10&password=q-s3cret";
    for format in ["text", "json"] {
        let mut runs = Vec::new();
        for uri in [&aws, &tls] {
            let mut c = bin("planner");
            c.args(["--log-format", format, "status"])
                .env("V3_MONGO_URI", uri);
            runs.push(("planner status", run(c)));
        }
        let mut c = bin("dlq");
        c.args(["--log-format", format, "stats"])
            .env(
                "V3_MONGO_URI",
                "mongodb://127.0.0.1:1/v3?serverSelectionTimeoutMS=200",
            )
            .env("AMQP_URI", amqp);
        runs.push(("dlq stats", run(c)));
        for (what, r) in runs {
            let all = format!("{}{}", r.stdout, r.stderr);
            assert_ne!(r.code, 0, "{what} cannot succeed: {all}");
            assert!(
                all.contains("***"),
                "{what} ({format}) quotes the URI: {all}"
            );
            for secret in SECRETS {
                assert!(
                    !all.contains(secret),
                    "{what} ({format}) printed {secret}:\n{all}"
                );
            }
        }
    }
}

#[test]
fn a_subcommand_is_still_required() {
    for name in ["planner", "dlq"] {
        let r = run_args(name, &["--log-format", "text"]);
        assert_eq!(r.code, 2, "{name}: {}", r.stderr);
        assert!(r.stderr.contains("subcommand"), "{name}: {}", r.stderr);
    }
}

#[test]
fn completions_and_man_pages_come_from_the_clap_definitions() {
    let subcommands: &[(&str, &[&str])] = &[
        ("planner", &["plan", "status", "verify"]),
        // Options by their long name (fish spells them `-l concurrency`, roff `\-\-concurrency`).
        ("worker", &["preview", "concurrency"]),
        ("dlq", &["list", "stats", "requeue", "export"]),
        ("seed", &["synthetic", "rng-seed"]),
    ];
    for (name, names) in subcommands {
        for kind in [
            "complete-bash",
            "complete-zsh",
            "complete-fish",
            "complete-powershell",
            "complete-elvish",
            "man",
        ] {
            // The URIs and services are not needed for this, and the env is ignored.
            let mut c = bin(name);
            c.args(["--generate", kind]).env("V2_MONGO_URI", NO_DB);
            let r = run(c);
            assert_eq!(r.code, 0, "{name} {kind}: {}", r.stderr);
            assert!(r.stderr.is_empty(), "{name} {kind}: {}", r.stderr);
            assert!(r.stdout.contains(name), "{name} {kind} names the binary");
            for n in *names {
                // roff escapes `-` as `\-`.
                let in_man = n.replace('-', "\\-");
                assert!(
                    r.stdout.contains(n) || r.stdout.contains(&in_man),
                    "{name} {kind} names {n}:\n{}",
                    r.stdout
                );
            }
        }
        let man = run_args(name, &["--generate", "man"]).stdout;
        assert!(man.contains(".TH"), "{name}: a roff page");
    }
    // Hidden from --help: an operator's help stays about the migration.
    assert!(!run_args("planner", &["--help"])
        .stdout
        .contains("--generate"));
}

/// Publish one dead letter (as the worker leaves them) into the test's DLQ.
async fn dead_letter(env: &TestEnv, viz: &str) {
    let conn = broker::connect(&env.amqp_uri).await.unwrap();
    broker::declare(&conn.create_channel().await.unwrap(), &env.topology)
        .await
        .unwrap();
    let mut h = BTreeMap::new();
    for (k, v) in [
        (headers::VIZ, HeaderValue::Str(viz.into())),
        (headers::ERROR_KIND, HeaderValue::Str("invalid_v2".into())),
        (
            headers::ERROR_MESSAGE,
            HeaderValue::Str("no content".into()),
        ),
        (
            headers::FINGERPRINT,
            HeaderValue::Str("invalid_v2:no content".into()),
        ),
        (headers::ATTEMPTS, HeaderValue::Int(1)),
    ] {
        h.insert(k.to_string(), v);
    }
    broker::Publisher::new(&conn)
        .await
        .unwrap()
        .publish(
            &env.topology.dead(),
            Message {
                body: format!(r#"{{"viz":"{viz}"}}"#).into_bytes(),
                headers: h,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let _ = conn.close(200, "".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_export_writes_stdout_or_replaces_a_file_whole() {
    let env = TestEnv::new("cliexport").await;
    let viz = "00000000000000000000000000000abc";
    dead_letter(&env, viz).await;
    let prefix = env.topology.prefix.clone();
    let dlq = |args: Vec<String>| {
        let mut c = bin("dlq");
        c.args(args).env("AMQP_URI", &env.amqp_uri);
        tokio::task::spawn_blocking(move || run(c))
    };
    // `--out -`: the JSON document alone on stdout, with the prefix before or after the subcommand.
    for args in [
        vec!["--queue-prefix", &prefix, "export", "--out", "-"],
        vec!["export", "--out", "-", "--queue-prefix", &prefix],
    ] {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let r = dlq(args.clone()).await.unwrap();
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        let letters: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| {
            panic!("{args:?}: stdout is one JSON document ({e}): {}", r.stdout)
        });
        let letters = letters.as_array().expect("an array");
        assert_eq!(letters.len(), 1, "{}", r.stdout);
        assert_eq!(letters[0]["viz"], viz);
        assert_eq!(letters[0]["errorKind"], "invalid_v2");
    }
    // A file: an earlier export is replaced whole, and no temporary file is left beside it.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dead.json");
    std::fs::write(
        &out,
        "an earlier, longer export that must not leave a tail behind",
    )
    .unwrap();
    let args = vec![
        "export".to_string(),
        "--out".into(),
        out.display().to_string(),
        "--queue-prefix".into(),
        prefix.clone(),
    ];
    let r = dlq(args).await.unwrap();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("exported 1 dead letters"), "{}", r.stdout);
    let written: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(written[0]["viz"], viz);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("dead.json")]);
    // Into a directory that does not exist: an error, exit 1, nothing created.
    let missing = dir.path().join("no/such/dir/dead.json");
    let r = dlq(vec![
        "export".into(),
        "--out".into(),
        missing.display().to_string(),
        "--queue-prefix".into(),
        prefix.clone(),
    ])
    .await
    .unwrap();
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("writing the dead letters"),
        "{}",
        r.stderr
    );
    // Export is non-destructive.
    assert_eq!(env.queue_depth(&env.topology.dead()).await, 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_refuses_an_already_seeded_v2_with_exit_3() {
    let env = TestEnv::new("cliseed").await;
    env.load_fixtures(&[]).await;
    let mut c = bin("seed");
    c.args(["--synthetic", "5", "--log-format", "json"])
        .env("V2_MONGO_URI", env.v2_uri());
    let r = tokio::task::spawn_blocking(move || run(c)).await.unwrap();
    assert_eq!(r.code, 3, "{}", r.stderr);
    // Said once, as a JSON log record (nothing else on stderr), naming the way out.
    let records = lines(&r.stderr);
    assert_eq!(records.len(), 1, "{}", r.stderr);
    let v: Value = serde_json::from_str(records[0]).expect("a JSON log record");
    let msg = v["fields"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("already holds") && msg.contains("--force"),
        "{msg}"
    );
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    // Documented where operators look.
    let help = run_args("seed", &["--help"]).stdout;
    assert!(help.contains("3 V2 already holds vizzes"), "{help}");
    // cleanup checks V2 is byte-identical to what the test loaded: seed wrote nothing.
    env.cleanup().await;
}
