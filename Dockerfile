# syntax=docker/dockerfile:1
# The outpost binary in a small Debian image, run as an unprivileged user.
# Build: docker build -t outpost .   Run a role: docker run outpost edge --config …
# deploy/compose.yml runs the whole example topology from it.

FROM rust:1.95-slim-bookworm AS build
# protoc: the etcd client's build compiles etcd's protocol files.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG OUTPOST_REVISION=unknown
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    OUTPOST_REVISION=$OUTPOST_REVISION cargo build --release --locked --bin outpost \
 && cp target/release/outpost /usr/local/bin/outpost

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system outpost \
 && useradd --system --gid outpost --home-dir /srv/outpost --shell /usr/sbin/nologin outpost \
 && install -d -o outpost -g outpost /srv/outpost/.outpost
COPY --from=build /usr/local/bin/outpost /usr/bin/outpost
# The example node and site files; mount your own over /srv/outpost/config.
COPY config/ /srv/outpost/config/
# State (tokens, caches, the control plane's store) next to the config, as
# the example files expect (`../.outpost/…`).
VOLUME ["/srv/outpost/.outpost"]
WORKDIR /srv/outpost
USER outpost
ENTRYPOINT ["/usr/bin/outpost"]
CMD ["--help"]
