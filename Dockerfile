# Builds the rabbitry workspace: the relay binary and the demo.
#   docker build -t rabbitry .
#   docker compose --profile demo up        (see docker-compose.yml)

FROM rust:1.94-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p rabbitry-relay --example demo \
 && mkdir -p /out \
 && cp target/release/rabbitry-relay target/release/examples/demo /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 rabbitry
COPY --from=build /out/rabbitry-relay /out/demo /usr/local/bin/
USER rabbitry
ENTRYPOINT ["rabbitry-relay"]
CMD ["--help"]
