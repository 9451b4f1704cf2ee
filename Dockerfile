# syntax=docker/dockerfile:1
# taskapi container image: `docker build -t taskapi .`, then `taskapi serve|migrate|worker`.
# Two stages so the image carries the installed virtualenv and nothing used to build it.

# --- builder: resolve nothing, install exactly the locked runtime dependencies -------------------
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"

WORKDIR /src
# The lock alone first: this layer (the slow one) is reused until a dependency changes.
# Every runtime dependency ships a manylinux wheel for CPython 3.11, so no compiler is needed here.
COPY requirements.lock ./
RUN pip install --no-cache-dir --requirement requirements.lock

# --no-deps: the lock above already installed every dependency at its pinned version.
# README.md is read by setuptools for the package metadata (pyproject's `readme`).
COPY pyproject.toml README.md ./
COPY src ./src
# pip and setuptools only install: the image runs without them (no build tools at run time).
RUN pip install --no-cache-dir --no-deps . \
    && python -m compileall -q /opt/venv \
    && pip uninstall --yes pip setuptools

# --- runtime: the virtualenv, the migrations and a non-root user -------------------------------
FROM python:3.11-slim AS runtime

# A fixed numeric UID/GID so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
# --no-log-init: a large UID would otherwise grow /var/log/faillog to gigabytes.
RUN groupadd --system --gid 10001 taskapi \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /app \
       --shell /usr/sbin/nologin taskapi

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# `taskapi migrate` needs these at run time; the installed package has no source checkout to find
# them in, so ALEMBIC_CONFIG points at them. Owned by root: the app user only reads them.
COPY alembic.ini ./
COPY migrations ./migrations
# The app user's only writable place: /app is root's, and the local storage backend (the default)
# creates and writes STORAGE_DIR, so readiness and uploads need it to exist and be the user's.
# Mount a volume here to keep files across containers; with STORAGE_BACKEND=s3 it stays empty.
RUN mkdir -p /app/var/storage && chown -R 10001:10001 /app/var

ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ALEMBIC_CONFIG=/app/alembic.ini \
    STORAGE_DIR=/app/var/storage \
    ENVIRONMENT=production \
    HOST=0.0.0.0 \
    PORT=8000

USER 10001:10001

EXPOSE 8000

# Liveness only (no dependency is touched): a database outage must not get the container killed.
# Python, because the slim image has no curl or wget.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ops/health' % os.environ.get('PORT', '8000'), timeout=4)"]

CMD ["taskapi", "serve"]
