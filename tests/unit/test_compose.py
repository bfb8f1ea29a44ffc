"""The compose files, checked without a Docker engine: the topology teams rely on in their tests.

`python3 scripts/dev.py compose-test` runs the same files for real; these checks catch at unit
speed what would make it fail, e.g. a setting that resolves to a path no volume holds.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from paysaga.ops.client.healthcheck import default_client_tls
from paysaga.ops.cluster import natsconf
from paysaga.runtime.settings import load_settings
from tests.unit.compose_files import (
    DEFAULT_FILES,
    PRODUCTION_FILES,
    REPO,
    Override,
    Reset,
    load,
    merge,
    mount_targets,
    outside_mounts,
)

SERVICES = ("payments", "inventory", "ledger")
PROFILES = {"default": DEFAULT_FILES, "production": PRODUCTION_FILES}


@pytest.fixture(scope="module", params=sorted(PROFILES))
def cluster(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(PROFILES[request.param])


@pytest.fixture(scope="module")
def default() -> dict[str, Any]:
    return load(DEFAULT_FILES)


@pytest.fixture(scope="module")
def production() -> dict[str, Any]:
    return load(PRODUCTION_FILES)


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    found = compose["services"][name]
    assert isinstance(found, dict)
    return found


def files_read_by(name: str, spec: dict[str, Any]) -> list[Path]:
    """Every file a service process resolves from its settings, and what its health check reads."""
    environment = {key: str(value) for key, value in spec["environment"].items()}
    settings = load_settings(name, argv=[], environ=environment)
    health = default_client_tls(environment)
    paths = [
        settings.tls.cert_file,
        settings.tls.key_file,
        settings.tls.ca_file,
        settings.token_keys_file,
        health.cert_file,
        health.key_file,
        health.ca_file,
    ]
    if settings.database_url.startswith("sqlite"):
        paths.append(Path(settings.database_url.split(":///", 1)[1]))
    paths += [Path(environment[key]) for key in ("PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY") if key in environment]
    return paths


def test_the_default_cluster_is_the_cert_job_nats_the_three_services_and_the_ops_client(
    default: dict[str, Any],
) -> None:
    assert set(default["services"]) == {"certs", "nats", *SERVICES, "ops"}
    assert service(default, "ops")["profiles"] == ["tools"], "ops is a one-off client, not started by up"


@pytest.mark.parametrize("name", SERVICES)
def test_every_file_a_service_reads_is_in_a_volume_it_mounts(cluster: dict[str, Any], name: str) -> None:
    spec = service(cluster, name)

    assert outside_mounts(files_read_by(name, spec), spec) == []


def test_the_mount_check_finds_a_setting_that_resolves_into_the_image() -> None:
    """The blocker the first real run found: without PAYSAGA_CERTS_DIR, the token keys resolved to
    certs/token-keys.json under the image's working directory, and every service restarted forever."""
    spec = service(load(DEFAULT_FILES), "payments")
    spec = {**spec, "environment": {k: v for k, v in spec["environment"].items() if k != "PAYSAGA_CERTS_DIR"}}

    assert "/app/certs/token-keys.json" in outside_mounts(files_read_by("payments", spec), spec)


def test_a_service_writes_its_database_to_a_writable_volume_and_nothing_else(default: dict[str, Any]) -> None:
    for name in SERVICES:
        spec = service(default, name)
        assert spec["read_only"] is True, name
        assert f"{name}-data:/data" in spec["volumes"], name
        assert spec["environment"]["PAYSAGA_DATABASE_URL"] == f"sqlite+aiosqlite:////data/{name}.db"


def test_nats_reads_its_certificates_and_keeps_its_streams_in_its_volumes(default: dict[str, Any]) -> None:
    nats = service(default, "nats")
    config_mount = next(volume for volume in nats["volumes"] if volume.startswith("./deploy/nats/nats.conf:"))
    assert nats["command"] == ["nats-server", "--config", config_mount.split(":")[1]]
    config = (REPO / "deploy" / "nats" / "nats.conf").read_text()
    assert config == natsconf.compose_config(), "stale: python -m paysaga.ops.cluster.natsconf > deploy/nats/nats.conf"
    assert re.search(r"^\s*verify_and_map:\s*true\s*$", config, re.MULTILINE)
    assert re.search(r"^\s*sync_interval:\s*always\s*$", config, re.MULTILINE)
    paths = [
        Path(found)
        for found in re.findall(r'^\s*(?:cert_file|key_file|ca_file|store_dir):\s*"([^"]+)"', config, re.MULTILINE)
    ]
    assert len(paths) == 4
    assert outside_mounts(paths, nats) == []
    # nats-server keeps its streams in <store_dir>/jetstream: store_dir is the volume itself.
    assert 'store_dir: "/data"' in config and "nats-data:/data" in nats["volumes"]
    health = default_client_tls({key: str(value) for key, value in nats["environment"].items()})
    assert outside_mounts([health.cert_file, health.key_file, health.ca_file], nats) == []


