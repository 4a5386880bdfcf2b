#!/usr/bin/env bash
# scripts/quickstart's failure paths, run against stand-in binaries (scripts/test runs this):
#   1. a worker exiting non-zero stops the run: quickstart names the worker, its exit code and
#      the last 30 lines of its log, stops the other worker and exits non-zero;
#   2. seed's exit 3 ("already seeded") continues; exit 2 (usage error) and any other non-zero
#      exit stop quickstart with a message and a non-zero exit, before planning;
#   3. the happy path reaches the end (exit 0).
#
# A fake `cargo` first in PATH skips the release build; CARGO_TARGET_DIR points at a temp dir
# whose release/ holds stub `seed`, `planner` and `worker` scripts steered by STUB_* variables.
# The two SecantusDB servers quickstart starts are real (scripts/services, venv target/venv),
# on ports of their own (QUICKSTART_TEST_V2_PORT / QUICKSTART_TEST_V3_PORT, default 27431 /
# 27432) with their state in the temp dir; they are started once, shared by the cases, and
# stopped on exit whatever happens. RabbitMQ must be up (scripts/test starts it; quickstart
# only checks that the port answers, the stubs never connect).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/test_quickstart.XXXXXX")"
export QUICKSTART_DIR="$TMP/qs"
export QUICKSTART_V2_PORT="${QUICKSTART_TEST_V2_PORT:-27431}"
export QUICKSTART_V3_PORT="${QUICKSTART_TEST_V3_PORT:-27432}"
export QUICKSTART_VIZZES=5
export QUEUE_PREFIX="vizhub-quickstart-test-$$"
export SECANTUS_STORAGE=":memory:"
export CARGO_TARGET_DIR="$TMP/target"
export STUB_CALLS="$TMP/calls"
unset V2_MONGO_URI V3_MONGO_URI MONGO_URI

cleanup() {
  local rc=$?
  "$REPO/scripts/quickstart" stop >/dev/null 2>&1 || echo "test_quickstart: warning: 'scripts/quickstart stop' failed" >&2
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- stand-ins ---------------------------------------------------------------------------
mkdir -p "$TMP/bin" "$CARGO_TARGET_DIR/release"

cat >"$TMP/bin/cargo" <<'EOF'
#!/usr/bin/env bash
# fake cargo: answers preflight's version check; a build does nothing
if [[ "${1:-}" == "--version" ]]; then echo "cargo 999.0.0 (quickstart test stub)"; exit 0; fi
echo "cargo $*" >>"$STUB_CALLS"
exit 0
EOF

cat >"$CARGO_TARGET_DIR/release/seed" <<'EOF'
#!/usr/bin/env bash
echo "seed $*" >>"$STUB_CALLS"
echo "stub seed: V2 at ${V2_MONGO_URI:-unset}"
exit "${STUB_SEED_RC:-0}"
EOF

cat >"$CARGO_TARGET_DIR/release/planner" <<'EOF'
#!/usr/bin/env bash
echo "planner $*" >>"$STUB_CALLS"
case "$*" in
  "plan --all") echo "planned 5 vizzes" ;;
  "status --json") echo '{"outcomes": {"migrated": 5}, "inFlight": 0, "ratePerMin": 0}' ;;
  status) echo "batch 1: migrated 5" ;;
  "verify --all") echo "verified 5 vizzes, 0 mismatches" ;;
  *) echo "stub planner: unexpected arguments: $*" >&2; exit 2 ;;
esac
EOF

# The worker's stderr is quickstart's worker-<n>.log: its name says which worker this is.
# STUB_WORKER_FAIL=<n>: worker n writes 40 numbered log lines and exits STUB_WORKER_RC; the
# other one then runs until stopped (records a SIGTERM in $STUB_CALLS).
cat >"$CARGO_TARGET_DIR/release/worker" <<'EOF'
#!/usr/bin/env bash
log="$(readlink "/proc/$$/fd/2")"
n="${log##*/worker-}"
n="${n%.log}"
echo "worker $n $*" >>"$STUB_CALLS"
if [[ -z "${STUB_WORKER_FAIL:-}" ]]; then exit 0; fi
if [[ "$n" == "$STUB_WORKER_FAIL" ]]; then
  for i in $(seq -w 1 40); do echo "stub worker $n log line $i" >&2; done
  exit "${STUB_WORKER_RC:-1}"
