#!/usr/bin/env python3
"""Checks the deployment files: Dockerfile, docker-compose.yml and everything under k8s/.

Run by scripts/validate-deploy (which sets up the pinned virtualenv, runs `docker-compose config`,
this file's unit tests and pyflakes first), so CI runs it too:

    validate_deploy.py --root DIR [--kubernetes-validate BIN] [--k8s-versions "1.30.0 1.37.0"]
                       [--not-in-kustomization "secret.example.yaml ..."]

Every problem is reported as `validate-deploy: FAIL <file>: <what is wrong>`; exit 1 if any.
What it checks, beyond "it parses":
  - Dockerfile: every base image pinned by digest, builder and runtime on the same Debian
    release, cargo-chef pinned, stripped release binaries, non-root USER 10001, EXPOSE 9090,
    CMD ["worker"] without ENTRYPOINT; the production image (the last stage) built with
    `--no-default-features`, its list of binaries = Cargo.toml's [[bin]]s without
    required-features, and not derived from the `dev` stage; the `dev` stage (development image)
    adds the others (`seed`: feature `dev-data`);
  - docker-compose.yml: the services the spec and docs/runbook.md#packaging-and-deployment-files
    rely on, commands naming real binaries, a service running a development binary builds the
    `dev` target under its own image name, the management UI port of the header comment = the
    published one, a RabbitMQ 4.x image,
    the seed service's exit-code mapping (run in bash with a stub `seed`: 3 = already seeded is
    success, everything else non-zero fails);
  - k8s/ (subdirectories included): every *.yaml / *.json parses; commands name binaries of the
    production image (never a development one); every manifest of a built-in
    kind against the Kubernetes OpenAPI schemas (`kubernetes-validate --strict`); KEDA objects
    structurally (CRDs); other CRDs (monitoring.coreos.com: the PrometheusRule) parsed only;
    the kustomization (lists every top-level manifest but the deliberate exceptions, never the
    one-off Jobs; `kubectl kustomize` builds it, without any Job); cross-references (ConfigMap and
    Secret names and keys, queue name, grace period vs drain deadline, metrics port, probes);
    Pod Security `restricted` on every pod and container and on the namespace labels; the
    token-less ServiceAccount used by every pod; no pod receives AMQP_MANAGEMENT_URI; the
    NetworkPolicy selects every pod, admits only the metrics port, lets out only DNS and the
    ports of the example URIs; the plan/verify Jobs; KEDA `fallback` within the replica cap.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from urllib.parse import urlsplit

import yaml

IMAGE_UID = 10001
SERVICE_ACCOUNT = "vizhub-migrate"
CONFIGMAP = "vizhub-migrate-config"
WORKER = "vizhub-migrate-worker"
# API groups of custom resources: KEDA's are checked structurally below; the others (the
# PrometheusRule, a GrafanaDashboard) have no schema here and are only parsed.
KEDA_GROUP = "keda.sh"
PARSE_ONLY_GROUPS = {"monitoring.coreos.com", "grafana.integreatly.org"}
# Volume types the `restricted` Pod Security Standard allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}
DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "mongodb": 27017, "http": 80, "https": 443}
SHA256_PIN = re.compile(r"@sha256:[0-9a-f]{64}$")


class Report:
    """Collects failures (and prints them as they come, unless quiet: the unit tests)."""

    def __init__(self, quiet=False):
        self.failures = []
        self.quiet = quiet

    def fail(self, where, msg):
        self.failures.append(f"{where}: {msg}")
        if not self.quiet:
            print(f"validate-deploy: FAIL {where}: {msg}", file=sys.stderr)

    def note(self, msg):
        if not self.quiet:
            print(f"validate-deploy: {msg}", file=sys.stderr)


def dig(obj, *keys, default=None):
    for k in keys:
        if isinstance(obj, dict) and k in obj:
            obj = obj[k]
        elif isinstance(obj, list) and isinstance(k, int) and -len(obj) <= k < len(obj):
            obj = obj[k]
        else:
            return default
    return obj


def read_text(path, rep, where):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        rep.fail(where, f"cannot read it: {e}")
        return None


def load_yaml(path, rep, where):
    """The documents of a YAML file (None ones dropped), or None when it does not parse."""
    text = read_text(path, rep, where)
    if text is None:
        return None
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        rep.fail(where, f"not valid YAML: {e}")
        return None


# ---- the crate's binaries -----------------------------------------------------------------
# The target of the Dockerfile's development image: the production image plus the binaries that
# need a (default) feature the production build leaves out with `--no-default-features`.
DEV_TARGET = "dev"


def cargo_bins(root, rep):
    """Cargo.toml's [[bin]]s whose source file exists: name -> their required-features (a tuple;
    empty for a production binary, which `--no-default-features` builds)."""
    text = read_text(os.path.join(root, "Cargo.toml"), rep, "Cargo.toml")
    if text is None:
        return set()
    try:
        import tomllib

        bins = tomllib.loads(text).get("bin", [])
    except ModuleNotFoundError:  # Python < 3.11
        bins = []
        for block in re.split(r"^\[\[bin\]\]\s*$", text, flags=re.M)[1:]:
            block = re.split(r"^\[", block, flags=re.M)[0]
            name = re.search(r'^name\s*=\s*"([^"]+)"', block, re.M)
            p = re.search(r'^path\s*=\s*"([^"]+)"', block, re.M)
            req = re.search(r'^required-features\s*=\s*\[([^\]]*)\]', block, re.M)
            if name:
                bins.append({"name": name.group(1), **({"path": p.group(1)} if p else {}),
                             "required-features": re.findall(r'"([^"]+)"', req.group(1)) if req else []})
    out = {}
    for b in bins:
        name = b.get("name")
        src = b.get("path", f"src/bin/{name}.rs")
        if os.path.isfile(os.path.join(root, src)):
            out[name] = tuple(b.get("required-features", []))
        else:
            rep.fail("Cargo.toml", f"[[bin]] {name}: its source {src} does not exist")
    return out


def command_binary(cmd):
    """The binary a container command runs: argv[0], or the first word of a `bash -c` script."""
    if isinstance(cmd, str):
        cmd = cmd.split()
    if not cmd:
        return None
    if cmd[0] in ("bash", "sh", "/bin/sh", "/bin/bash") and "-c" in cmd:
        i = cmd.index("-c") + 1
        words = (cmd[i] if i < len(cmd) else "").split()
        return words[0] if words else None
    return cmd[0]


def production_bins(bins):
    """The binaries `cargo build --no-default-features --bins` builds: no required-features."""
    return {n for n, req in bins.items() if not req}


def check_binary(rep, bins, where, binary, dev=()):
    """binary must be one of bins; `dev`: the development-only binaries, named as such when one
    is run where only bins (the production image's) exist."""
    if binary in dev:
        rep.fail(where, f"runs `{binary}`, a development binary (Cargo.toml required-features "
                        f"{list(dev[binary])}): only the `{DEV_TARGET}` image has it, not the "
                        f"production image: have {sorted(bins)}")
    elif binary not in bins:
        rep.fail(where, f"runs `{binary}`, which is not a binary of the crate "
                        f"(Cargo.toml [[bin]] with its source): have {sorted(bins)}")


# ---- Dockerfile ---------------------------------------------------------------------------
def debian_release(image):
    """The Debian codename an image tag names (rust:1.91-bookworm, debian:bookworm-slim)."""
    m = re.search(r"\b(bullseye|bookworm|trixie|forky)\b", image)
    return m.group(1) if m else None


def dockerfile_stages(lines):
    """The stages of a Dockerfile's instruction lines: [(name or None, base, [lines])]."""
    stages = []
    for l in lines:
        m = re.match(r"^FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", l, re.I)
        if m:
            stages.append((m.group(2), m.group(1), []))
        elif stages:
            stages[-1][2].append(l)
    return stages


def check_dockerfile(root, bins, rep):
    text = read_text(os.path.join(root, "Dockerfile"), rep, "Dockerfile")
    if text is None:
        return
    prod = production_bins(bins)
    dev = set(bins) - prod
    # Join continuation lines so that each instruction is one line.
    joined = re.sub(r"\\\n", " ", text)
    lines = [l.strip() for l in joined.splitlines() if l.strip() and not l.strip().startswith("#")]
    instr = [l.split(None, 1) for l in lines if re.match(r"^[A-Z]+\s", l)]
    kinds = [i[0] for i in instr]
    if "ENTRYPOINT" in kinds:
        rep.fail("Dockerfile", "has an ENTRYPOINT; the command must name the binary (planner ..., dlq ...)")
    cmds = [i[1] for i in instr if i[0] == "CMD"]
    if not cmds or cmds[-1].replace(" ", "") != '["worker"]':
        rep.fail("Dockerfile", 'the default command must be CMD ["worker"]')
    users = [i[1] for i in instr if i[0] == "USER"]
    if not users or not re.match(rf"^{IMAGE_UID}(:{IMAGE_UID})?$", users[-1]):
        rep.fail("Dockerfile", f"the runtime must run as the numeric non-root USER {IMAGE_UID}")
    if not any(i[0] == "EXPOSE" and "9090" in i[1].split() for i in instr):
        rep.fail("Dockerfile", "EXPOSE 9090 (the worker's metrics port) is missing")
    # The production build leaves out the default features (`dev-data`: seed and the fixtures),
    # and its list of binaries, the first `for b in`, is exactly the production ones.
    build = "cargo build --release --locked --no-default-features --bins"
    if build not in joined:
        rep.fail("Dockerfile", f"the production build must be `{build}` (without the `dev-data` "
                               "feature: no seed, no fixtures)")
    lists = [set(m.group(1).split()) for m in re.finditer(r"for b in ([a-z0-9_ -]+); do", joined)]
    if not lists:
        rep.fail("Dockerfile", "the list of required binaries (`for b in ...; do`) is missing")
    elif lists[0] != prod:
        rep.fail("Dockerfile", f"requires the binaries {sorted(lists[0])} in the production image but "
                               f"`--no-default-features` builds {sorted(prod)}")
    elif dev and set().union(*lists[1:]) != dev:
        rep.fail("Dockerfile", f"the development binaries {sorted(dev)} (Cargo.toml required-features) "
                               f"must be built for the `{DEV_TARGET}` image; it lists "
                               f"{sorted(set().union(*lists[1:]))}")
    # The production image is the last stage (the default target); neither it nor what it is
    # built from may be the development image.
    stages = dockerfile_stages(lines)
    names = {s[0]: s for s in stages if s[0]}
    if dev and DEV_TARGET not in names:
        rep.fail("Dockerfile", f"no `{DEV_TARGET}` stage: the development binaries {sorted(dev)} "
                               "have no image (docker-compose.yml's seed service builds it)")
    chain, stage = [], stages[-1] if stages else None
    while stage is not None and len(chain) <= len(stages):
        chain.append(stage[0])
        stage = names.get(stage[1])
    if DEV_TARGET in chain:
        rep.fail("Dockerfile", f"the production image (the last stage) is built from the "
                               f"`{DEV_TARGET}` stage: it would ship {sorted(dev) or 'the development binaries'}")
    # Base images: pinned by digest (a FROM naming an earlier stage is not an image).
    stages, images = set(), []
    for kind, rest in instr:
        if kind != "FROM":
            continue
        words = [w for w in rest.split() if not w.startswith("--")]
        image = words[0] if words else ""
        if image not in stages:
            images.append(image)
            if not SHA256_PIN.search(image):
                rep.fail("Dockerfile", f"FROM {image}: base images must be pinned by digest "
                                       "(image:tag@sha256:<64 hex>)")
            elif ":" not in image.split("@")[0]:
                rep.fail("Dockerfile", f"FROM {image}: keep the tag beside the digest (it says what it is)")
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2])
    releases = {debian_release(i) for i in images}
    if None in releases or len(releases) != 1:
        rep.fail("Dockerfile", f"builder and runtime must name the same Debian release (glibc): {images}")
    # Dependency caching with cargo-chef, pinned.
    chef = re.search(r"cargo install cargo-chef\b([^\n]*)", joined)
    if not chef:
        rep.fail("Dockerfile", "cargo-chef is not installed (dependency caching)")
    else:
        args = chef.group(1)
        version = re.search(r"--version\s+(\S+)", args)
        pinned = version and (re.fullmatch(r'"?\d+\.\d+\.\d+"?', version.group(1))
                              or re.search(r"ARG CARGO_CHEF_VERSION=\d+\.\d+\.\d+\b", joined))
        if not pinned or "--locked" not in args:
            rep.fail("Dockerfile", "cargo-chef must be installed --locked with a pinned --version")
    for step in ("cargo chef prepare", "cargo chef cook --release --locked"):
        if step not in joined:
            rep.fail("Dockerfile", f"`{step}` is missing (dependency caching with cargo-chef)")
    cook = re.search(r"cargo chef cook\b[^\n]*", joined)
    if cook and "--no-default-features" not in cook.group(0):
        rep.fail("Dockerfile", "cargo chef cook must take the production build's "
                               "--no-default-features (the dependency layer is cooked for that build)")
    if not re.search(r"CARGO_PROFILE_RELEASE_STRIP=(true|\"true\"|symbols)", joined):
        rep.fail("Dockerfile", "release binaries must be stripped (CARGO_PROFILE_RELEASE_STRIP=true)")


