# shellcheck shell=bash
# Up-front toolchain checks shared by scripts/test, scripts/quickstart, scripts/bench and
# scripts/services (sourced, not run). Each missing or too old tool gets one message naming the
# version needed and how to get it, all of them before the script stops, so a fresh machine
# learns everything it lacks in one run instead of one tool per attempt.
#
#   source "$REPO/scripts/lib/preflight.sh"
#   preflight rust node python     # exit 1 after listing every failed check
#
# Checks: rust (rustc and cargo >= rust-version in Cargo.toml), rust-lint (rustfmt and clippy),
# node (node >= the highest `engines.node` in tests/js/package-lock.json, and npm), python
# (python3 >= what SecantusDB needs, with the venv module). `PYTHON` names the interpreter
# (default python3).

PREFLIGHT_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# SecantusDB 0.7.0b3 (pinned in scripts/services) declares Requires-Python >= 3.10.
PREFLIGHT_PYTHON_MIN="3.10"

preflight_msg() { echo "preflight: $*" >&2; }

# version_ge A B: A >= B, comparing dotted numbers (1.89 < 1.90.0 < 1.100).
version_ge() {
  [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" == "$2" ]]
}

# The numeric x.y[.z] at the start of "$1", ignoring a leading v and any -nightly/-beta suffix.
version_of() {
  sed -E 's/^v//; s/^([0-9]+(\.[0-9]+)*).*/\1/' <<<"$1"
}

# rust-version from Cargo.toml's [package]: the MSRV the locked crates actually need.
rust_min_version() {
  sed -nE 's/^rust-version[[:space:]]*=[[:space:]]*"([^"]+)".*/\1/p' "$PREFLIGHT_REPO/Cargo.toml" | head -n 1
}

# Highest `"node": ">=X"` among the locked npm packages (tests/js), else 20.19.0.
node_min_version() {
  local v
  v="$(sed -nE 's/.*"node":[[:space:]]*">=[[:space:]]*([0-9.]+)".*/\1/p' \
    "$PREFLIGHT_REPO/tests/js/package-lock.json" 2>/dev/null | sort -V | tail -n 1)"
  echo "${v:-20.19.0}"
}

preflight_rust() {
  local min ok=0 tool v
  min="$(rust_min_version)"
  [[ -n "$min" ]] || min="1.89"
  for tool in rustc cargo; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      preflight_msg "$tool not found: install Rust >= $min (https://rustup.rs, then: rustup toolchain install stable)"
      ok=1
      continue
    fi
    v="$(version_of "$("$tool" --version 2>/dev/null | awk '{print $2}')")"
    if [[ -z "$v" ]] || ! version_ge "$v" "$min"; then
      preflight_msg "$tool ${v:-(unknown version)} is older than $min, the rust-version in Cargo.toml that the locked crates need: rustup update stable"
      ok=1
    fi
  done
  return "$ok"
}

preflight_rust_lint() {
  local ok=0
  command -v cargo >/dev/null 2>&1 || return 0 # preflight_rust said it
  cargo fmt --version >/dev/null 2>&1 || {
    preflight_msg "rustfmt not installed (scripts/test runs cargo fmt --check): rustup component add rustfmt"
    ok=1
  }
  cargo clippy --version >/dev/null 2>&1 || {
    preflight_msg "clippy not installed (scripts/test runs cargo clippy): rustup component add clippy"
    ok=1
  }
  return "$ok"
}

preflight_node() {
  local min v ok=0
  min="$(node_min_version)"
  if ! command -v node >/dev/null 2>&1; then
    preflight_msg "node not found: install Node.js >= $min (the V3 conformance tests run the npm packages locked in tests/js/package-lock.json)"
    ok=1
  else
    v="$(version_of "$(node --version 2>/dev/null)")"
    if [[ -z "$v" ]] || ! version_ge "$v" "$min"; then
      preflight_msg "node ${v:-(unknown version)} is older than $min, which the packages locked in tests/js/package-lock.json need: install Node.js >= $min (e.g. Node 22 LTS)"
      ok=1
    fi
  fi
  command -v npm >/dev/null 2>&1 || {
    preflight_msg "npm not found: install npm with Node.js >= $min (Debian: apt-get install npm)"
    ok=1
  }
  return "$ok"
}

preflight_python() {
  local py="${PYTHON:-python3}" v
  if ! command -v "$py" >/dev/null 2>&1; then
    preflight_msg "$py not found: install Python >= $PREFLIGHT_PYTHON_MIN with its venv module (Debian: apt-get install python3 python3-venv)"
    return 1
  fi
  v="$("$py" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null || true)"
  if [[ -z "$v" ]] || ! version_ge "$v" "$PREFLIGHT_PYTHON_MIN"; then
    preflight_msg "$py is ${v:-unusable}; SecantusDB needs Python >= $PREFLIGHT_PYTHON_MIN (set PYTHON=/path/to/python3.X to use another)"
    return 1
  fi
  # Debian and Ubuntu ship `venv` without `ensurepip` (python3-venv), so `python3 -m venv` fails
  # there until that package is installed; test both, as `python3 -m venv` needs both.
  if ! "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    preflight_msg "$py ($v) cannot create a virtual environment (python3 -m venv: module venv or ensurepip missing); Debian/Ubuntu: apt-get install python3-venv"
    return 1
  fi
  return 0
}

# preflight CHECK...: run every check, then exit 1 if any failed.
preflight() {
  local check failed=0
  for check in "$@"; do
    "preflight_${check//-/_}" || failed=1
  done
  if ((failed)); then
    preflight_msg "fix the above and run again"
    exit 1
  fi
}
