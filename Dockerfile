# skipvit inference service, CPU-only image.
#
#   docker build -t skipvit:latest .
#   docker run --rm -p 127.0.0.1:8000:8000 skipvit:latest
#
# Stage 1 builds a self-contained virtual environment (CPU torch wheel + the
# skipvit package, no dev/training extras); stage 2 copies that venv and the
# default bundle onto a clean slim base and runs as an unprivileged user.

# ---------------------------------------------------------------------------
FROM python:3.11.11-slim-bookworm AS builder

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# torch first, from the CPU-only wheel index, so the package install below
# finds it already satisfied and never pulls the (much larger) CUDA build.
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY skipvit/ skipvit/
COPY model/ model/
COPY training/ training/
COPY kernels/ kernels/
COPY service/ service/
COPY benchmarks/ benchmarks/

# `.` is the local project (version fixed by pyproject.toml; hadolint's DL3013
# does not apply to a local path). Runtime dependencies only, no extras, each at
# the version in constraints.txt (the set the test suite passed with).
RUN pip install --no-cache-dir -c constraints.txt . \
    && python -c "import skipvit.cli, skipvit.model, skipvit.training, skipvit.kernels, skipvit.service"

# ---------------------------------------------------------------------------
FROM python:3.11.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="skipvit" \
      org.opencontainers.image.description="Adaptive-depth Vision Transformer inference service (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    SKIPVIT_BUNDLE=/app/checkpoints/fashion-mnist \
    SKIPVIT_HOST=0.0.0.0 \
    SKIPVIT_PORT=8000 \
    SKIPVIT_DEVICE=cpu

RUN groupadd --system --gid 10001 skipvit \
    && useradd --system --no-log-init --uid 10001 --gid skipvit \
       --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin skipvit

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
COPY --chown=root:root checkpoints/fashion-mnist /app/checkpoints/fashion-mnist

# Numeric ids: resolvable without /etc/passwd (and by runAsNonRoot checks).
USER 10001:10001

EXPOSE 8000

# No curl in slim images: probe with the interpreter that is already there.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=4).status == 200 else 1)"]

CMD ["skipvit", "serve", "--bundle", "/app/checkpoints/fashion-mnist", "--host", "0.0.0.0", "--port", "8000"]