def test_only_payments_is_published_on_loopback_with_a_configurable_port() -> None:
    published = {name: spec["ports"] for name, spec in load(DEFAULT_FILES)["services"].items() if spec.get("ports")}
    moved = load(DEFAULT_FILES, {"PAYSAGA_PAYMENTS_PORT": "6051"})

    assert published == {"payments": ["127.0.0.1:50051:50051"]}
    assert service(moved, "payments")["ports"] == ["127.0.0.1:6051:50051"]
    assert all("expose" not in spec for spec in load(DEFAULT_FILES)["services"].values())


def test_everything_but_the_entry_point_lives_only_on_the_internal_network(cluster: dict[str, Any]) -> None:
    assert cluster["networks"]["internal"]["internal"] is True
    # Without it the host gets the network's gateway address and can reach every container on it.
    assert cluster["networks"]["internal"]["driver_opts"] == {"com.docker.network.bridge.inhibit_ipv4": "true"}
    assert service(cluster, "certs")["network_mode"] == "none"
    on_edge = {name for name, spec in cluster["services"].items() if "edge" in spec.get("networks", [])}
    published = {name for name, spec in cluster["services"].items() if spec.get("ports")}
    assert on_edge == published and len(published) == 1
    assert cluster["networks"]["edge"].get("internal") is not True


def test_a_one_shot_job_gives_each_container_its_own_certificate_volume_before_anything_starts(
    cluster: dict[str, Any],
) -> None:
    certs = service(cluster, "certs")
    command = certs["command"]
    assert certs["restart"] == "no"
    assert command[:2] == ["paysaga-certs", "bootstrap"] and "--client-tokens" in command
    assert "certs:/certs" in certs["volumes"] and "ca:/ca" in certs["volumes"]
    assert certs["environment"] == {"PAYSAGA_CERTS_DIR": "/certs", "PAYSAGA_CA_DIR": "/ca"}
    for name, spec in cluster["services"].items():
        if name == "certs" or (spec.get("image") != "paysaga:latest" and name != "postgres"):
            continue
        certificates = [volume for volume in spec["volumes"] if volume.endswith(":/certs:ro")]
        # Each container sees its own key only: not the CA's, not another service's, not ops'.
        assert certificates == [f"{name}-certs:/certs:ro"], name
        assert f"{name}-certs:/export/{name}" in certs["volumes"], name
        assert not any(volume.startswith(("ca:", "certs:")) for volume in spec["volumes"]), name
        if name != "ops":  # a one-off client, run once the cluster is up
            assert spec["depends_on"]["certs"]["condition"] == "service_completed_successfully", name


def test_the_ops_client_reads_only_the_ops_files_and_reaches_the_services_inside(default: dict[str, Any]) -> None:
    ops = service(default, "ops")
    environment = ops["environment"]
    files = default_client_tls(environment)

    assert ops["entrypoint"] == ["paysaga"] and ops["networks"] == ["internal"]
    assert ops["volumes"] == ["ops-certs:/certs:ro"] and ops["read_only"] is True
    assert outside_mounts([files.cert_file, files.key_file, files.cert_file.with_suffix(".token")], ops) == []
    assert files.cert_file.name == "ops.crt"
    assert {environment[f"PAYSAGA_{name.upper()}_TARGET"] for name in SERVICES} == {f"{n}:50051" for n in SERVICES}


def test_the_image_is_built_once_from_a_configurable_base_without_certificates(cluster: dict[str, Any]) -> None:
    builds = {name: spec["build"] for name, spec in cluster["services"].items() if "build" in spec}
    ours = [name for name, spec in cluster["services"].items() if spec.get("image") == "paysaga:latest"]
    assert builds["certs"]["dockerfile"] == "Dockerfile"
    assert [name for name in ours if name in builds] == ["certs"]
    assert all(service(cluster, name)["pull_policy"] == "never" for name in ours if name != "certs")
    for name, build in builds.items():
        assert build["args"] == {"BASE_IMAGE": "python:3.11-slim"}, name
        dockerfile = (REPO / build["dockerfile"]).read_text()
        assert "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}\n" in dockerfile, name
        assert not re.search(r"^COPY .*certs", dockerfile, re.MULTILINE), name
    assert "certs" in (REPO / ".dockerignore").read_text().split()


