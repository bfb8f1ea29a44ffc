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
from paysaga.ops.pki import authority, revocation
from paysaga.runtime.security import tokens
from paysaga.runtime.settings import load_settings
from services.auth import clients_cli
from services.auth.config import OPTIONS as AUTH_OPTIONS
from services.auth.config import https_url
from tests.unit.compose_files import (
    DEFAULT_FILES,
    PRODUCTION_FILES,
    REPO,
    STANDBY_FILES,
    Override,
    Reset,
    load,
    merge,
    mount_targets,
    outside_mounts,
)

# The purchase saga's services, which the ops client calls; and every service, the OAuth
# authorization server (auth) included.
SAGA_SERVICES = ("payments", "inventory", "ledger")
SERVICES = (*SAGA_SERVICES, "auth")
# What the host reaches, on 127.0.0.1: the payments API, and the authorization server's HTTPS endpoints.
PUBLISHED = {"payments": "50051", "auth": "8443"}
PROFILES = {"default": DEFAULT_FILES, "production": PRODUCTION_FILES, "standby": STANDBY_FILES}


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


def environment_of(spec: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in spec["environment"].items()}


def files_read_by(name: str, spec: dict[str, Any]) -> list[Path]:
    """Every file a service process resolves from its settings (the authorization server's own
    among them), and what its health check reads."""
    environment = environment_of(spec)
    settings = load_settings(name, argv=[], environ=environment, options=AUTH_OPTIONS if name == "auth" else ())
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
    if name == "auth":
        paths.append(Path(settings.options["signing_key"]))
    paths += [Path(environment[key]) for key in ("PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY") if key in environment]
    return paths


