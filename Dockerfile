# tesserve container image: Tesseract OCR over the KServe Open Inference Protocol.
#
#   docker build -t tesserve .                                # English only
#   docker build -t tesserve --build-arg LANGS="eng deu fra" .
#   docker run --rm -p 8080:8080 -p 8081:8081 tesserve
#
# The build stage compiles with the Makefile's own targets (`make deps`, `make release`), the
# ones CI runs. The runtime stage holds the binary, the Tesseract runtime library (with the
# PDF renderer's pdf.ttf), the traineddata of LANGS and osd (for
# `rotate=auto`), and runs as an unprivileged numeric user with no shell invoked.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# make, then what compiling needs (libtesseract-dev, pkg-config, g++) through the Makefile.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
COPY Makefile ./
RUN make deps BUILD_ONLY=1 && rm -rf /var/lib/apt/lists/*

# Dependencies first: with placeholder sources the crate graph compiles into its own layer,
# which stays cached until Cargo.toml, Cargo.lock, build.rs or proto/ change.
COPY Cargo.toml Cargo.lock build.rs ./
COPY .cargo .cargo
COPY proto proto
# The benchmark and the load tool are workspace members: cargo needs their manifests (and a
# target in each), never builds them here; the server does not depend on either.
COPY bench/Cargo.toml bench/
COPY load/Cargo.toml load/
RUN mkdir -p src bench/src load/src \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > bench/src/main.rs \
 && touch src/lib.rs load/src/lib.rs \
 && make release BUILD_ONLY=1 \
 && rm -rf src target/release/tesserve target/release/deps/tesserve-* \
           target/release/deps/libtesserve-* target/release/.fingerprint/tesserve-*

COPY src src
RUN make release BUILD_ONLY=1 \
 && install -D -m 0755 target/release/tesserve /out/tesserve

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Languages to install, as Tesseract names them: LANGS="eng deu chi_sim" adds
# tesseract-ocr-eng, tesseract-ocr-deu and tesseract-ocr-chi-sim.
ARG LANGS="eng"
# Debian stable changes a package only for a security fix; pinning versions here would make
# the build fail on the next such fix instead of picking it up (DL3008). ${packages} is a
# list, split on purpose (SC2086).
# hadolint ignore=DL3008,SC2086
RUN packages="libtesseract5 tesseract-ocr-osd ca-certificates" \
 && for lang in ${LANGS}; do packages="${packages} tesseract-ocr-${lang//_/-}"; done \
 && apt-get update \
 && apt-get install -y --no-install-recommends ${packages} \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin tesserve

COPY --from=build /out/tesserve /usr/local/bin/tesserve

# libgomp reads this when the library loads: one OpenMP thread per engine, the pool does the
# parallelism. (The binary would re-execute itself with it; setting it here saves that.)
ENV OMP_THREAD_LIMIT=1 \
    TESSERVE_LOG_FORMAT=json
USER 10001:10001
# 8080: REST (and gRPC), /metrics. 8081: gRPC (h2c). KServe's port conventions.
EXPOSE 8080 8081
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/tesserve", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/tesserve"]
CMD ["serve"]