# ---- docker-compose.yml -------------------------------------------------------------------
def compose_default_port(spec):
    """The default host port of a `127.0.0.1:${VAR:-15673}:15672` mapping, and its container port."""
    spec = str(spec)
    m = re.match(r"^(?:[\d.]+:)?(?:\$\{[A-Z0-9_]+:-(\d+)\}|(\d*)):(\d+)(?:/\w+)?$", spec)
    if not m:
        return None, None
    host = m.group(1) or m.group(2)
    return (int(host) if host else None), int(m.group(3))


def seed_exit_status(script, seed_rc):
    """The exit status of the seed service's `bash -c` script when `seed` exits seed_rc."""
    script = script.replace("$$", "$")  # Compose's escape for a literal $
    stub = f"seed() {{ return {int(seed_rc)}; }}\n"
    r = subprocess.run(["bash", "-c", stub + script], capture_output=True, text=True, timeout=30)
    return r.returncode


def check_compose(root, bins, rep):
    """bins: every binary of the crate (cargo_bins); the development ones need the dev image."""
    where = "docker-compose.yml"
    dev = set(bins) - production_bins(bins)
    image_of_target = {}
    path = os.path.join(root, where)
    docs = load_yaml(path, rep, where)
    if not docs:
        return
    text = read_text(path, rep, where) or ""
    services = dig(docs[0], "services", default={}) or {}
    for name in ("rabbitmq", "mongo-v2", "mongo-v3", "seed", "planner", "worker"):
        if name not in services:
            rep.fail(where, f"service `{name}` is missing")
    for name, svc in services.items():
        if not isinstance(svc, dict):
            continue
        if "build" in svc:
            cmd = svc.get("command")
            if cmd is None:
                rep.fail(where, f"service `{name}` is built from the Dockerfile but sets no command")
            else:
                check_binary(rep, bins, f"{where} service `{name}`", command_binary(cmd))
            build = svc["build"]
            target = build.get("target") if isinstance(build, dict) else None
            binary = command_binary(cmd) if cmd is not None else None
            if binary in dev and target != DEV_TARGET:
                rep.fail(where, f"service `{name}` runs `{binary}`, a development binary: it must build "
                                f"the Dockerfile's `{DEV_TARGET}` target (build.target), the production "
                                "image does not have it")
            elif binary not in dev and target == DEV_TARGET:
                rep.fail(where, f"service `{name}` runs `{binary}` from the `{DEV_TARGET}` image: "
                                "the fleet runs the production image, as in Kubernetes")
            # Two targets under one image name: each build would retag the other's image.
            image_of_target.setdefault(target, set()).add(str(svc.get("image")))
        if "healthcheck" in svc and not dig(svc, "healthcheck", "test"):
            rep.fail(where, f"service `{name}`: healthcheck without a test")
    for target, images in image_of_target.items():
        for other, others in image_of_target.items():
            if other != target and images & others:
                rep.fail(where, f"the images of the Dockerfile targets {target or '(default)'} and "
                                f"{other or '(default)'} share the name {sorted(images & others)}: "
                                "each build would retag the other's")
    w = services.get("worker") or {}
    if "container_name" in w:
        rep.fail(where, "service `worker` has a container_name: `--scale worker=N` would conflict")
    for p in w.get("ports", []) or []:
        fixed = (p.get("published") if isinstance(p, dict)
                 else compose_default_port(p)[0] is not None)
        if fixed:
            rep.fail(where, f"service `worker` publishes the fixed host port {p!r}: `--scale worker=N` would conflict")
    for name in ("seed", "planner"):
        s = services.get(name) or {}
        if str(s.get("restart", "no")) != "no":
            rep.fail(where, f"service `{name}` is a one-shot: restart must be \"no\"")
    if dig(services, "planner", "depends_on", "seed", "condition") != "service_completed_successfully":
        rep.fail(where, "service `planner` must depend on `seed` with condition service_completed_successfully")
    for dep in ("rabbitmq", "mongo-v3"):
        if dig(services, "planner", "depends_on", dep, "condition") != "service_healthy":
            rep.fail(where, f"service `planner` must wait for `{dep}` to be healthy")
    ro_fixtures = [
        v for v in (dig(services, "seed", "volumes") or [])
        if (isinstance(v, str) and "fixtures" in v and v.endswith(":ro"))
        or (isinstance(v, dict) and "fixtures" in str(v.get("target", "")) and v.get("read_only") is True)
    ]
    if not ro_fixtures:
        rep.fail(where, "service `seed` must mount the V2 fixtures read-only")

    # RabbitMQ: a 4.x image; the management UI where the header comment says it is.
    rabbit = services.get("rabbitmq") or {}
    image = str(rabbit.get("image", ""))
    if not re.match(r"^rabbitmq:4\.\d+(\.\d+)?-management(@sha256:[0-9a-f]{64})?$", image):
        rep.fail(where, f"service `rabbitmq`: image {image!r} is not a RabbitMQ 4.x management image")
    mgmt = [compose_default_port(p)[0] for p in rabbit.get("ports") or []
            if compose_default_port(p)[1] == 15672]
    header = "\n".join(l for l in text.splitlines() if l.startswith("#"))
    said = set(int(p) for p in re.findall(r"management UI \(http://127\.0\.0\.1:(\d+)", header))
    if len(mgmt) != 1 or mgmt[0] is None:
        rep.fail(where, "service `rabbitmq` must publish the management port 15672 on one host port")
    elif said != {mgmt[0]}:
        rep.fail(where, f"the header comment names the management UI on {sorted(said) or 'no port'}, "
                        f"the `rabbitmq` service publishes it on {mgmt[0]}")

    # seed: exit 3 ("already seeded") is success, any other non-zero code a failure.
    cmd = dig(services, "seed", "command")
    if isinstance(cmd, list) and cmd[:2] in (["bash", "-c"], ["sh", "-c"]) and len(cmd) >= 3:
        for rc, want in ((0, 0), (3, 0), (1, 1), (2, 2), (101, 101)):
            got = seed_exit_status(cmd[2], rc)
            if (got == 0) != (want == 0):
                rep.fail(where, f"service `seed`: when seed exits {rc} the service exits {got} "
                                f"({'success' if want == 0 else 'failure'} wanted: 3 means already seeded)")
    elif cmd is not None:
        rep.fail(where, "service `seed` must wrap `seed` in `bash -c` to treat exit 3 (already seeded) as success")


