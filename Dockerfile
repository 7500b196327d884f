# adsb-pipeline: one image for every service (migrate, ingest, worker, or `run` for both).
# Build: docker-compose build   (see docs/deploy.md)
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The service never needs root: a fixed uid makes the volumes' ownership predictable.
RUN groupadd --system --gid 10001 adsb \
 && useradd --system --uid 10001 --gid adsb --home-dir /home/adsb --create-home adsb

WORKDIR /opt/adsb-pipeline
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY migrations ./migrations

# Installed exactly as README.md says: a virtualenv, then `pip install .` from the checkout.
RUN python3 -m venv /opt/venv && . /opt/venv/bin/activate && pip install .
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv

# Models and data (ingest journal) outlive the container. Inside a container the metrics and
# /healthz endpoint must listen on all interfaces; compose publishes it on 127.0.0.1 only.
ENV ADSB_DATA_DIR=/data \
    ADSB_MODEL_DIR=/models \
    ADSB_METRICS_HOST=0.0.0.0 \
    ADSB_METRICS_PORT=9108
RUN mkdir -p /data /models && chown adsb:adsb /data /models
VOLUME ["/data", "/models"]

USER adsb
WORKDIR /data
# 9108: /metrics and /healthz; 8760: the web pages (served by `run` and `worker`).
EXPOSE 9108 8760

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ADSB_METRICS_PORT', '9108'), timeout=4)" || exit 1

ENTRYPOINT ["adsb-pipeline"]
CMD ["run"]
