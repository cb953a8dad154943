# oktopost-connect: one image for every component (shim, worker, sandbox, Flower); docker-compose.yml
# picks the component with its `command`, e.g. `oktopost-connect worker --concurrency 8`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer: rebuilding after a code change does not reinstall them.
COPY pyproject.toml README.md LICENSE ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY celeryconfig.py ./
COPY worker ./worker
COPY api_shim ./api_shim
COPY sandbox ./sandbox
COPY cli ./cli
RUN pip install --no-cache-dir . \
    && rm -rf build ./*.egg-info

# Never run as root; /app stays read-only for the service user.
RUN useradd --system --create-home --uid 10001 --user-group okc
USER okc
# The installed package (not /app) is what runs: celery finds `worker` and `celeryconfig` in site-packages.
WORKDIR /home/okc

EXPOSE 8000 5555 8090
# No ENTRYPOINT: compose commands read as the real commands (`oktopost-connect shim ...`, `celery -A worker flower`).
CMD ["oktopost-connect", "shim", "--host", "0.0.0.0", "--port", "8000"]
