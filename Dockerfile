# deberta-embed server image (CPU). Build:   docker build -t deberta-embed .
# Run with a hub model (downloaded into the container's cache on first start):
#   docker run -p 8080:8080 -e DEBERTA_EMBED_MODEL=bobox/DeBERTaV3-xSmall-SentenceTransformer-0.03 deberta-embed
# or with a model directory mounted read-only:
#   docker run -p 8080:8080 -v /path/to/model:/model:ro -e DEBERTA_EMBED_MODEL=/model deberta-embed
# Every `serve` flag is also a DEBERTA_EMBED_* variable (README, "Deploying").
# CUDA variant: README, "Deploying" (build stage from nvidia/cuda's devel image with
# `--features cuda`, runtime from its base image).
# scripts/check-docker-steps.sh runs this file's build and run steps as plain shell commands
# (CI cannot pull base images): keep each ENV on one line and the HEALTHCHECK command in shell
# form on one line, which that script reads from here.

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin deberta-embed

FROM debian:bookworm-slim AS runtime
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/embed embed
COPY --from=build /src/target/release/deberta-embed /usr/local/bin/deberta-embed
ENV DEBERTA_EMBED_HOST=0.0.0.0
ENV DEBERTA_EMBED_PORT=8080
ENV DEBERTA_EMBED_LOG_FORMAT=json
ENV HF_HOME=/home/embed/.cache/huggingface
USER 10001:10001
WORKDIR /home/embed
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 CMD bash -c 'exec 3<>/dev/tcp/127.0.0.1/${DEBERTA_EMBED_PORT} && printf "GET /health HTTP/1.0\r\n\r\n" >&3 && head -n1 <&3 | grep -q " 200 "'
STOPSIGNAL SIGTERM
ENTRYPOINT ["deberta-embed", "serve"]