# ---- k8s/: files --------------------------------------------------------------------------
def k8s_files(k8s_dir):
    """Paths under k8s/ relative to it, sorted (subdirectories included)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(k8s_dir):
        dirnames.sort()
        for f in filenames:
            out.append(os.path.relpath(os.path.join(dirpath, f), k8s_dir))
    return sorted(out)


def api_group(d):
    v = str(d.get("apiVersion", ""))
    return v.split("/", 1)[0] if "/" in v else ""


def load_k8s(k8s_dir, rep):
    """(docs by YAML file, objects [(file, doc)] without Kustomizations); JSON files parsed."""
    docs_by_file, objects = {}, []
    for f in k8s_files(k8s_dir):
        path = os.path.join(k8s_dir, f)
        if f.endswith(".json"):
            text = read_text(path, rep, f"k8s/{f}")
            if text is not None:
                try:
                    json.loads(text)
                except ValueError as e:
                    rep.fail(f"k8s/{f}", f"not valid JSON: {e}")
            continue
        if not f.endswith((".yaml", ".yml")):
            continue
        docs = load_yaml(path, rep, f"k8s/{f}")
        if docs is None:
            continue
        docs_by_file[f] = docs
        for d in docs:
            if not isinstance(d, dict) or "apiVersion" not in d or "kind" not in d:
                rep.fail(f"k8s/{f}", "a document without apiVersion/kind")
            elif d["kind"] != "Kustomization":
                objects.append((f, d))
    return docs_by_file, objects


def check_kustomization(k8s_dir, docs_by_file, not_in_kustomization, rep):
    kust = docs_by_file.get("kustomization.yaml")
    where = "k8s/kustomization.yaml"
    if not kust:
        rep.fail(where, "missing or empty")
        return None
    k = kust[0]
    if k.get("kind") != "Kustomization" or not str(k.get("apiVersion", "")).startswith("kustomize.config.k8s.io/"):
        rep.fail(where, "is not a kustomize.config.k8s.io Kustomization")
    resources = [str(r).rstrip("/") for r in k.get("resources") or []]
    for r in resources:
        if not os.path.exists(os.path.join(k8s_dir, r)):
            rep.fail(where, f"lists {r}, which does not exist")
        # An entry of NOT_IN_KUSTOMIZATION is a file, or a directory (`jobs/`) with all below it.
        if any(r == n.rstrip("/") or (n.endswith("/") and r.startswith(n)) for n in not_in_kustomization):
            rep.fail(where, f"lists {r}, which must stay out of it (see its header)")
    top_level = [f for f in docs_by_file if "/" not in f and f != "kustomization.yaml"]
    for f in top_level:
        if f not in not_in_kustomization and f not in resources:
            rep.fail(where, f"does not list k8s/{f} (add it to resources, or to "
                            "NOT_IN_KUSTOMIZATION in scripts/validate-deploy with a reason)")
    for n in not_in_kustomization:
        if not os.path.exists(os.path.join(k8s_dir, n.rstrip("/"))):
            rep.fail("k8s/", f"{n} is missing (NOT_IN_KUSTOMIZATION names it)")
    return k


def kubernetes_validate(k8s_dir, docs_by_file, kv_bin, k8s_versions, rep):
    """Every document of a built-in kind against the Kubernetes schemas; CRDs split off."""
    tmp = tempfile.mkdtemp(prefix="validate-deploy-")
    to_validate = {}  # path given to kubernetes-validate -> file name to report
    try:
        for f, docs in docs_by_file.items():
            kust = [d for d in docs if isinstance(d, dict) and d.get("kind") == "Kustomization"]
            crds = [d for d in docs if isinstance(d, dict) and d not in kust
                    and (api_group(d) == KEDA_GROUP or api_group(d) in PARSE_ONLY_GROUPS)]
            rest = [d for d in docs if d not in kust and d not in crds]
            if crds:
                rep.note(f"k8s/{f}: {len(crds)} custom resource(s) ({', '.join(sorted({d['kind'] for d in crds}))}) "
                         "skipped by kubernetes-validate: no schema for CRDs")
            if not rest:
                continue
            if not kust and not crds:
                to_validate[os.path.join(k8s_dir, f)] = f
            else:
                p = os.path.join(tmp, f.replace("/", "__"))
                with open(p, "w", encoding="utf-8") as out:
                    yaml.safe_dump_all(rest, out, sort_keys=False)
                to_validate[p] = f
        if not to_validate:
            return
        args = [kv_bin, "--strict", "--quiet"]
        for v in k8s_versions:
            args += ["-k", v]
        r = subprocess.run(args + list(to_validate), capture_output=True, text=True)
        out = (r.stdout + r.stderr).strip()
        bad_seen = False
        for line in out.splitlines():
            shown = line
            for p, f in to_validate.items():
                shown = shown.replace(p, f"k8s/{f}")
            bad = "Couldn't find schema" in line or line.startswith("ERROR") or "Couldn't parse" in line
            if bad:
                bad_seen = True
                rep.fail("kubernetes-validate", shown)
            else:
                rep.note(f"  {shown}")
        if r.returncode != 0 and not bad_seen:
            rep.fail("kubernetes-validate", f"exited {r.returncode}")
        if "Couldn't find schema" in out:
            rep.fail("kubernetes-validate", "a kind/apiVersion above is unknown to Kubernetes "
                                            f"{', '.join(k8s_versions)} (typo, or a removed API)")
        elif r.returncode == 0:
            rep.note(f"kubernetes-validate: {len(to_validate)} file(s) valid for Kubernetes {', '.join(k8s_versions)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- k8s/: cross-checks -------------------------------------------------------------------
def pod_template(d):
    """(pod spec, pod labels) of a workload, or (None, None)."""
    kind = d["kind"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        t = dig(d, "spec", "template") or {}
    elif kind == "CronJob":
        t = dig(d, "spec", "jobTemplate", "spec", "template") or {}
    elif kind == "Pod":
        t = d
    else:
        return None, None
    return t.get("spec") or {}, dig(t, "metadata", "labels") or {}


def selector_matches(selector, labels):
    """Kubernetes label-selector semantics (matchLabels and matchExpressions); {} matches all."""
    if not isinstance(selector, dict):
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def uri_ports(uri):
    """The ports a URI connects to (a MongoDB URI may list several hosts)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return set()
    netloc = parts.netloc.rsplit("@", 1)[-1]
    ports = set()
    for host in netloc.split(","):
        m = re.search(r":(\d+)$", host)
        ports.add(int(m.group(1)) if m else DEFAULT_PORTS.get(parts.scheme))
    return {p for p in ports if p}


