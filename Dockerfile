# syntax=docker/dockerfile:1
# One image for every Lianfang role: `lianfang serve`, `lianfang ingest` and the broker's init job (compose.yaml).
# Everything is installed at build time from the package index (or a mirror, via PIP_INDEX_URL); the running
# container needs no internet, which closed government intranets require. Not built on the development machines
# (no Docker engine there); tests/test_deploy_artefacts.py checks this file structurally.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 lianfang \
 && useradd --system --uid 10001 --gid lianfang --home-dir /var/lib/lianfang --no-create-home \
        --shell /usr/sbin/nologin lianfang \
 && mkdir -p /var/lib/lianfang /var/lib/lianfang-broker \
 && chown lianfang:lianfang /var/lib/lianfang /var/lib/lianfang-broker

# The source is bind-mounted for the install only, so it does not stay in the image (.dockerignore keeps .venv,
# var/ and .env out of the build context).
RUN --mount=type=bind,target=/src,rw \
    pip install --no-cache-dir /src

COPY --chmod=0755 docker/healthcheck.py /usr/local/bin/lianfang-healthcheck
COPY --chmod=0755 docker/dynsec_init.py /usr/local/bin/lianfang-dynsec-init

# Nothing may be installed once the image is built.
ENV PIP_NO_INDEX=1 \
    LIANFANG_ENV=prod \
    LIANFANG_DATA_DIR=/var/lib/lianfang \
    LIANFANG_STORE__SQLITE_PATH=/var/lib/lianfang/telemetry.db

USER lianfang
WORKDIR /var/lib/lianfang
EXPOSE 8000
ENTRYPOINT ["lianfang"]
CMD ["serve"]
