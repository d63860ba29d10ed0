# The broker's one image: every service binary, brokerctl, broker-loadgen,
# broker-agent and Debian's redis-server, on Debian bookworm, running as a non-root user.
#
# Two ways to fill it, same runtime stage:
#
#   docker build -t broker:local .
#       compiles everything inside Docker (stage `build`, from RUST_IMAGE);
#       needs a registry to pull rust and debian images: the path for a
#       machine with internet.
#
#   scripts/images.sh
#       compiles on this machine with cargo, copies the binaries to
#       .docker-bin/ and builds `--target runtime`; creates BASE with
#       debootstrap when it is absent and cannot be pulled. The path for a
#       machine without a registry (CI here). The binaries link against
#       glibc, so the host must not be newer than bookworm (2.36): Debian 12,
#       Ubuntu 22.04. Elsewhere use the first way.
#
# Works with the classic builder (docker-compose 1.29) and with BuildKit:
# stages a target does not need come after it.

ARG BASE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1.95-slim-bookworm

# ---- The OS part of the runtime image.
FROM ${BASE} AS runtime-base
LABEL org.opencontainers.image.title="monitoring-broker" \
      org.opencontainers.image.description="Monitoring broker: ingest-gateway, shard-router, storage-writer, query-api, cluster-ctl, brokerctl, broker-loadgen, broker-agent, redis-server"
# redis-server: the compose file's Redis comes from the same image (no
# registry needed); redis-cli for its health check. ca-certificates for
# OTLP trace export over TLS.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      redis-server redis-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 broker \
 && useradd --system --uid 10001 --gid broker --home-dir /var/lib/broker \
      --shell /usr/sbin/nologin broker \
 && mkdir -p /var/lib/broker/spool /var/lib/broker/raft /var/lib/broker/redis /var/lib/broker/certs /etc/broker \
 && chown -R broker:broker /var/lib/broker
# The defaults, annotated; a deployment mounts its own file here or sets
# BROKER_* variables (they win over the file).
COPY broker.yaml /etc/broker/broker.yaml
ENV BROKER_CONFIG=/etc/broker/broker.yaml \
    BROKER_TELEMETRY__LOG_FORMAT=json
# Data (spool, raft log, Redis files) lives under here; mount a volume on
# it (a new named volume starts out owned by the broker user).
WORKDIR /var/lib/broker
USER broker:broker
# GET /ready on this process's own http_listen (read from the same
# config), so the check follows the port whatever the service is:
# "healthy" means ready to serve (Redis reachable, cluster joined, a raft
# leader known).
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD ["broker", "health", "--path", "/ready"]
# SIGTERM: drain, flush, leave the cluster, within shutdown_grace (30 s by
# default; give the orchestrator a longer stop timeout).
STOPSIGNAL SIGTERM
ENTRYPOINT ["broker"]
CMD ["run"]

# ---- Runtime with the binaries scripts/images.sh built on the host.
FROM runtime-base AS runtime
COPY .docker-bin/ /usr/local/bin/

# ---- Compile every binary inside Docker (needs RUST_IMAGE).
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
      --bin broker --bin ingest-gateway --bin shard-router --bin storage-writer \
      --bin cluster-ctl --bin query-api --bin brokerctl --bin broker-loadgen --bin broker-agent \
 && mkdir /out \
 && for b in broker ingest-gateway shard-router storage-writer cluster-ctl query-api brokerctl broker-loadgen broker-agent; do \
      strip --strip-debug -o /out/$b target/release/$b; \
    done

# ---- Runtime with the binaries compiled above (the default target).
FROM runtime-base AS runtime-from-source
COPY --from=build /out/ /usr/local/bin/