class K8s:
    """The objects of k8s/ indexed for the cross-checks."""

    def __init__(self, objects):
        self.objects = objects
        self.configmaps = {dig(d, "metadata", "name"): (d.get("data") or {})
                           for f, d in objects if d["kind"] == "ConfigMap"}
        self.secrets = {dig(d, "metadata", "name"): {**(d.get("data") or {}), **(d.get("stringData") or {})}
                        for f, d in objects if d["kind"] == "Secret"}
        self.pods = []  # (file, doc, pod spec, pod labels)
        for f, d in objects:
            spec, labels = pod_template(d)
            if spec is not None:
                self.pods.append((f, d, spec, labels))
        self.deployments = {dig(d, "metadata", "name"): (f, d) for f, d in objects if d["kind"] == "Deployment"}

    def of_kind(self, kind):
        return [(f, d) for f, d in self.objects if d["kind"] == kind]


def check_config(k, rep):
    for f, d in k.of_kind("Secret"):
        for key, val in (d.get("stringData") or {}).items():
            if "CHANGE_ME" not in str(val):
                rep.fail(f"k8s/{f}", f"Secret key {key} holds no CHANGE_ME placeholder: no real secrets here")
        if d.get("data"):
            rep.fail(f"k8s/{f}", "use stringData with CHANGE_ME placeholders, not data")
    cfg = k.configmaps.get(CONFIGMAP)
    if cfg is None:
        rep.fail("k8s/configmap.yaml", f"ConfigMap {CONFIGMAP} not found")
        cfg = {}
    for key in ("QUEUE_PREFIX", "V2_READS_PER_SEC", "DRAIN_DEADLINE_SECS", "METRICS_ADDR"):
        if key not in cfg:
            rep.fail("k8s/configmap.yaml", f"{key} is missing")
    for key, val in cfg.items():
        if not isinstance(val, str):
            rep.fail("k8s/configmap.yaml", f"{key}: ConfigMap values must be strings (quote {val!r})")
    return cfg


