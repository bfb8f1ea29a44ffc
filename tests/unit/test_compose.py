"""docker-compose.yml, checked without a Docker engine: the topology teams rely on in their tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from paysaga import natsconf
from paysaga.settings import DEFAULT_GRPC_PORTS

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("payments", "inventory", "ledger")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    found = compose["services"][name]
    assert isinstance(found, dict)
    return found


def test_the_cluster_has_the_cert_job_nats_and_the_three_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"certs", "nats", *SERVICES}


def test_only_the_payments_api_port_is_published(compose: dict[str, Any]) -> None:
    published = {name: spec.get("ports", []) for name, spec in compose["services"].items() if spec.get("ports")}

    assert published == {"payments": [f"{DEFAULT_GRPC_PORTS['payments']}:50051"]}
    assert all("expose" not in spec for spec in compose["services"].values())


def test_everything_but_payments_lives_only_on_the_internal_network(compose: dict[str, Any]) -> None:
    assert compose["networks"]["internal"]["internal"] is True
    assert service(compose, "certs")["network_mode"] == "none"
    for name in ("nats", "inventory", "ledger"):
        assert service(compose, name)["networks"] == ["internal"], name
    assert set(service(compose, "payments")["networks"]) == {"internal", "edge"}
    assert compose["networks"]["edge"].get("internal") is not True


def test_a_one_shot_job_gives_each_container_its_own_certificate_volume_before_anything_starts(
    compose: dict[str, Any],
) -> None:
    certs = service(compose, "certs")
    assert certs["restart"] == "no"
    assert certs["command"][0] == "paysaga-certs" and "bootstrap" in certs["command"]
    assert "certs:/certs" in certs["volumes"] and "ca:/ca" in certs["volumes"]
    export_dir = certs["command"][certs["command"].index("--export-to") + 1]
    for name in ("nats", *SERVICES):
        spec = service(compose, name)
        assert spec["depends_on"]["certs"]["condition"] == "service_completed_successfully", name
        assert f"{name}-certs:{export_dir}/{name}" in certs["volumes"], name
        # Each container sees its own key only: not the CA's, not another service's, not ops'.
        assert [volume for volume in spec["volumes"] if volume.endswith(":/certs:ro")] == [f"{name}-certs:/certs:ro"]
        assert not any(volume.startswith(("ca:", "certs:")) for volume in spec["volumes"]), name


def test_nats_runs_the_tls_configuration_with_fsync(compose: dict[str, Any]) -> None:
    nats = service(compose, "nats")
    config_mount = next(volume for volume in nats["volumes"] if volume.startswith("./deploy/nats/nats.conf:"))
    container_path = config_mount.split(":")[1]
    assert nats["command"] == ["nats-server", "--config", container_path]
    config = (REPO / "deploy" / "nats" / "nats.conf").read_text()
    assert config == natsconf.compose_config(), "stale: python -m paysaga.natsconf > deploy/nats/nats.conf"
    assert re.search(r"^\s*verify_and_map:\s*true\s*$", config, re.MULTILINE)
    assert re.search(r"^\s*sync_interval:\s*always\s*$", config, re.MULTILINE)
    assert "/certs/nats.crt" in config and "/certs/ca.crt" in config
    assert "tls://localhost:4222" in nats["healthcheck"]["test"]


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_uses_its_own_certificate_tls_nats_and_a_health_check(compose: dict[str, Any], name: str) -> None:
    spec = service(compose, name)
    environment = spec["environment"]

    assert spec["command"] == ["python", "-m", f"services.{name}"]
    assert environment["PAYSAGA_TLS_CERT"] == f"/certs/{name}.crt"
    assert environment["PAYSAGA_TLS_KEY"] == f"/certs/{name}.key"
    assert environment["PAYSAGA_TLS_CA"] == "/certs/ca.crt"
    assert environment["PAYSAGA_NATS_URL"].startswith("tls://nats:")
    assert environment["PAYSAGA_DATABASE_URL"].endswith(f"/data/{name}.db")
    assert f"{name}-data:/data" in spec["volumes"]
    assert spec["depends_on"]["nats"]["condition"] == "service_healthy"
    bind_port = environment["PAYSAGA_GRPC_BIND"].rsplit(":", 1)[1]
    assert spec["healthcheck"]["test"] == ["CMD", "paysaga-health", "grpc", f"localhost:{bind_port}"]
    assert spec["stop_grace_period"], "a graceful drain needs time before SIGKILL"


def test_every_named_volume_is_declared(compose: dict[str, Any]) -> None:
    used = {
        volume.split(":")[0]
        for spec in compose["services"].values()
        for volume in spec.get("volumes", [])
        if not volume.startswith(".")
    }
    assert used == set(compose["volumes"])


def test_image_is_built_from_the_dockerfile_without_certificates(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        assert spec["build"]["dockerfile"] == "Dockerfile", name
    dockerfile = (REPO / "Dockerfile").read_text()
    assert not re.search(r"^COPY .*certs", dockerfile, re.MULTILINE)
    assert "USER 10001" in dockerfile
    assert "certs" in (REPO / ".dockerignore").read_text().split()
    assert (REPO / "deploy" / "nats" / "nats.conf").exists()
