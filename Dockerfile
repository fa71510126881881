# Engram server image. Build: docker build -t engram .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# .cargo/config.toml sets target-cpu=x86-64-v3 (AVX2 for candle's quantized kernels): delete it for older hosts.
COPY .cargo .cargo
COPY crates crates
COPY benches benches
COPY examples examples
COPY src src
COPY migrations migrations
COPY web web
COPY kernels kernels
RUN cargo build --release --locked --bin engram

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/engram /usr/local/bin/engram
COPY corpora /opt/engram/corpora
WORKDIR /var/lib/engram
EXPOSE 8080
ENV ENGRAM__SERVER__BIND=0.0.0.0:8080 \
    ENGRAM__STORAGE__DATA_DIR=/var/lib/engram \
    ENGRAM__LOG__JSON=true
CMD ["engram", "serve"]