def metrics_port(cfg):
    return str(cfg.get("METRICS_ADDR", "0.0.0.0:9090")).rsplit(":", 1)[-1]


def check_pods(k, bins, rep):
    """Every pod and container: binaries (the production image's: bins is cargo_bins),
    references, restricted securityContext, account, env."""
    prod = production_bins(bins)
    dev = {n: req for n, req in bins.items() if n not in prod}
    accounts = {dig(d, "metadata", "name"): d for f, d in k.of_kind("ServiceAccount")}
    sa = accounts.get(SERVICE_ACCOUNT)
    if sa is None:
        rep.fail("k8s/", f"ServiceAccount {SERVICE_ACCOUNT} not found")
    elif sa.get("automountServiceAccountToken") is not False:
        rep.fail("k8s/serviceaccount.yaml", "automountServiceAccountToken: false is missing (no token in the pods)")
    mgmt_secrets = {n for n, keys in k.secrets.items() if "AMQP_MANAGEMENT_URI" in keys}
    images = {}
    for f, d, spec, labels in k.pods:
        where = f"k8s/{f} {d['kind']} {dig(d, 'metadata', 'name')}"
        if spec.get("serviceAccountName") != SERVICE_ACCOUNT:
            rep.fail(where, f"serviceAccountName must be {SERVICE_ACCOUNT} (token-less, no RBAC)")
        if spec.get("automountServiceAccountToken") is not False:
            rep.fail(where, "automountServiceAccountToken: false is missing in the pod spec")
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                rep.fail(where, f"{key} is forbidden by Pod Security restricted")
        for v in spec.get("volumes") or []:
            kinds = set(v) - {"name"}
            if not kinds <= RESTRICTED_VOLUMES:
                rep.fail(where, f"volume {v.get('name')}: {sorted(kinds)} is forbidden by Pod Security restricted")
        if labels.get("app.kubernetes.io/name") != "vizhub-migrate":
            rep.fail(where, "the pod template needs the label app.kubernetes.io/name: vizhub-migrate "
                            "(the NetworkPolicy selects on it)")
        psc = spec.get("securityContext") or {}
        for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
            cw = f"{where} container {c.get('name')}"
            images.setdefault(c.get("image"), []).append(cw)
            check_binary(rep, prod, cw, command_binary(c.get("command") or ["worker"]), dev)
            sc = c.get("securityContext") or {}
            merged = {**psc, **sc}
            if merged.get("runAsNonRoot") is not True:
                rep.fail(cw, "runAsNonRoot: true is missing")
            if merged.get("runAsUser") != IMAGE_UID:
                rep.fail(cw, f"runAsUser must be {IMAGE_UID} (the image's user)")
            if dig(merged, "seccompProfile", "type") != "RuntimeDefault":
                rep.fail(cw, "seccompProfile type RuntimeDefault is missing (pod or container)")
            if sc.get("privileged"):
                rep.fail(cw, "privileged is forbidden")
            if sc.get("readOnlyRootFilesystem") is not True:
                rep.fail(cw, "readOnlyRootFilesystem: true is missing")
            if sc.get("allowPrivilegeEscalation") is not False:
                rep.fail(cw, "allowPrivilegeEscalation: false is missing")
            if "ALL" not in (dig(sc, "capabilities", "drop") or []):
                rep.fail(cw, "capabilities must drop ALL")
            if dig(sc, "capabilities", "add"):
                rep.fail(cw, "capabilities must add nothing")
            for ef in c.get("envFrom") or []:
                if "configMapRef" in ef and dig(ef, "configMapRef", "name") not in k.configmaps:
                    rep.fail(cw, f"envFrom ConfigMap {dig(ef, 'configMapRef', 'name')} is not defined in k8s/")
                if "secretRef" in ef:
                    name = dig(ef, "secretRef", "name")
                    if name not in k.secrets:
                        rep.fail(cw, f"envFrom Secret {name} is not in secret.example.yaml")
                    elif name in mgmt_secrets:
                        rep.fail(cw, f"envFrom Secret {name} hands it AMQP_MANAGEMENT_URI (KEDA's alone): "
                                     "list the keys it needs under env")
            for e in c.get("env") or []:
                ref = dig(e, "valueFrom", "secretKeyRef")
                if e.get("name") == "AMQP_MANAGEMENT_URI" or (ref and ref.get("key") == "AMQP_MANAGEMENT_URI"):
                    rep.fail(cw, "receives AMQP_MANAGEMENT_URI, which only KEDA's TriggerAuthentication needs")
                if ref and ref.get("key") not in k.secrets.get(ref.get("name"), {}):
                    rep.fail(cw, f"env {e.get('name')}: Secret {ref.get('name')} key {ref.get('key')} is not in secret.example.yaml")
                ref = dig(e, "valueFrom", "configMapKeyRef")
                if ref and ref.get("key") not in k.configmaps.get(ref.get("name"), {}):
                    rep.fail(cw, f"env {e.get('name')}: ConfigMap {ref.get('name')} key {ref.get('key')} is not defined")
    if len(images) > 1:
        rep.fail("k8s/", f"the pods run different images {sorted(map(str, images))}: one release, one image "
                         "(kustomization.yaml `images:` rewrites it for the applied ones)")


