# vizhub-migrate container image: every binary of the crate (planner, worker, dlq, seed) in
# /usr/local/bin of a slim Debian runtime, running as the non-root uid/gid 10001.
#
#   docker build -t vizhub-migrate .
#   docker run --rm vizhub-migrate                       # the default command: `worker`
#   docker run --rm vizhub-migrate planner status        # any binary, as the command
#
# There is no ENTRYPOINT: the command names the binary (`worker`, `planner plan --all`,
# `dlq stats`, `seed --synthetic 3000`), in docker-compose.yml and in the Kubernetes manifests
# alike. Configuration comes from the environment (README "Configuration").
#
# V2 fixtures: `seed` loads the real V2 fixtures from SEED_FIXTURES_DIR. They live outside this
# repository (../shared/fixtures/v2), hence outside the build context, so the image does NOT
# contain them: docker-compose.yml mounts them read-only into the `seed` container. Production
# never runs `seed`.
#
# Builds with the classic builder and with BuildKit (no BuildKit-only syntax). Cache-friendly:
# the dependencies are compiled in their own layer against stub sources, so a change under src/
# or bin/ recompiles only this crate.

FROM rust:1-bookworm AS builder
WORKDIR /build
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0

# 1. Dependency layer: only the manifests. Every target path Cargo.toml declares (the lib, each
#    [[bin]], each [[bench]]) gets a stub so that Cargo accepts the manifest; this layer is reused
#    until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN set -eux; \
    { sed -n 's/^path = "\(.*\)"$/\1/p' Cargo.toml; \
      sed -n '/^\[\[bench\]\]/,/^\[/s/^name = "\(.*\)"$/benches\/\1.rs/p' Cargo.toml; } \
      | sort -u > /tmp/stubs; \
    while read -r f; do mkdir -p "$(dirname "$f")"; echo 'fn main() {}' > "$f"; done < /tmp/stubs; \
    cargo build --release --locked --bins; \
    rm -rf src bin benches

# 2. The crate itself. COPY keeps the files' own mtimes, which can be older than the stubs':
#    touch the target roots so Cargo rebuilds them instead of keeping the stub binaries.
COPY src ./src
COPY bin ./bin
COPY benches ./benches
RUN set -eux; \
    touch src/lib.rs bin/*.rs benches/*.rs; \
    cargo build --release --locked --bins; \
    mkdir -p /out; \
    find target/release -maxdepth 1 -type f -executable -exec cp {} /out/ \; ; \
    for b in planner worker dlq seed; do \
      test -x "/out/$b" || { echo "Dockerfile: binary '$b' was not built (is it a [[bin]] in Cargo.toml?)" >&2; exit 1; }; \
    done; \
    ls -l /out

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="vizhub-migrate" \
      org.opencontainers.image.description="VizHub V2 to V3 migration fleet: planner, worker, dlq, seed" \
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
