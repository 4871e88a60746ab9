# syntax=docker/dockerfile:1
# The `locality` binary in a small non-root image: every command (up, scheduler,
# worker, erase, ...) is `docker run IMAGE COMMAND`. Build: `docker build -t locality:0.1.0 .`
# (BuildKit: the crate registry and target directory are cache mounts, so a rebuild
# after a source change compiles Locality's crates, not its dependencies.)
FROM rust:1.95-slim-trixie AS build
# cmake and nasm build the bundled libjpeg-turbo with its SIMD code.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake make nasm \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p locality \
 && cp target/release/locality /usr/local/bin/locality

FROM debian:trixie-slim
# CA roots for the brokers' and stores' TLS; a user with no shell and no home.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin locality
COPY --from=build /usr/local/bin/locality /usr/local/bin/locality
USER 10001:10001
# 8080: the scheduler's API; 9100: a worker's ingest, health and metrics.
EXPOSE 8080 9100
ENTRYPOINT ["/usr/local/bin/locality"]
CMD ["--help"]
