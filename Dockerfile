# syntax=docker/dockerfile:1.7
# kompress: one image for `kompress controller` and `kompress worker`.
#
#   docker build -t kompress:0.1.0 .                                # CPU (debian:bookworm-slim + onnxruntime)
#   docker build -t kompress:0.1.0-gpu --build-arg VARIANT=gpu .    # GPU (CUDA EP + onnxruntime-gpu)
#
# The GPU variant's onnxruntime-gpu 1.31.1 wheel is built against CUDA 13 (libcublas.so.13,
# libcudart.so.13), so its base must be a CUDA 13 + cuDNN 9 runtime image and the nodes need an
# NVIDIA driver that supports CUDA 13 (>= 580). hack/ci/check-dockerfile verifies the ORT stage
# and the COPY sources without a container runtime.

ARG VARIANT=cpu
ARG RUST_IMAGE=rust:1.95-bookworm
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CPU_BASE=debian:bookworm-slim
ARG GPU_BASE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG ORT_VERSION=1.31.1

# ---- build: the kompress binary ------------------------------------------------------------
# The `dist` profile (Cargo.toml): release, stripped, thin LTO; every worker pod pulls this binary.
# RUST_IMAGE follows rust-toolchain.toml (hack/ci/check-dockerfile checks both).
FROM ${RUST_IMAGE} AS build
ARG VARIANT
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    case "${VARIANT}" in \
      cpu) features=() ;; \
      gpu) features=(--features cuda) ;; \
      *) echo "VARIANT must be cpu or gpu, not '${VARIANT}'" >&2; exit 1 ;; \
    esac \
    && cargo build --profile dist --locked "${features[@]}" \
    && install -D -m 0755 target/dist/kompress /out/kompress

# ---- ort: the ONNX Runtime shared library from the PyPI wheel (same script as local dev) ----
FROM ${PYTHON_IMAGE} AS ort
ARG VARIANT
ARG ORT_VERSION
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY hack/ort-lib /usr/local/bin/ort-lib
RUN case "${VARIANT}" in \
      cpu) wheel=onnxruntime ;; \
      gpu) wheel=onnxruntime-gpu ;; \
      *) echo "VARIANT must be cpu or gpu, not '${VARIANT}'" >&2; exit 1 ;; \
    esac \
    && lib=$(ORT_WHEEL="${wheel}" ORT_VERSION="${ORT_VERSION}" KOMPRESS_CACHE=/tmp/ort ort-lib) \
    && mkdir -p /opt/ort/lib \
    && cp -a "$(dirname "${lib}")"/. /opt/ort/lib/ \
    && test -e /opt/ort/lib/libonnxruntime.so \
    && rm -rf /tmp/ort

# ---- runtime bases -----------------------------------------------------------------------
FROM ${CPU_BASE} AS runtime-cpu
# Distribution packages follow the pinned base image's archive; no version pins (DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libstdc++6 \
    && rm -rf /var/lib/apt/lists/*

FROM ${GPU_BASE} AS runtime-gpu
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# ---- runtime -------------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM runtime-${VARIANT}
ARG VARIANT
ARG ORT_VERSION
LABEL org.opencontainers.image.title="kompress" \
      org.opencontainers.image.description="Kubernetes operator and CLI for gated ONNX model compression (${VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0" \
      dev.kompress.onnxruntime.version="${ORT_VERSION}" \
      dev.kompress.variant="${VARIANT}"
COPY --from=build /out/kompress /usr/local/bin/kompress
# libonnxruntime.so{,.1,.<version>} and the providers (_shared; _cuda/_tensorrt for gpu):
# ONNX Runtime loads its providers from the directory of libonnxruntime.so.
COPY --from=ort /opt/ort/lib/ /usr/local/lib/
RUN ldconfig
ENV ORT_DYLIB_PATH=/usr/local/lib/libonnxruntime.so
# Same uid/gid as the chart's securityContext and the controller's worker pods; no home, no shell use.
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["/usr/local/bin/kompress"]
CMD ["--help"]
