# vizhub-migrate container images, two targets of a slim Debian runtime, running as the non-root
# uid/gid 10001, the binaries in /usr/local/bin:
#   - the production image (the default, last stage `production`): planner, worker and dlq,
#     built with `--no-default-features`, i.e. without the crate's `dev-data` feature (the `seed`
#     binary and the seed and fixtures modules are not compiled in). Kubernetes runs this one.
#   - the development image (target `dev`): the production image plus `seed`, for the demo and
#     rehearsal in docker-compose.yml (its `seed` service), never deployed.
#
#   docker build -t vizhub-migrate .                     # production: planner, worker, dlq
#   docker build --target dev -t vizhub-migrate-dev .    # development: ... and seed
#   docker run --rm vizhub-migrate                       # the default command: `worker`
#   docker run --rm vizhub-migrate planner status        # any binary, as the command
#
# There is no ENTRYPOINT: the command names the binary (`worker`, `planner plan --all`,
# `dlq stats`, and in the dev image `seed --synthetic 3000`), in docker-compose.yml and in the
# Kubernetes manifests alike. Configuration comes from the environment
# (docs/runbook.md#configuration).
#
# V2 fixtures: `seed` loads the real V2 fixtures from SEED_FIXTURES_DIR. They live outside this
# repository (../shared/fixtures/v2), hence outside the build context, so neither image contains
# them: docker-compose.yml mounts them read-only into the `seed` container. Production never
# runs `seed`, and its image does not have it.
#
# Builds with BuildKit and with the classic builder (no BuildKit-only syntax). Cache-friendly
# through cargo-chef (pinned below): the `recipe` stage reduces the crate to its manifests
# (recipe.json, unchanged by edits under src/ or bin/), the builder compiles the dependencies
# from that recipe in a layer of their own, so a source change recompiles only this crate.
#
# Base images are pinned by digest, so a rebuild gets the same toolchain and runtime until the
# pins are bumped deliberately (`docker buildx imagetools inspect rust:1.91-bookworm` shows the
# current index digest of a tag). Where the pins were taken from (no registry was reachable
# when they were written; both are index digests that public builds resolved these tags to):
#   rust:1.91-bookworm@sha256:c1e5f19e...  BuildKit logs of public builds resolving
#       `docker.io/library/rust:1.91-bookworm` to it (March 2026), and several public
#       Dockerfiles pinning the tag to it.
#   debian:bookworm-slim@sha256:3783cc01...  a BuildKit log resolving
#       `docker.io/library/debian:bookworm-slim` to it, and public Dockerfiles pinning it.
# The builder (Debian 12, glibc 2.36) and the runtime (Debian 12) must stay on the same Debian
# release: a binary linked against a newer glibc does not start on an older one.
# This file is validated by scripts/validate-deploy (pins, user, binaries), not built in CI.

FROM rust:1.91-bookworm@sha256:c1e5f19e773b7878c3f7a805dd00a495e747acbdc76fb2337a4ebf0418896b33 AS chef
# cargo-chef, pinned (and its own dependencies locked).
ARG CARGO_CHEF_VERSION=0.1.77
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /build
# The release profile of both the dependency layer and the final build (they must be identical,
# or the cooked dependencies are not reused): stripped binaries (symbols and debug info out).
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    CARGO_PROFILE_RELEASE_STRIP=true

# 1. The recipe: only what Cargo needs to know the targets and the dependencies.
FROM chef AS recipe
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY bin ./bin
COPY benches ./benches
RUN cargo chef prepare --recipe-path recipe.json

# 2. Dependencies, in their own layer: rebuilt only when recipe.json changes (Cargo.toml,
#    Cargo.lock, or the list of targets). Cooked with the production build's flags
#    (`--no-default-features`), so that step 3 reuses them as they are.
FROM chef AS builder
COPY --from=recipe /build/recipe.json recipe.json
RUN cargo chef cook --release --locked --no-default-features --bins --recipe-path recipe.json

# 3. The crate itself, production binaries only: `--no-default-features` leaves out the
#    `dev-data` feature, hence the `seed` binary (required-features) and the seed and fixtures
#    modules. Only the binaries listed here go to /out, the production image's /usr/local/bin.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY bin ./bin
COPY benches ./benches
RUN set -eux; \
    cargo build --release --locked --no-default-features --bins; \
    mkdir -p /out; \
    for b in planner worker dlq; do \
      test -x "target/release/$b" || { echo "Dockerfile: binary '$b' was not built (is it a [[bin]] in Cargo.toml?)" >&2; exit 1; }; \
      cp "target/release/$b" /out/; \
    done; \
    ls -l /out

# 4. The development binary `seed`, with the default features (`dev-data`), for the `dev` image
#    only. It adds no dependency, so the cooked layer serves it too; only this crate recompiles.
#    BuildKit skips this stage when building the production image (nothing there needs it);
#    the classic builder runs every stage before the target, this one included.
FROM builder AS dev-builder
RUN set -eux; \
    cargo build --release --locked --bin seed; \
    mkdir -p /out-dev; \
    for b in seed; do \
      test -x "target/release/$b" || { echo "Dockerfile: dev binary '$b' was not built (is it a [[bin]] in Cargo.toml?)" >&2; exit 1; }; \
      cp "target/release/$b" /out-dev/; \
    done; \
    ls -l /out-dev

# The runtime: what both images share (the production binaries, the user, the command).
FROM debian:bookworm-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251 AS runtime
LABEL org.opencontainers.image.title="vizhub-migrate" \
      org.opencontainers.image.description="VizHub V2 to V3 migration fleet: planner, worker, dlq" \
      org.opencontainers.image.licenses="MIT"
# ca-certificates: TLS to MongoDB Atlas / AMQPS (rustls reads the system trust store).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# Numeric uid/gid so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN groupadd --gid 10001 vizhub \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin vizhub
COPY --from=builder /out/ /usr/local/bin/
USER 10001:10001
# A writable place for `dlq export --out FILE` (Kubernetes mounts an emptyDir on /tmp).
WORKDIR /tmp
# worker: /metrics (Prometheus), /healthz, /readyz on METRICS_ADDR (default 0.0.0.0:9090).
EXPOSE 9090
CMD ["worker"]

# The development image (`--target dev`; docker-compose.yml's `seed` service): the runtime plus
# `seed`. Never deployed: the Kubernetes manifests use the production image.
FROM runtime AS dev
LABEL org.opencontainers.image.title="vizhub-migrate-dev" \
      org.opencontainers.image.description="VizHub V2 to V3 migration fleet, development image: planner, worker, dlq, seed"
COPY --from=dev-builder /out-dev/ /usr/local/bin/

# The production image, the default target (the last stage): the runtime as it is, without
# `seed`.
FROM runtime AS production
