"""The docker-compose cluster, run for real: ``python -m paysaga.ops.compose`` (scripts/dev.py
compose-test and compose-engine).

engine      a Docker engine: the running one, or one installed and started here, then stopped
host        what dockerd changes on the host, read before it starts and put back after
images      the base image: python:3.11-slim, or one built from Debian packages where no
            container registry is reachable
project     one compose project (default or production): build, up, down, one-off containers
checks      what a user relies on, checked from the host through the published port
reconciliation  the production profile's nightly reconciliation: scheduled, read-only, and a run
            now over the test's purchases finds every source in agreement
nats_probe  runs inside the private network: who can talk to NATS
database_probe  runs in the reconcile container: what its PostgreSQL role may read and write
"""
