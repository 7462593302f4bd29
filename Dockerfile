# eventstore on PostgreSQL 15 (Debian bookworm). Untested here: no Docker engine runs on the
# project's machines. The steps mirror scripts/setup.sh and scripts/lib.sh (install_extension),
# which are tested on every CI run.

# --- build: cargo-pgrx 0.18.1 against the image's own PostgreSQL 15 ---------------------------
FROM postgres:15-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      postgresql-server-dev-15 clang libclang-dev pkg-config libssl-dev build-essential \
      ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
ENV PATH=/root/.cargo/bin:$PATH
RUN cargo install cargo-pgrx --version =0.18.1 --locked
RUN cargo pgrx init --pg15=/usr/lib/postgresql/15/bin/pg_config
WORKDIR /src
COPY . .
RUN cargo pgrx package --pg-config /usr/lib/postgresql/15/bin/pg_config

# --- runtime: the packaged files only, library preloaded -------------------------------------
FROM postgres:15-bookworm
COPY --from=build /src/target/release/eventstore-pg15/usr/share/postgresql/15/extension/ /usr/share/postgresql/15/extension/
COPY --from=build /src/target/release/eventstore-pg15/usr/lib/postgresql/15/lib/ /usr/lib/postgresql/15/lib/
RUN echo "shared_preload_libraries = 'eventstore'" >> /usr/share/postgresql/postgresql.conf.sample \
 && echo "CREATE EXTENSION IF NOT EXISTS eventstore;" > /docker-entrypoint-initdb.d/10-eventstore.sql