def check_namespace(k, rep):
    ns = k.of_kind("Namespace")
    if not ns:
        rep.fail("k8s/", "no Namespace")
    for f, d in ns:
        labels = dig(d, "metadata", "labels") or {}
        for mode in ("enforce", "audit", "warn"):
            if labels.get(f"pod-security.kubernetes.io/{mode}") != "restricted":
                rep.fail(f"k8s/{f}", f"label pod-security.kubernetes.io/{mode}: restricted is missing")


def check_worker(k, cfg, rep):
    worker = k.deployments.get(WORKER)
    if not worker:
        rep.fail("k8s/", f"Deployment {WORKER} not found")
        return None
    f, d = worker
    where = f"k8s/{f}"
    spec, _ = pod_template(d)
    c = (spec.get("containers") or [{}])[0]
    if command_binary(c.get("command") or ["worker"]) != "worker":
        rep.fail(where, "the worker container must run `worker`")
    if "replicas" in (d.get("spec") or {}):
        rep.fail(where, "spec.replicas is set: KEDA owns the replica count (every apply would reset it)")
    port = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}.get("metrics")
    want = metrics_port(cfg)
    if str(port) != want:
        rep.fail(where, f"containerPort `metrics` is {port}, METRICS_ADDR listens on {want}")
    if dig(c, "startupProbe", "httpGet", "path") != "/healthz":
        rep.fail(where, "startupProbe must GET /healthz (the V3 index build may take minutes)")
    if dig(c, "livenessProbe", "httpGet", "path") != "/healthz":
        rep.fail(where, "livenessProbe must GET /healthz")
    if dig(c, "readinessProbe", "httpGet", "path") != "/readyz":
        rep.fail(where, "readinessProbe must GET /readyz")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    drain = int(cfg.get("DRAIN_DEADLINE_SECS", 25))
    if not grace > drain:
        rep.fail(where, f"terminationGracePeriodSeconds {grace} must be above DRAIN_DEADLINE_SECS {drain}")
    ann = dig(d, "spec", "template", "metadata", "annotations") or {}
    if ann.get("prometheus.io/scrape") != "true" or str(ann.get("prometheus.io/port")) != want:
        rep.fail(where, "the pod template needs prometheus.io/scrape \"true\" and prometheus.io/port")
    if not dig(c, "resources", "requests") or not dig(c, "resources", "limits", "memory"):
        rep.fail(where, "resources: requests and a memory limit are required")
    return worker


def command_line(c):
    return [str(x) for x in (c.get("command") or []) + (c.get("args") or [])]


def check_batch(k, worker, rep):
    """CronJob, PDB and the one-off Jobs."""
    for f, d in k.of_kind("CronJob"):
        where = f"k8s/{f}"
        if dig(d, "spec", "concurrencyPolicy") != "Forbid":
            rep.fail(where, "concurrencyPolicy must be Forbid")
        c = (pod_template(d)[0].get("containers") or [{}])[0]
        if "--since-last" not in command_line(c):
            rep.fail(where, "the planner CronJob must run `planner plan --since-last`")
    for f, d in k.of_kind("PodDisruptionBudget"):
        wl = pod_template(worker[1])[1] if worker else {}
        if not selector_matches(dig(d, "spec", "selector"), wl) or not dig(d, "spec", "selector"):
            rep.fail(f"k8s/{f}", "the PodDisruptionBudget selector does not match the worker pods")
    runs = {}
    for f, d in k.of_kind("Job"):
        where = f"k8s/{f} Job {dig(d, 'metadata', 'name')}"
        spec, _ = pod_template(d)
        if spec.get("restartPolicy") not in ("Never", "OnFailure"):
            rep.fail(where, "restartPolicy must be Never (or OnFailure)")
        if not isinstance(dig(d, "spec", "backoffLimit"), int):
            rep.fail(where, "backoffLimit must be set (how often a failed run is retried)")
        c = (spec.get("containers") or [{}])[0]
        cmd = command_line(c)
        runs[tuple(cmd)] = (where, d, c)
        rules = dig(d, "spec", "podFailurePolicy", "rules") or []
        fail_codes = set()
        for r in rules:
            oc = r.get("onExitCodes") or {}
            if r.get("action") == "FailJob" and oc.get("operator") == "In":
                if oc.get("containerName") not in (None, c.get("name")):
                    rep.fail(where, f"podFailurePolicy names container {oc.get('containerName')}, not {c.get('name')}")
                fail_codes |= set(oc.get("values") or [])
        if cmd[:2] == ["planner", "verify"] and not {2, 3, 4} <= fail_codes:
            rep.fail(where, "`planner verify` exits 3 (mismatches) / 4 (compared nothing) / 2 (usage): "
                            "podFailurePolicy must fail the Job on them, not retry")
        if cmd[:2] == ["planner", "plan"] and 2 not in fail_codes:
            rep.fail(where, "`planner plan` exits 2 on bad usage: podFailurePolicy must fail the Job on it")
    for want in (["planner", "plan", "--all"], ["planner", "verify", "--all"]):
        if not any(list(cmd[:len(want)]) == want for cmd in runs):
            rep.fail("k8s/jobs/", f"no Job runs `{' '.join(want)}`")


