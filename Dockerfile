# syntax=docker/dockerfile:1
# One image for every Lianfang role (compose.yaml): `lianfang serve` (gateway + ingest + alert and joint-control
# engine), `lianfang ingest`, and the one-shot jobs (schema migration, broker dynamic-security file, TLS files).
#
# Two stages. The builder turns the source into wheels: Lianfang's own and those of every dependency, from the
# package index or a mirror (PIP_INDEX_URL build argument). The runtime stage installs only those wheels, with no
# index, no compiler and no source tree, and runs as an unprivileged user; the running container needs no
# internet, which closed government intranets require.
# Not built on the development machines (no Docker engine there); tests/test_deploy_artefacts.py checks this file
# structurally and `docker-compose config` checks compose.yaml (docs/deploy.md, "What was verified").

FROM python:3.11-slim AS builder
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# The source is bind-mounted (read-write, changes discarded) for the build only; .dockerignore keeps .venv, var/
# and .env out of the build context.
RUN --mount=type=bind,target=/src,rw \
    pip wheel --wheel-dir /wheels /src


FROM python:3.11-slim AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# uid 10001 runs Lianfang. /var/lib/lianfang-certs belongs to uid 1883, the eclipse-mosquitto image's mosquitto
# user: the certs-init job runs as 1883 so that the broker can read its key (compose.yaml, service certs-init).
RUN groupadd --system --gid 10001 lianfang \
 && useradd --system --uid 10001 --gid lianfang --home-dir /var/lib/lianfang --no-create-home \
        --shell /usr/sbin/nologin lianfang \
 && mkdir -p /var/lib/lianfang /var/lib/lianfang-broker /var/lib/lianfang-identities \
 && chown lianfang:lianfang /var/lib/lianfang /var/lib/lianfang-broker \
 && install -d -o lianfang -g lianfang -m 0700 /var/lib/lianfang-identities \
 && install -d -o 1883 -g 1883 -m 0700 /var/lib/lianfang-certs

# Only the builder's wheels, no index: what runs is exactly what was built.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels lianfang

COPY --chmod=0755 docker/healthcheck.py /usr/local/bin/lianfang-healthcheck
COPY --chmod=0755 docker/dynsec_init.py /usr/local/bin/lianfang-dynsec-init
COPY --chmod=0755 docker/migrate.py /usr/local/bin/lianfang-migrate

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