fi
trap 'kill "$sleeper" 2>/dev/null; echo "worker $n got SIGTERM" >>"$STUB_CALLS"; exit 143' TERM
sleep 60 &
sleeper=$!
wait "$sleeper"
EOF
chmod +x "$TMP/bin/cargo" "$CARGO_TARGET_DIR/release/"*
export PATH="$TMP/bin:$PATH"

# ---- cases -------------------------------------------------------------------------------
failures=0
OUT="$TMP/out"
RC=0

run() { # $@ = VAR=value... for this run of quickstart
  : >"$STUB_CALLS"
  rm -f "$QUICKSTART_DIR"/worker-*.log
  RC=0
  env "$@" "$REPO/scripts/quickstart" >"$OUT" 2>&1 || RC=$?
}
fail() {
  echo "FAIL [$case]: $*" >&2
  failures=$((failures + 1))
}
expect_rc() { # $1 = "0" or "nonzero"
  if [[ "$1" == 0 ]]; then ((RC == 0)) || fail "exit $RC, expected 0"; else ((RC != 0)) || fail "exit 0, expected non-zero"; fi
}
expect_out() { grep -qF -- "$1" "$OUT" || fail "output lacks: $1"; }
expect_out_line() { grep -qxF -- "$1" "$OUT" || fail "output lacks the line: $1"; }
expect_no_out_line() { ! grep -qxF -- "$1" "$OUT" || fail "output has the line: $1"; }
expect_call() { grep -qxF -- "$1" "$STUB_CALLS" || fail "no call: $1"; }
expect_no_call() { ! grep -qF -- "$1" "$STUB_CALLS" || fail "unexpected call: $1"; }
done_case() {
  if ((failures == failures_before)); then
    echo "ok   $case"
  else
    echo "---- quickstart's output ($case, exit $RC) ----" >&2
    cat "$OUT" >&2
    echo "---- stub calls ----" >&2
    cat "$STUB_CALLS" >&2
    echo "----" >&2
  fi
}
start_case() {
  case="$1"
  failures_before=$failures
}

start_case "happy path reaches the end (exit 0)"
run
expect_rc 0
expect_call "cargo build --release --locked --bins"
expect_call "seed --synthetic 5"
expect_call "planner plan --all"
expect_call "worker 1 --concurrency 8 --until-idle 5 --metrics-addr 127.0.0.1:0"
expect_call "worker 2 --concurrency 8 --until-idle 5 --metrics-addr 127.0.0.1:0"
expect_call "planner verify --all"
expect_out "verified 5 vizzes, 0 mismatches"
expect_out "V2 (SecantusDB)  mongodb://127.0.0.1:$QUICKSTART_V2_PORT/vizhub2"
expect_out "V3 (SecantusDB)  mongodb://127.0.0.1:$QUICKSTART_V3_PORT/vizhub3"
expect_out "Stop:  scripts/quickstart stop"
done_case

start_case "seed exit 3 (already seeded) continues"
run STUB_SEED_RC=3
expect_rc 0
expect_out "V2 already holds data from an earlier run: kept as it is"
expect_call "planner plan --all"
expect_call "planner verify --all"
expect_out "Stop:  scripts/quickstart stop"
done_case

start_case "seed exit 2 (usage error) stops the run"
run STUB_SEED_RC=2
expect_rc nonzero
expect_out "quickstart: error: seed rejected its command line (exit 2, usage error"
expect_no_call "planner"
expect_no_call "worker"
done_case

start_case "seed exit 5 stops the run"
run STUB_SEED_RC=5
expect_rc nonzero
expect_out "quickstart: error: seeding V2 failed (seed exited 5"
expect_no_call "planner"
expect_no_call "worker"
done_case

start_case "a worker exiting non-zero stops the run, named, with its code and log tail"
run STUB_WORKER_FAIL=2 STUB_WORKER_RC=7
expect_rc nonzero
expect_out "quickstart: error: worker 2 (pid "
expect_out ") exited with code 7; last lines of $QUICKSTART_DIR/worker-2.log:"
expect_out_line "    stub worker 2 log line 11" # the last 30 of 40 lines
expect_out_line "    stub worker 2 log line 40"
expect_no_out_line "    stub worker 2 log line 10"
expect_call "worker 1 got SIGTERM" # the other worker is stopped, not waited for
expect_no_call "planner verify"
expect_no_call "planner status"
[[ -f "$QUICKSTART_DIR/worker-2.log" ]] || fail "worker-2.log was not kept"
done_case

if ((failures)); then
  echo "test_quickstart: $failures check(s) failed" >&2
  exit 1
fi
echo "test_quickstart: all cases passed"