def check_network_policy(k, cfg, rep):
    policies = k.of_kind("NetworkPolicy")
    if not policies:
        rep.fail("k8s/", "no NetworkPolicy")
        return
    for f, d, spec, labels in k.pods:
        if not any(selector_matches(dig(p, "spec", "podSelector"), labels) for _, p in policies):
            rep.fail(f"k8s/{f}", f"no NetworkPolicy selects the pods of {d['kind']} {dig(d, 'metadata', 'name')}")
    want_metrics = metrics_port(cfg)
    uris = {}
    for keys in k.secrets.values():
        uris.update({key: str(v) for key, v in keys.items() if key.endswith("_URI")})
    needed = {}
    for key in ("V2_MONGO_URI", "V3_MONGO_URI", "AMQP_URI"):
        for p in uri_ports(uris.get(key, "")):
            needed.setdefault(p, []).append(key)
    mgmt = uri_ports(uris.get("AMQP_MANAGEMENT_URI", "")) - set(needed)
    for f, p in policies:
        where = f"k8s/{f}"
        spec = p.get("spec") or {}
        if set(spec.get("policyTypes") or []) != {"Ingress", "Egress"}:
            rep.fail(where, "policyTypes must be [Ingress, Egress] (default deny both ways)")
        for rule in spec.get("ingress") or []:
            ports = rule.get("ports") or []
            if not ports or any(str(x.get("port")) not in (want_metrics, "metrics") for x in ports):
                rep.fail(where, f"ingress must admit only the metrics port {want_metrics}: {rule}")
        allowed = set()
        for rule in spec.get("egress") or []:
            if not rule.get("to") or not rule.get("ports"):
                rep.fail(where, f"every egress rule needs `to` and `ports` (else it opens everything): {rule}")
            for x in rule.get("ports") or []:
                allowed.add((str(x.get("protocol", "TCP")), str(x.get("port"))))
        if ("UDP", "53") not in allowed:
            rep.fail(where, "egress to DNS (UDP 53) is missing")
        for port, keys in sorted(needed.items()):
            if ("TCP", str(port)) not in allowed:
                rep.fail(where, f"egress to TCP {port} ({', '.join(keys)} in secret.example.yaml) is missing")
        for port in mgmt:
            if ("TCP", str(port)) in allowed:
                rep.fail(where, f"egress to the management API port {port} is open: only KEDA needs it")
        extra = {p for proto, p in allowed if p != "53"} - {str(p) for p in needed}
        if extra:
            rep.fail(where, f"egress opens ports {sorted(extra)} that no URI of secret.example.yaml uses")


# KEDA: the fields KEDA 2.x requires, checked by hand (kubernetes-validate has no CRD schemas).
SO_SPEC = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
           "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers"}
TRIGGER = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
TA_SPEC = {"secretTargetRef", "env", "configMapTargetRef", "podIdentity", "hashiCorpVault",
           "azureKeyVault", "awsSecretManager", "gcpSecretManager", "boundServiceAccountToken"}
RABBIT_MODES = {"QueueLength", "MessageRate", "DeliverGetRate", "PublishedToDeliveredRatio",
                "ExpectedQueueConsumptionTime"}


def is_nonneg_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_keda(k, cfg, rep):
    queue_prefix = str(cfg.get("QUEUE_PREFIX", "vizhub-migrate"))
    trigger_auths, scaled = {}, []
    for f, d in k.objects:
        if api_group(d) != KEDA_GROUP:
            continue
        where = f"k8s/{f} {d['kind']} {dig(d, 'metadata', 'name')}"
        if d["apiVersion"] != "keda.sh/v1alpha1":
            rep.fail(where, f"apiVersion {d['apiVersion']}: KEDA 2.x serves keda.sh/v1alpha1")
        if not dig(d, "metadata", "name") or not dig(d, "metadata", "namespace"):
            rep.fail(where, "metadata.name and metadata.namespace are required")
        extra = set(d) - {"apiVersion", "kind", "metadata", "spec"}
        if extra:
            rep.fail(where, f"unexpected top-level fields {sorted(extra)}")
        spec = d.get("spec")
        if not isinstance(spec, dict):
            rep.fail(where, "spec is missing")
            continue
        if d["kind"] == "TriggerAuthentication":
            trigger_auths[dig(d, "metadata", "name")] = d
            if set(spec) - TA_SPEC:
                rep.fail(where, f"unexpected spec fields {sorted(set(spec) - TA_SPEC)}")
            for ref in spec.get("secretTargetRef") or []:
                if set(ref) != {"parameter", "name", "key"}:
                    rep.fail(where, f"secretTargetRef entries need exactly parameter, name, key: {ref}")
                elif ref["key"] not in k.secrets.get(ref["name"], {}):
                    rep.fail(where, f"secretTargetRef: Secret {ref['name']} key {ref['key']} is not in secret.example.yaml")
        elif d["kind"] == "ScaledObject":
            scaled.append((where, d))
            check_scaled_object(where, spec, k, queue_prefix, rep)
    for where, d in scaled:
        for t in dig(d, "spec", "triggers") or []:
            auth = dig(t, "authenticationRef", "name")
            if auth is not None and dig(t, "authenticationRef", "kind", default="TriggerAuthentication") == "TriggerAuthentication":
                if auth not in trigger_auths:
                    rep.fail(where, f"authenticationRef {auth} is not a TriggerAuthentication of k8s/")
                elif not any(r.get("parameter") == "host" for r in dig(trigger_auths[auth], "spec", "secretTargetRef") or []):
                    rep.fail(where, f"TriggerAuthentication {auth} gives no `host` parameter")
    if not scaled:
        rep.fail("k8s/", "no KEDA ScaledObject found")
    else:
        rep.note(f"KEDA objects: {len(scaled)} ScaledObject(s), {len(trigger_auths)} TriggerAuthentication(s) checked")


