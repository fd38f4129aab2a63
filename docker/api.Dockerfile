# syntax=docker/dockerfile:1
# The API image: FastAPI, the outbox relay and `lethe migrate`. No torch: the API never imports the engine's
# PyTorch modules (DESIGN.md: torch, scikit-learn and matplotlib sit in the `worker` extra).
#   docker build -f docker/api.Dockerfile -t lethe-api .
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LETHE_DATA_DIR=/var/lib/lethe \
    LETHE_ARTIFACT_DIR=/var/lib/lethe/artifacts

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/lethe lethe \
 && mkdir -p /var/lib/lethe/artifacts /var/lib/lethe/keys \
 && chmod 0700 /var/lib/lethe/keys \
 && chown -R lethe:lethe /var/lib/lethe

WORKDIR /srv/lethe
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
# Editable: `lethe migrate` finds alembic.ini and migrations/ beside the app package.
RUN pip install -e .

USER lethe
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=5 \
  CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"
CMD ["lethe", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]