def test_the_image_user_has_a_group_and_owns_every_mount_point(cluster: dict[str, Any]) -> None:
    dockerfile = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    created = re.search(r"mkdir -p ([^\n&]+)", dockerfile)
    assert created is not None
    owned = set(created[1].split())

    assert "groupadd --system --gid 10001 paysaga" in dockerfile
    assert "--uid 10001 --gid paysaga" in dockerfile and "USER paysaga:paysaga" in dockerfile
    for name, spec in cluster["services"].items():
        if spec.get("image") != "paysaga:latest":
            continue
        for target in mount_targets(spec):
            # An empty volume takes the owner of its mount point; one missing from the image is root's.
            assert target in owned or target == "/tmp" or target.startswith("/etc/"), (name, target)


def test_every_named_volume_is_declared(cluster: dict[str, Any]) -> None:
    used = {
        volume.split(":")[0]
        for spec in cluster["services"].values()
        for volume in spec.get("volumes", [])
        if not volume.startswith(".")
    }
    assert used == set(cluster["volumes"])


def test_production_runs_two_replicas_of_each_service_on_postgresql(production: dict[str, Any]) -> None:
    assert production["name"] != load(DEFAULT_FILES)["name"], "a project of its own, beside the default"
    for name in SERVICES:
        spec = service(production, name)
        environment = spec["environment"]
        assert spec["deploy"]["replicas"] == 2, name
        assert spec["depends_on"]["postgres"]["condition"] == "service_healthy", name
        assert (
            environment["PAYSAGA_DATABASE_URL"] == f"postgresql+asyncpg://{name}@postgres:5432/{name}?ssl=verify-full"
        )
        assert (environment["PGSSLCERT"], environment["PGSSLKEY"]) == (f"/certs/{name}.crt", f"/certs/{name}.key")
        assert "PASSWORD" not in " ".join(environment), name


def test_production_publishes_only_the_proxy_in_front_of_payments(production: dict[str, Any]) -> None:
    published = {name: spec["ports"] for name, spec in production["services"].items() if spec.get("ports")}
    edge = service(production, "edge")
    config = (REPO / "deploy" / "edge" / "haproxy.cfg").read_text()

    assert published == {"edge": ["127.0.0.1:50051:50051"]}
    assert service(production, "payments")["networks"] == ["internal"]
    assert edge["depends_on"]["payments"]["condition"] == "service_healthy"
    assert "bind :50051" in config and "payments:50051" in config and "mode tcp" in config
    # Healthy only while HAProxy sees a payments replica up, through its monitor on loopback.
    assert "monitor fail if { nbsrv(payments) lt 1 }" in config and "bind 127.0.0.1:8405" in config
    assert "/dev/tcp/127.0.0.1/8405" in edge["healthcheck"]["test"][-1]


def test_postgres_takes_only_certificates_and_each_role_only_its_own_database(production: dict[str, Any]) -> None:
    postgres = service(production, "postgres")
    entrypoint = (REPO / "deploy" / "postgres" / "entrypoint.sh").read_text()

    assert postgres["networks"] == ["internal"] and not postgres.get("ports")
    assert postgres["stop_signal"] == "SIGINT", "fast shutdown, not a wait for pooled connections"
    assert "postgres-certs:/certs:ro" in postgres["volumes"]
    assert "postgres-certs:/export/postgres" in service(production, "certs")["volumes"]
    assert "--services=nats,payments,inventory,ledger,postgres" in service(production, "certs")["command"]
    assert postgres["healthcheck"]["test"][1] == "pg_isready"
    assert 'echo "hostssl $service $service all cert clientname=DN map=services"' in entrypoint
    assert "--auth-host=reject" in entrypoint and "ssl = on" in entrypoint
    assert set(re.findall(r"^services=\"([^\"]+)\"", entrypoint, re.MULTILINE)[0].split()) == set(SERVICES)


def test_the_merge_of_compose_files_follows_compose_rules() -> None:
    """The production file relies on these: without !override payments would stay on the edge
    network, without !reset it would still publish its port."""
    base = {"networks": ["internal", "edge"], "ports": ["1:1"], "command": ["a"], "environment": {"A": "1"}}

    assert merge(base, {"networks": ["internal"], "command": ["b"], "environment": {"B": "2"}}) == {
        "networks": ["internal", "edge"],
        "ports": ["1:1"],
        "command": ["b"],
        "environment": {"A": "1", "B": "2"},
    }
    assert merge(base, {"networks": Override(["internal"]), "ports": Reset()})["networks"] == ["internal"]
    assert merge(base, {"ports": Reset()})["ports"] == []
