# syntax=docker/dockerfile:1
# cxr-triage serving image. Targets:
#   runtime (default): CPU, ONNX Runtime, no torch        docker build -t cxr-triage .
#   gpu:               CUDA runtime base, onnxruntime-gpu  docker build --target gpu -t cxr-triage:gpu .
# The model bundle comes from a mounted volume (/models/bundle) or a build argument:
#   docker build --build-arg BUNDLE_DIR=demo-out/bundle -t cxr-triage:demo .
#   docker run -p 50051:50051 -v $PWD/demo-out/bundle:/models/bundle:ro -v triage-data:/data cxr-triage

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

# --- build: a wheel of the serving packages only (service/, triage_common/; no tools, models or
# export, no extras: neither torch nor matplotlib nor rich) ----------------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY triage_common ./triage_common
COPY service ./service
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- runtime (CPU) ----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG BUNDLE_DIR=deploy/no-bundle
RUN useradd --system --uid 10001 --create-home --home-dir /home/triage triage \
    && mkdir -p /models/bundle /data && chown triage /data
COPY --from=build /wheels /wheels
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "$(ls /wheels/*.whl)[postgres]" \
    && rm -rf /wheels
COPY ${BUNDLE_DIR} /models/bundle
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TRIAGE_BUNDLE=/models/bundle \
    TRIAGE_SERVER__HOST=0.0.0.0 \
    TRIAGE_SERVER__PORT=50051 \
    TRIAGE_WORKLIST__PATH=/data/worklist.db \
    TRIAGE_INFERENCE__PROVIDERS=CPU
VOLUME ["/data"]
USER triage
WORKDIR /home/triage
EXPOSE 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
    CMD ["triage-probe", "--server", "127.0.0.1:50051", "--service", "readiness"]
ENTRYPOINT ["triage-serve"]

# --- gpu: CUDA runtime base; onnxruntime-gpu's CUDA and TensorRT providers load here --------
FROM ${CUDA_IMAGE} AS gpu
ARG BUNDLE_DIR=deploy/no-bundle
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/triage triage \
    && mkdir -p /models/bundle /data /data/trt-cache && chown -R triage /data
COPY --from=build /wheels /wheels
RUN python3.11 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "$(ls /wheels/*.whl)[postgres]" \
    && rm -rf /wheels
COPY ${BUNDLE_DIR} /models/bundle
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TRIAGE_BUNDLE=/models/bundle \
    TRIAGE_SERVER__HOST=0.0.0.0 \
    TRIAGE_SERVER__PORT=50051 \
    TRIAGE_WORKLIST__PATH=/data/worklist.db \
    TRIAGE_INFERENCE__PROVIDERS=TensorRT,CUDA,CPU \
    TRIAGE_INFERENCE__TRT_ENGINE_CACHE=/data/trt-cache
VOLUME ["/data"]
USER triage
WORKDIR /home/triage
EXPOSE 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["triage-probe", "--server", "127.0.0.1:50051", "--service", "readiness"]
ENTRYPOINT ["triage-serve"]
