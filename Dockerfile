# oktopost-connect: one image for every component (shim, worker, sandbox, Flower); docker-compose.yml
# picks the component with its `command`, e.g. `oktopost-connect worker --concurrency 8`.
#
# The base image is pinned by digest, so a rebuild starts from the same bytes; move it on deliberately
# (security updates of Debian and Python) with `docker buildx imagetools inspect python:3.11-slim`.
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer: rebuilding after a code change does not reinstall them.
# Exactly the versions of requirements.lock (`uv pip compile`, its header says how to regenerate it),
# so two builds ship the same libraries; the package itself adds none (--no-deps). The lock holds the
# `otel` extra too: a container exports traces once OTEL_EXPORTER_OTLP_ENDPOINT is set (docs/operations.md).
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

COPY pyproject.toml README.md LICENSE celeryconfig.py ./
COPY worker ./worker
COPY api_shim ./api_shim
COPY sandbox ./sandbox
COPY cli ./cli
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info

# Never run as root; /app stays read-only for the service user.
RUN useradd --system --create-home --uid 10001 --user-group okc
USER okc
# The installed package (not /app) is what runs: celery finds `worker` and `celeryconfig` in site-packages.
WORKDIR /home/okc

EXPOSE 8000 5555 8090
# No ENTRYPOINT: compose commands read as the real commands (`oktopost-connect shim ...`, `celery -A worker flower`).
CMD ["oktopost-connect", "shim", "--host", "0.0.0.0", "--port", "8000"]