def test_the_default_cluster_is_the_cert_job_nats_the_services_the_authorization_server_and_the_ops_client(
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


def writable_mount_holds(path: Path, spec: dict[str, Any]) -> bool:
    """Whether a volume mounted writable (not :ro) or a tmpfs of the container holds path."""
    writable = [volume.split(":")[1] for volume in spec.get("volumes", []) if not volume.endswith(":ro")]
    return any(path.is_relative_to(target) for target in [*writable, *spec.get("tmpfs", [])])


def test_ops_register_oauth_clients_in_the_authorization_servers_own_database(
    cluster: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`docker compose exec auth paysaga-oauth register ...` runs with the container's environment,
    on its read-only root file system: it must find the server's database, not its default under
    the image's working directory."""
    auth = service(cluster, "auth")
    for key, value in environment_of(auth).items():
        monkeypatch.setenv(key, value)

    url = clients_cli._parser().parse_args(["list"]).database_url

    assert url == auth["environment"]["PAYSAGA_DATABASE_URL"] != clients_cli.DEFAULT_DATABASE_URL
    if url.startswith("sqlite"):
        assert writable_mount_holds(Path(url.split(":///", 1)[1]), auth)
    else:
        assert url.startswith("postgresql+asyncpg://auth@postgres:5432/auth?")


def test_the_authorization_server_signs_with_the_key_only_its_own_volume_holds(cluster: dict[str, Any]) -> None:
    auth = service(cluster, "auth")
    signing_key = Path(auth["environment"]["PAYSAGA_TOKEN_SIGNING_KEY"])

    assert signing_key.name == tokens.SIGNING_KEY_FILE
    assert outside_mounts([signing_key], auth) == []
    assert "auth-certs:/certs:ro" in auth["volumes"]
    for name, spec in cluster["services"].items():
        if name != "auth":
            assert "PAYSAGA_TOKEN_SIGNING_KEY" not in spec.get("environment", {}), name


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("port", [None, "9443"])
def test_every_service_accepts_the_tokens_of_ops_and_of_the_authorization_server_at_its_published_url(
    profile: str, port: str | None
) -> None:
    compose = load(PROFILES[profile], {"PAYSAGA_OAUTH_PORT": port} if port else {})
    auth = service(compose, "auth")
    issuer = https_url(auth["environment"]["PAYSAGA_OAUTH_ISSUER"])
    published = [mapping for spec in compose["services"].values() for mapping in spec.get("ports", [])]

    # The URL clients on the host reach it by: its certificate names localhost, on the published port.
    assert issuer == f"https://localhost:{port or PUBLISHED['auth']}"
    assert f"127.0.0.1:{port or PUBLISHED['auth']}:{PUBLISHED['auth']}" in published
    assert auth["environment"]["PAYSAGA_HTTPS_BIND"] == f"0.0.0.0:{PUBLISHED['auth']}"
    for name in SERVICES:
        settings = load_settings(name, argv=[], environ=environment_of(service(compose, name)))
        assert settings.token_issuers == (tokens.DEFAULT_ISSUER, issuer), name


def test_nats_reads_its_certificates_and_keeps_its_streams_in_its_volumes(default: dict[str, Any]) -> None:
    nats = service(default, "nats")
    config_mount = next(volume for volume in nats["volumes"] if volume.startswith("./deploy/nats/nats.conf:"))
    assert config_mount.endswith(":ro")
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


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_nats_takes_the_keys_it_accepts_from_the_file_the_certs_job_exports_to_it(profile: str) -> None:
    """nats-server reads no CRL: its configuration includes the pins (nats-pins.conf) that
    paysaga-certs writes into its certificate volume, resolved, as nats-server does, from the
    configuration file's directory (even a path written as absolute)."""
    compose = load(PROFILES[profile])
    nats, certs = service(compose, "nats"), service(compose, "certs")
    [source] = [volume.split(":")[0] for volume in nats["volumes"] if volume.startswith("./deploy/nats/")]
    config = (REPO / source).read_text()
    includes = re.findall(r'^\s*include\s+"([^"]+)"\s*$', config, re.MULTILINE)
    tls_block = config[config.index("\ntls {") : config.index("\n}", config.index("\ntls {"))]

    assert len(includes) == 1 and f'include "{includes[0]}"' in tls_block
    assert not Path(includes[0]).is_absolute()
    [config_target] = [volume.split(":")[1] for volume in nats["volumes"] if volume.startswith("./deploy/nats/")]
    pins = Path(config_target).parent / includes[0]
    assert pins.name == revocation.NATS_PINS_FILE and pins == natsconf.COMPOSE_CERTS_DIR / pins.name
    assert outside_mounts([pins], nats) == []
    # The volume holding it is the one the certs job exports NATS's files to.
    [volume] = [volume.split(":")[0] for volume in nats["volumes"] if volume.split(":")[1] == str(pins.parent)]
    assert f"{volume}:/export/{authority.NATS_SERVER}" in certs["volumes"]
    assert Path(config_target) == natsconf.COMPOSE_CONFIG_PATH


def test_the_production_profile_runs_three_nats_nodes_and_every_service_knows_them_all(
    production: dict[str, Any],
) -> None:
    """Each node has its own configuration (routes to the others, mTLS), its own store, and the
    one NATS certificate, issued naming every node; every client of NATS is given every node and
    creates its streams with three replicas."""
    nodes = natsconf.COMPOSE_CLUSTER_NODES
    for node in nodes:
        spec = service(production, node)
        [mount] = [volume for volume in spec["volumes"] if volume.startswith("./deploy/nats/")]
        source, target, mode = mount.split(":")
        assert Path(source) == natsconf.compose_config_path(node) and mode == "ro"
        config = (REPO / source).read_text()
        assert config == natsconf.compose_config(node), "stale: python -m paysaga.ops.cluster.natsconf --write"
        assert spec["command"] == ["nats-server", "--config", target]
        assert f"{node}-data:/data" in spec["volumes"] and "nats-certs:/certs:ro" in spec["volumes"]
        for peer in nodes:
            assert f'"tls://{peer}:{natsconf.COMPOSE_ROUTE_PORT}"' in config
        assert re.search(r"^\s*verify:\s*true\s*$", config, re.MULTILINE)
    assert "--dns=nats=nats-2,nats-3" in service(production, "certs")["command"]
    for name, spec in production["services"].items():
        url = spec.get("environment", {}).get("PAYSAGA_NATS_URL")
        if url is None:
            continue
        assert url == ",".join(f"tls://{node}:4222" for node in nodes), name
        assert environment_of(spec)["PAYSAGA_STREAM_REPLICAS"] == "3", name
        if name == "ops":  # a tool, run by hand once the cluster is up
            continue
        healthy = [node for node in nodes if spec["depends_on"].get(node, {}).get("condition") == "service_healthy"]
        assert healthy == list(nodes), name


def test_only_payments_and_the_authorization_server_are_published_on_loopback_with_configurable_ports() -> None:
    published = {name: spec["ports"] for name, spec in load(DEFAULT_FILES)["services"].items() if spec.get("ports")}
    moved = load(DEFAULT_FILES, {"PAYSAGA_PAYMENTS_PORT": "6051", "PAYSAGA_OAUTH_PORT": "6443"})
    exposed = load(DEFAULT_FILES, {"PAYSAGA_OAUTH_ADDRESS": "192.0.2.10"})

    assert published == {name: [f"127.0.0.1:{port}:{port}"] for name, port in PUBLISHED.items()}
    assert service(moved, "payments")["ports"] == ["127.0.0.1:6051:50051"]
    assert service(moved, "auth")["ports"] == ["127.0.0.1:6443:8443"]
    assert service(exposed, "auth")["ports"] == ["192.0.2.10:8443:8443"]
    assert service(exposed, "payments")["ports"] == ["127.0.0.1:50051:50051"]
    assert all("expose" not in spec for spec in load(DEFAULT_FILES)["services"].values())


def test_everything_but_the_entry_point_lives_only_on_the_internal_network(cluster: dict[str, Any]) -> None:
    assert cluster["networks"]["internal"]["internal"] is True
    # Without it the host gets the network's gateway address and can reach every container on it.
    assert cluster["networks"]["internal"]["driver_opts"] == {"com.docker.network.bridge.inhibit_ipv4": "true"}
    assert service(cluster, "certs")["network_mode"] == "none"
    on_edge = {name for name, spec in cluster["services"].items() if "edge" in spec.get("networks", [])}
    published = {name for name, spec in cluster["services"].items() if spec.get("ports")}
    # payments and auth themselves, or the proxy in front of their replicas.
    assert on_edge == published and published in ({"payments", "auth"}, {"edge"})
    assert cluster["networks"]["edge"].get("internal") is not True


def test_a_one_shot_job_gives_each_container_its_own_certificate_volume_before_anything_starts(
    cluster: dict[str, Any],
) -> None:
    certs = service(cluster, "certs")
    command = certs["command"]
    assert certs["restart"] == "no"
    assert command[:2] == ["paysaga-certs", "bootstrap"] and "--client-tokens" in command
    assert "certs:/certs" in certs["volumes"] and "ca:/ca" in certs["volumes"]
    # paysaga-certs issue and revoke, run in this container, export again where bootstrap exported.
    export_dir = next(argument for argument in command if argument.startswith("/export") or "--export-to=" in argument)
    assert certs["environment"] == {
        "PAYSAGA_CERTS_DIR": "/certs",
        "PAYSAGA_CA_DIR": "/ca",
        "PAYSAGA_EXPORT_DIR": export_dir.removeprefix("--export-to="),
    }
    for name, spec in cluster["services"].items():
        if name == "certs" or (spec.get("image") != "paysaga:latest" and name != "postgres"):
            continue
        certificates = [volume for volume in spec["volumes"] if volume.endswith(":/certs:ro")]
        # Each container sees its own key only: not the CA's, not another service's, not ops'
        # (the nodes of the NATS cluster are one identity, "nats", with one certificate).
        owner = "nats" if name in natsconf.COMPOSE_CLUSTER_NODES else name
        assert certificates == [f"{owner}-certs:/certs:ro"], name
        assert f"{owner}-certs:/export/{owner}" in certs["volumes"], name
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
    targets = {environment[f"PAYSAGA_{name.upper()}_TARGET"] for name in SAGA_SERVICES}
    assert targets == {f"{name}:50051" for name in SAGA_SERVICES}


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
        files = {volume.split(":")[1] for volume in spec.get("volumes", []) if volume.startswith("./")}
        for target in mount_targets(spec):
            # An empty volume takes the owner of its mount point; one missing from the image is root's.
            # A file of the repository mounted read-only (nats.conf) needs no owner of ours.
            assert target in owned or target in files or target == "/tmp" or target.startswith("/etc/"), (name, target)


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


def test_production_publishes_only_the_proxy_in_front_of_payments_and_the_authorization_server(
    production: dict[str, Any],
) -> None:
    published = {name: spec["ports"] for name, spec in production["services"].items() if spec.get("ports")}
    edge = service(production, "edge")
    config = (REPO / "deploy" / "edge" / "haproxy.cfg").read_text()
    # Each section's name, and the address it binds (a frontend) or the replicas it sends to (a backend).
    frontends = dict(re.findall(r"^frontend (\w+)\n(?:[ \t]+.*\n)*?[ \t]+bind (\S+)", config, re.MULTILINE))
    backends = dict(re.findall(r"^backend (\w+)\n(?:[ \t]+.*\n)*?[ \t]+server-template \w+ \d+ (\S+)", config, re.M))

    assert published == {"edge": [f"127.0.0.1:{port}:{port}" for port in PUBLISHED.values()]}
    assert "mode tcp" in config, "TLS passes through: clients do mutual TLS with the replicas themselves"
    for name, port in PUBLISHED.items():
        assert service(production, name)["networks"] == ["internal"], name
        assert edge["depends_on"][name]["condition"] == "service_healthy", name
        assert (frontends[name], backends[name]) == (f":{port}", f"{name}:{port}"), name
    # Healthy only while HAProxy sees a replica of each up, through its monitor on loopback.
    assert "monitor fail if { nbsrv(payments) lt 1 } || { nbsrv(auth) lt 1 }" in config
    assert frontends["health"] == "127.0.0.1:8405"
    assert "/dev/tcp/127.0.0.1/8405" in edge["healthcheck"]["test"][-1]


def test_postgres_takes_only_certificates_and_each_role_only_its_own_database(production: dict[str, Any]) -> None:
    postgres = service(production, "postgres")
    entrypoint = (REPO / "deploy" / "postgres" / "entrypoint.sh").read_text()

    assert postgres["networks"] == ["internal"] and not postgres.get("ports")
    assert postgres["stop_signal"] == "SIGINT", "fast shutdown, not a wait for pooled connections"
    assert "postgres-certs:/certs:ro" in postgres["volumes"]
    assert "postgres-certs:/export/postgres" in service(production, "certs")["volumes"]
    assert (
        "--services=nats,payments,inventory,ledger,auth,reconcile,postgres" in service(production, "certs")["command"]
    )
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
