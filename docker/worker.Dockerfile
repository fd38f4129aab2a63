# syntax=docker/dockerfile:1
# The worker image: Celery + the PyTorch engine (`pip install .[worker]`). BASE_IMAGE selects the base:
#   GPU (default): a CUDA runtime base; PyPI's Linux torch wheel is CUDA-enabled, so the worker uses the GPU
#                  when the container gets one (LETHE_DEVICE=auto) and the CPU otherwise.
#     docker build -f docker/worker.Dockerfile -t lethe-worker .
#   CPU only (smaller: no CUDA libraries):
#     docker build -f docker/worker.Dockerfile -t lethe-worker \
#       --build-arg BASE_IMAGE=python:3.12-slim-bookworm \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#   Another CUDA build of torch: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 (match the
#   host driver; `nvidia-smi` shows the newest CUDA it supports).
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

# torch is pinned in pyproject.toml's worker extra; keep the two equal (tests/deploy checks it).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    LETHE_DATA_DIR=/var/lib/lethe \
    LETHE_ARTIFACT_DIR=/var/lib/lethe/artifacts \
    LETHE_DEVICE=auto

# CUDA bases bring no Python: install the distribution's (Ubuntu 24.04: 3.12). A venv keeps pip off the system.
RUN if ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && python3 -m venv /opt/venv \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/lethe lethe \
 && mkdir -p /var/lib/lethe/artifacts /var/lib/lethe/keys \
 && chmod 0700 /var/lib/lethe/keys \
 && chown -R lethe:lethe /var/lib/lethe

# torch first, in its own layer: it is most of the image and changes least.
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"

WORKDIR /srv/lethe
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -e ".[worker]"

USER lethe
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
  CMD celery -A workers.celery_app:celery inspect ping -d "celery@$HOSTNAME" --timeout 10 >/dev/null || exit 1
# One process per GPU is usual; scale with more containers (docker compose up --scale worker=N).
CMD ["lethe", "worker", "--concurrency", "1"]