def check_scaled_object(where, spec, k, queue_prefix, rep):
    if set(spec) - SO_SPEC:
        rep.fail(where, f"unexpected spec fields {sorted(set(spec) - SO_SPEC)}")
    target = spec.get("scaleTargetRef") or {}
    if target.get("name") not in k.deployments or target.get("kind", "Deployment") != "Deployment":
        rep.fail(where, f"scaleTargetRef {target} is not a Deployment of k8s/")
    for key in ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount"):
        if key in spec and not is_nonneg_int(spec[key]):
            rep.fail(where, f"{key} must be a non-negative integer")
    lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount")
    if not is_nonneg_int(hi) or (is_nonneg_int(lo) and lo > hi):
        rep.fail(where, "maxReplicaCount (the V2 read budget cap) must be set and >= minReplicaCount")
    fb = spec.get("fallback")
    if not isinstance(fb, dict):
        rep.fail(where, "fallback is missing (what KEDA does when it cannot read the queue)")
    else:
        if set(fb) - {"failureThreshold", "replicas", "behavior"}:
            rep.fail(where, f"unexpected fallback fields {sorted(set(fb) - {'failureThreshold', 'replicas', 'behavior'})}")
        if not is_nonneg_int(fb.get("failureThreshold")) or fb.get("failureThreshold") < 1:
            rep.fail(where, "fallback.failureThreshold must be a positive integer")
        r = fb.get("replicas")
        if not is_nonneg_int(r) or (is_nonneg_int(hi) and r > hi):
            rep.fail(where, f"fallback.replicas {r!r} must be an integer within maxReplicaCount {hi} (the V2 budget)")
    triggers = spec.get("triggers")
    if not isinstance(triggers, list) or not triggers:
        rep.fail(where, "triggers must be a non-empty list")
        triggers = []
    for t in triggers:
        if set(t) - TRIGGER:
            rep.fail(where, f"unexpected trigger fields {sorted(set(t) - TRIGGER)}")
        if fb is not None and t.get("metricType", "AverageValue") != "AverageValue":
            rep.fail(where, "KEDA's fallback works only with metricType AverageValue")
        md = t.get("metadata") or {}
        for key, val in md.items():
            if not isinstance(val, str):
                rep.fail(where, f"trigger metadata {key}: KEDA wants strings (quote {val!r})")
        if t.get("type") != "rabbitmq":
            continue
        if md.get("queueName") != f"{queue_prefix}.work":
            rep.fail(where, f"queueName {md.get('queueName')!r} is not the work queue {queue_prefix + '.work'!r} (QUEUE_PREFIX)")
        if md.get("mode") not in RABBIT_MODES:
            rep.fail(where, f"mode {md.get('mode')!r} is not one of {sorted(RABBIT_MODES)}")
        try:
            positive = float(md.get("value", "")) > 0
        except ValueError:
            positive = False
        if not positive:
            rep.fail(where, f"value {md.get('value')!r} must be a positive number")
        if md.get("protocol") != "http":
            rep.fail(where, "protocol must be http: only the management API counts unacked messages")
        if str(md.get("excludeUnacknowledged", "false")).lower() == "true":
            rep.fail(where, "excludeUnacknowledged is true: unacked (in-flight) jobs must be counted")
        if "includeUnacked" in md:
            rep.fail(where, "includeUnacked is KEDA 1.x; KEDA 2.x counts unacked with protocol http")
        if "host" in md:
            rep.fail(where, "host in metadata would put credentials in the manifest: use the TriggerAuthentication")
        if dig(t, "authenticationRef", "name") is None:
            rep.fail(where, "the rabbitmq trigger needs authenticationRef (the management URI)")


def check_comments(k8s_dir, rep):
    """No shell recipe rewriting manifests with sed: the one-off runs have manifests of their own."""
    for f in k8s_files(k8s_dir):
        if f.endswith((".yaml", ".yml")):
            text = read_text(os.path.join(k8s_dir, f), rep, f"k8s/{f}") or ""
            if re.search(r"\|\s*sed\b", text):
                rep.fail(f"k8s/{f}", "a `| sed` recipe: give the command a manifest of its own (k8s/jobs/)")


def kubectl_kustomize(k8s_dir, kubectl, rep):
    r = subprocess.run([kubectl, "kustomize", k8s_dir], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        rep.fail("k8s/kustomization.yaml", f"`kubectl kustomize k8s/` failed: {r.stderr.strip()}")
        return
    built = [d for d in yaml.safe_load_all(r.stdout) if d]
    jobs = [dig(d, "metadata", "name") for d in built if d.get("kind") == "Job"]
    if jobs:
        rep.fail("k8s/kustomization.yaml", f"`kubectl apply -k k8s/` would start the Jobs {jobs}")
    rep.note(f"kubectl kustomize k8s/: {len(built)} objects")


def check_js(k8s_dir, node, rep):
    for f in k8s_files(k8s_dir):
        if not f.endswith(".js"):
            continue
        if not node:
            rep.note(f"node not installed: k8s/{f} not parsed")
            continue
        r = subprocess.run([node, "--check", os.path.join(k8s_dir, f)], capture_output=True, text=True)
        if r.returncode != 0:
            rep.fail(f"k8s/{f}", f"does not parse: {r.stderr.strip()}")


# ---- everything ---------------------------------------------------------------------------
def run_checks(root, rep, kv_bin=None, k8s_versions=(), not_in_kustomization=(),
               kubectl=None, node=None):
    """All checks of the files under root; the failures end up in rep."""
    bins = cargo_bins(root, rep)
    prod = production_bins(bins)
    rep.note(f"binaries of the crate: {' '.join(sorted(prod)) or '(none)'}; development only: "
             f"{' '.join(sorted(set(bins) - prod)) or '(none)'}")
    check_dockerfile(root, bins, rep)
    check_compose(root, bins, rep)
    k8s_dir = os.path.join(root, "k8s")
    if not os.path.isdir(k8s_dir):
        rep.fail("k8s/", "directory not found")
        return
    docs_by_file, objects = load_k8s(k8s_dir, rep)
    kust = check_kustomization(k8s_dir, docs_by_file, set(not_in_kustomization), rep)
    if kv_bin:
        kubernetes_validate(k8s_dir, docs_by_file, kv_bin, list(k8s_versions), rep)
    else:
        rep.note("kubernetes-validate not given: schema validation skipped")
    k = K8s(objects)
    cfg = check_config(k, rep)
    check_pods(k, bins, rep)
    check_namespace(k, rep)
    worker = check_worker(k, cfg, rep)
    check_batch(k, worker, rep)
    check_network_policy(k, cfg, rep)
    check_keda(k, cfg, rep)
    check_comments(k8s_dir, rep)
    if kubectl and kust:
        kubectl_kustomize(k8s_dir, kubectl, rep)
    elif kust:
        rep.note("kubectl not installed: `kubectl kustomize` skipped (the resources list was checked above)")
    check_js(k8s_dir, node, rep)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="the directory holding Dockerfile, docker-compose.yml, k8s/")
    ap.add_argument("--kubernetes-validate", dest="kv_bin", help="the kubernetes-validate executable")
    ap.add_argument("--k8s-versions", default="1.30.0 1.37.0")
    ap.add_argument("--not-in-kustomization", default="")
    a = ap.parse_args(argv)
    rep = Report()
    run_checks(os.path.abspath(a.root), rep, kv_bin=a.kv_bin, k8s_versions=a.k8s_versions.split(),
               not_in_kustomization=a.not_in_kustomization.split(),
               kubectl=shutil.which("kubectl"), node=shutil.which("node"))
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())
