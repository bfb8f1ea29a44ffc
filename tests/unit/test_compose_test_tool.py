"""The compose test's own logic, without a Docker engine: what it compares, how it finds things,
and that its checks fail when what they check is wrong."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from paysaga.common.v1.money_pb2 import Money
from paysaga.ops.cluster.natsconf import CONSUMES
from paysaga.ops.compose import checks, engine, host, images
from paysaga.ops.compose.__main__ import Interrupts
from paysaga.ops.compose.project import PRODUCTION, Topology
from paysaga.ops.pki import authority, revocation
from paysaga.ops.pki.cli import main as certs_main
from paysaga.payments.v1 import payments_pb2
from paysaga.runtime.security import tls
from paysaga.runtime.security.revocation import CRL_FILE, RevocationList
from paysaga.runtime.settings import TlsFiles
from tests.unit.compose_files import REPO

SHOP = checks.Shop(("wallet-a", "wallet-b"), 10_000, "merchant", "mug", 10, "scarce")


def payment(status: str, payer: str = "wallet-a", quantity: int = 1) -> payments_pb2.Payment:
    return payments_pb2.Payment(
        payment_id=str(uuid.uuid4()),
        payer_account_id=payer,
        quantity=quantity,
        amount=Money(amount_minor=checks.PRICE_MINOR * quantity, currency="EUR"),
        status=payments_pb2.PaymentStatus.Value(f"PAYMENT_STATUS_{status}"),
    )


class FakeOps:
    """What `paysaga --json` prints for balances and items, as the ops container would."""

    def __init__(self, balances: dict[str, tuple[int, int]], item: dict[str, str], scarce: dict[str, str]) -> None:
        self.balances, self.item, self.scarce = balances, item, scarce

    def ops(self, commands: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for command in commands:
            if command[:2] == ["account", "balance"]:
                balance, held = self.balances[command[2]]
                record = {"account_id": command[2], "balance_minor": str(balance)}
                found.append(record | ({"held_minor": str(held)} if held else {}))
            else:
                found.append(self.item if command[2] == SHOP.sku else self.scarce)
        return found


def books(**changes: Any) -> FakeOps:
    """The books after wallet-a bought one mug and wallet-b two, unless changed."""
    balances = {"wallet-a": (8_750, 0), "wallet-b": (7_500, 0), "merchant": (3_750, 0)} | changes.pop("balances", {})
    item = {"sku": "mug", "quantity_available": "7", "quantity_sold": "3", "quantity_received": "10"}
    return FakeOps(balances, item | changes.pop("item", {}), {"sku": "scarce"} | changes.pop("scarce", {}))


ENDED = [payment("COMPLETED"), payment("COMPLETED", "wallet-b", 2), payment("FAILED")]


def test_the_books_check_passes_when_money_and_stock_agree_with_the_payments() -> None:
    summary = checks.check_books(books(), SHOP, ENDED)

    assert "3 payments (2 COMPLETED, 1 FAILED)" in summary and "hold 20000 = the deposits" in summary


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"balances": {"wallet-a": (8_750, 1_250)}}, "wallet wallet-a"),  # a hold left behind
        ({"balances": {"merchant": (2_500, 0)}}, "merchant"),  # a capture lost
        ({"balances": {"wallet-b": (8_750, 0)}}, "wallet wallet-b"),  # charged once for two
        ({"item": {"quantity_reserved": "1", "quantity_available": "6"}}, "mug"),  # a reservation left
        ({"item": {"quantity_sold": "4", "quantity_available": "6"}}, "mug"),  # sold more than paid for
        ({"scarce": {"quantity_reserved": "1"}}, "scarce"),  # the refused item moved
    ],
)
def test_the_books_check_fails_on_a_planted_fault(fault: dict[str, Any], message: str) -> None:
    with pytest.raises(checks.CheckFailed, match=message):
        checks.check_books(books(**fault), SHOP, ENDED)


def test_the_books_check_fails_while_a_payment_has_not_ended() -> None:
    with pytest.raises(checks.CheckFailed, match="not ended"):
        checks.check_books(books(), SHOP, [*ENDED, payment("FUNDS_HELD")])


class FakeLanes:
    """What `paysaga --json lanes` prints: one row per lane consumer of every service."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def ops(self, commands: Sequence[Sequence[str]]) -> list[Any]:
        assert list(commands) == [["lanes"]]
        return [self.rows]


def lane_rows() -> list[dict[str, Any]]:
    return [
        {"service": service, "producer": s.producer, "lane": s.lane, "pending": 0, "ack_pending": 0}
        for service, subscriptions in CONSUMES.items()
        for s in subscriptions
    ]


def test_the_lanes_check_passes_when_every_lane_exists_and_is_idle() -> None:
    assert "none with events waiting" in checks.check_lanes(FakeLanes(lane_rows()))


def test_the_lanes_check_fails_on_a_missing_consumer_or_a_backlog() -> None:
    missing = lane_rows()
    missing[0] = {"service": missing[0]["service"], "producer": missing[0]["producer"]}  # no consumer
    with pytest.raises(checks.CheckFailed, match="unlike the services' lanes"):
        checks.check_lanes(FakeLanes(missing))
    waiting = lane_rows()
    waiting[-1]["pending"] = 3
    with pytest.raises(checks.CheckFailed, match="events still waiting"):
        checks.check_lanes(FakeLanes(waiting))


@pytest.mark.parametrize(
    ("sources", "mirror"),
    [
        (["Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n"], "http://mirror.example/debian"),
        (["deb [signed-by=/k.gpg] https://m.example/debian bookworm main\n"], "https://m.example/debian"),
        (["deb https://packages.cloud.google.com/apt cloud-sdk main\n"], None),
        (["# deb http://old.example/debian bookworm main\n"], None),
    ],
)
def test_the_debian_mirror_is_read_from_apt_sources(sources: list[str], mirror: str | None) -> None:
    assert engine.mirror_in(sources) == mirror


RULESET = """table ip nat {
\tchain DOCKER {
\t\tiifname "docker0" return
\t}
}
table inet mine {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t}
}
# Warning: table ip nat is managed by iptables-nft, do not touch!
"""


def state(**changes: Any) -> host.HostState:
    fields: dict[str, Any] = {
        "boot_id": host.boot_id(),
        "sysctls": {"net/ipv4/ip_forward": "0"},
        "tables": {},
        "links": ["eth0", "lo"],
        "mounts": ["/"],
        "modules": [],
    }
    return host.HostState(**(fields | changes))


def test_nft_listings_are_split_into_tables() -> None:
    tables = host.parse_tables(RULESET)

    assert set(tables) == {"ip nat", "inet mine"}
    assert tables["ip nat"].startswith("table ip nat {\n") and tables["ip nat"].endswith("\n}\n")
    assert "Warning" not in "".join(tables.values())


def test_host_differences_name_what_dockerd_left_and_nothing_else() -> None:
    before = state()
    after = state(
        sysctls={"net/ipv4/ip_forward": "1"},
        tables={"ip nat": "table ip nat {\n}\n"},
        links=["br-0123456789ab", "docker0", "eth0", "lo", "wlan0"],
        mounts=["/", "/var/lib/docker", "/mnt/usb"],
        modules=["br_netfilter", "loop"],
    )

    assert before.differences(before) == []
    assert before.differences(after) == [
        "sysctl net.ipv4.ip_forward is '1', was '0'",
        "nftables table ip nat differs",
        "network link br-0123456789ab is new",
        "network link docker0 is new",
        "mount /var/lib/docker is new",
        "kernel module br_netfilter is loaded",
    ]


def test_tables_with_rules_nft_cannot_express_are_not_promised_back() -> None:
    translated = 'table ip filter {\n\tchain INPUT {\n\t\txt match "recent" counter\n\t}\n}\n'

    assert state(tables={"ip filter": translated}).unrestorable_tables() == ["ip filter"]
    assert state(tables=host.parse_tables(RULESET)).unrestorable_tables() == []


def test_a_started_engine_record_survives_a_round_trip_in_this_boot_only(tmp_path: Path) -> None:
    record = tmp_path / "engine.json"
    started = engine.StartedEngine(123, 456, state())
    started.save(record)

    assert engine.StartedEngine.load(record) == started
    assert record.stat().st_mode & 0o777 == 0o600
    engine.StartedEngine(123, 456, state(boot_id="another boot")).save(record)
    assert engine.StartedEngine.load(record) is None


def test_stopping_by_pid_stops_the_process_and_what_it_started() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
         "'import time; time.sleep(60)']); time.sleep(60)"],
    )  # fmt: skip
    try:
        found: list[tuple[int, int]] = []
        for _ in range(100):
            found = engine.descendants(parent.pid)
            if found:
                break
            time.sleep(0.05)
        stat = engine._stat(parent.pid)
        assert stat is not None and len(found) == 1

        left = engine._stop([(parent.pid, stat[2]), *found], timeout_s=5)

        assert left == []
        assert not engine._alive(*found[0])
    finally:
        parent.kill()
        parent.wait()


def test_a_reused_pid_is_not_taken_for_the_process_that_had_it() -> None:
    stat = engine._stat(os.getpid())
    assert stat is not None

    assert engine._alive(os.getpid(), stat[2])
    assert not engine._alive(os.getpid(), stat[2] + 1)


def test_the_base_image_is_rebuilt_when_a_trusted_certificate_changes_and_every_week(tmp_path: Path) -> None:
    monday, sunday, next_monday = dt.date(2026, 11, 30), dt.date(2026, 12, 6), dt.date(2026, 12, 7)
    certificate = tmp_path / "proxy.crt"
    certificate.write_text("one")
    base = images.DebianBase("http://deb.example/debian", (certificate,), check_valid_until=False)
    first = base.fingerprint(monday)
    certificate.write_text("two")
    second = base.fingerprint(monday)
    other_mirror = images.DebianBase("http://other.example/debian", (certificate,), False).fingerprint(monday)

    assert len({first, second, other_mirror}) == 3
    assert base.fingerprint(sunday) == second != base.fingerprint(next_monday)


def test_postgres_maps_a_service_certificate_to_its_role_and_nothing_else(tmp_path: Path) -> None:
    """The subject PostgreSQL sees (RFC 2253, as cryptography writes it) against pg_ident's pattern:
    a client certificate named like a service must not become that service's role."""
    entrypoint = (REPO / "deploy" / "postgres" / "entrypoint.sh").read_text()
    pattern = re.search(r'services "/(.+)" \\1', entrypoint)
    assert pattern is not None
    ca = authority.create_ca(tmp_path, tmp_path)
    subjects = {}
    for kind in (authority.Kind.SERVICE, authority.Kind.CLIENT):
        directory = tmp_path / kind.value
        authority.issue(ca, directory, "payments", kind)
        certificate = x509.load_pem_x509_certificate((directory / "payments.crt").read_bytes())
        subjects[kind] = certificate.subject.rfc4514_string()

    service = re.fullmatch(pattern[1], subjects[authority.Kind.SERVICE])
    assert service is not None and service[1] == "payments"
    assert re.fullmatch(pattern[1], subjects[authority.Kind.CLIENT]) is None


def test_a_signal_waits_for_a_teardown_then_ends_the_run() -> None:
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        interrupts = Interrupts()
        with pytest.raises(KeyboardInterrupt, match="during a teardown"), interrupts.shielded():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
            finished = True  # the teardown went on after the signal
        assert finished
        with interrupts.shielded(then_stop=False):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def test_the_books_check_refuses_a_record_it_cannot_read_as_the_api_message() -> None:
    renamed = books()
    renamed.item = {"sku": "mug", "available": "7", "quantity_sold": "3", "quantity_received": "10"}

    with pytest.raises(checks.CheckFailed, match="not a Item"):
        checks.check_books(renamed, SHOP, ENDED)


def test_the_books_wait_for_inventory_to_commit_a_sale_it_is_late_with() -> None:
    class LateInventory:
        def __init__(self) -> None:
            self.readings = [{"sku": "mug", "quantity_reserved": "1"}, {"sku": "mug", "quantity_sold": "1"}]
            self.calls = 0

        def ops(self, commands: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
            self.calls += 1
            return [self.readings[min(self.calls, len(self.readings)) - 1]]

    inventory = LateInventory()
    checks.await_stock_settled(inventory, SHOP, timeout_s=5)

    assert inventory.calls == 2


def test_the_oauth_check_says_clearly_when_the_host_has_no_curl(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(checks, "CURL_FALLBACK", tmp_path / "curl")

    with pytest.raises(checks.CheckFailed, match="curl is not installed on the host"):
        checks.curl_path()


class ReplicaLogs:
    """Two payments replicas as `docker inspect` and `docker logs` show them."""

    def __init__(self, logs: dict[str, list[dict[str, Any]]]) -> None:
        self.logs = logs

    @property
    def topology(self) -> Topology:
        return PRODUCTION

    def inspect(self, service: str | None = None) -> list[dict[str, Any]]:
        return [{"Id": name, "Name": f"/{name}", "State": {"Running": True}} for name in self.logs]

    def container_logs(self, container: str) -> str:
        lines = [json.dumps(line) for line in self.logs[container]]
        return "\n".join(["Starting up (not JSON)", *lines])


OAUTH_CLIENT = checks.OAuthClient("acme", TlsFiles(Path("acme.crt"), Path("acme.key"), Path("ca.crt")))
APPLIED = {"event": "revocations.applied", "client": "spiffe://paysaga/client/acme", "tokens": 1}
REFUSED = {
    "event": "grpc.refused",
    "peer": "spiffe://paysaga/client/acme",
    "code": "UNAUTHENTICATED",
    "reason": "the token has been revoked: get a new one",
}


def test_every_payments_replica_must_have_applied_the_revocation_and_refused_the_token() -> None:
    both = ReplicaLogs({"payments-1": [APPLIED, REFUSED], "payments-2": [REFUSED, APPLIED]})

    assert "each of the 2 payments replicas" in checks.check_every_replica_refused(both, OAUTH_CLIENT)


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ([APPLIED], "payments-2 has not logged a refusal"),  # the proxy never sent it the revoked token
        ([REFUSED], "payments-2 has not logged the revocation"),
        ([APPLIED, REFUSED | {"peer": "spiffe://paysaga/client/other"}], "payments-2 has not logged a refusal"),
        ([APPLIED, REFUSED | {"reason": "the token has expired"}], "payments-2 has not logged a refusal"),
    ],
)
def test_the_replica_check_names_the_replica_that_did_not_refuse_the_revoked_token(
    second: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(checks.CheckFailed, match=message):
        checks.check_every_replica_refused(
            ReplicaLogs({"payments-1": [APPLIED, REFUSED], "payments-2": second}), OAUTH_CLIENT
        )


def test_the_replica_check_fails_when_a_replica_is_missing() -> None:
    with pytest.raises(checks.CheckFailed, match="1 replicas running"):
        checks.check_every_replica_refused(ReplicaLogs({"payments-1": [APPLIED, REFUSED]}), OAUTH_CLIENT)


class FormEcho(http.server.BaseHTTPRequestHandler):
    """Answers a POST with the form it got and the client certificate's identity, as JSON; /text with text."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        certificate = x509.load_der_x509_certificate(self.connection.getpeercert(binary_form=True))
        identity = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        answer = {
            "form": dict(urllib.parse.parse_qsl(body)),
            "peer": [str(uri) for uri in identity.get_values_for_type(x509.UniformResourceIdentifier)],
        }
        text = b"not json" if self.path == "/text" else json.dumps(answer).encode()
        self.send_response(201)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_curl_posts_the_form_over_mutual_tls_and_reads_the_status_and_json(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    ca = authority.create_ca(tmp_path, tmp_path)
    authority.issue(ca, tmp_path, "auth", authority.Kind.SERVICE)
    authority.issue(ca, tmp_path, "acme", authority.Kind.CLIENT)
    server = http.server.HTTPServer(("127.0.0.1", 0), FormEcho)
    server.socket = tls.server_ssl_context(TlsFiles.in_directory(tmp_path, "auth")).wrap_socket(
        server.socket, server_side=True
    )
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        client = TlsFiles.in_directory(tmp_path, "acme")
        status, answer = checks.curl_form(client, f"{url}/oauth2/token", "grant_type=client_credentials", "token=a+b&c")

        assert status == 201
        assert answer == {
            "form": {"grant_type": "client_credentials", "token": "a+b&c"},
            "peer": ["spiffe://paysaga/client/acme"],
        }
        assert checks.curl_form(client, f"{url}/oauth2/jwks")[1]["form"] == {}  # a POST, with an empty form
        with pytest.raises(checks.CheckFailed, match="HTTP 201 with something else than a JSON object"):
            checks.curl_form(client, f"{url}/text", "token=x")
        # A client without a certificate of ours does not get through; curl's own error says why.
        stranger_dir = tmp_path / "stranger"
        authority.issue(authority.create_ca(stranger_dir, stranger_dir), stranger_dir, "acme", authority.Kind.CLIENT)
        stranger = TlsFiles(stranger_dir / "acme.crt", stranger_dir / "acme.key", client.ca_file)
        with pytest.raises(checks.CheckFailed, match=r"curl https://127\.0\.0\.1:\d+/oauth2/token failed"):
            checks.curl_form(stranger, f"{url}/oauth2/token", "grant_type=client_credentials")
    finally:
        server.shutdown()
        server.server_close()


class RevocationCluster:
    """The certs job as the real CA script over directories (its exports included), and a NATS that
    accepts the keys of the pins file exported to it as they were at its last SIGHUP."""

    def __init__(self, directory: Path, *, export: bool = True, reloads: bool = True) -> None:
        self.certs, self.ca, self.export = directory / "certs", directory / "ca", directory / "export"
        self.export_option = ["--export-to", str(self.export)] if export else []
        self.reloads = reloads
        assert certs_main(self.where("bootstrap", "--client-tokens", "--export-to", str(self.export))) == 0
        self.accepted = self.exported_pins()
        self.log = ["[INF] Server is ready"]
        self.signals: list[str] = []

    @property
    def topology(self) -> Topology:
        return PRODUCTION

    def where(self, *arguments: str) -> list[str]:
        return ["--dir", str(self.certs), "--ca-dir", str(self.ca), *arguments]

    def exported_pins(self) -> set[str]:
        return set(re.findall(r'"([0-9a-f]{64})"', (self.export / "nats" / revocation.NATS_PINS_FILE).read_text()))

    def one_off(
        self,
        service: str,
        *arguments: str,
        entrypoint: str | None = None,
        input_text: str | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> str:
        if service == "certs" and arguments[0] == "cat":
            return (self.certs / Path(arguments[1]).name).read_text()
        if service == "certs":
            assert arguments[0] == "paysaga-certs"
            export = self.export_option if arguments[1] in ("issue", "revoke") else []
            # The container's /certs is the certs directory.
            local = [re.sub(r"^/certs/", f"{self.certs}/", argument) for argument in arguments]
            output = io.StringIO()
            with contextlib.redirect_stdout(output):
                assert certs_main(self.where(*local[1:], *export)) == 0
            return output.getvalue()
        assert (service, entrypoint, input_text) == ("ops", "python", checks.NATS_PROBE.read_text())
        results = {"plaintext": "refused: connection closed", "tls_without_certificate": "refused: EOF"}
        for name, value in (environment or {}).items():
            if name.endswith("_CERT"):
                label = name.removeprefix("PAYSAGA_PROBE_").removesuffix("_CERT").lower()
                results[f"tls_with_{label}_certificate"] = self.nats_answer(value)
        results["tls_with_ops_certificate"] = self.nats_answer((self.export / "ops" / "ops.crt").read_text())
        return "some output first\n" + json.dumps(results) + "\n"

    def nats_answer(self, certificate: str) -> str:
        if revocation.public_key_pin(x509.load_pem_x509_certificate(certificate.encode())) in self.accepted:
            return "connected"
        self.log.append("[ERR] 172.18.0.5:40000 - cid:9 - TLS handshake error: certificate not pinned")
        return "refused: no INFO inside TLS (b'')"

    def signal(self, service: str, signal: str) -> None:
        self.signals.append(f"{service} {signal}")
        if self.reloads and (service, signal) == ("nats", "HUP"):
            pins = self.exported_pins()
            if pins != self.accepted:
                self.log.append(f"[INF] Reloaded: {len(pins)} pinned_certs")
            self.accepted = pins

    def inspect(self, service: str | None = None) -> list[dict[str, Any]]:
        assert service == "nats"
        return [{"Id": "nats-1"}]

    def container_logs(self, container: str) -> str:
        return "\n".join(self.log)

    def payments_answers(self, target: str, files: TlsFiles, token: str, calls: int) -> list[tuple[Any, str]]:
        """What payments answers, as it reads the CRL exported into its own volume."""
        crl = RevocationList(self.export / "payments" / CRL_FILE, self.export / "payments" / "ca.crt")
        serial = x509.load_pem_x509_certificate(files.cert_file.read_bytes()).serial_number
        if crl.is_revoked(serial):
            return [(grpc.StatusCode.UNAUTHENTICATED, f"the client certificate (serial {serial:x}) is revoked")] * calls
        return [(grpc.StatusCode.OK, "")] * calls


def revocation_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cluster: RevocationCluster) -> list[str]:
    monkeypatch.setattr(checks, "_payments_answers", cluster.payments_answers)
    monkeypatch.setattr(checks, "CERTIFICATE_REVOCATION_TIMEOUT_S", 0.5)
    monkeypatch.setattr(checks, "POLL_INTERVAL_S", 0.01)
    said: list[str] = []
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    checks.check_revoked_certificate_refused(cluster, "127.0.0.1:50051", client_dir, said.append)
    return said


def test_the_revocation_check_passes_when_the_certs_job_exports_the_pins_and_nats_reloads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cluster = RevocationCluster(tmp_path)

    said = revocation_check(monkeypatch, tmp_path, cluster)

    # Every node of the production profile's NATS cluster reloads, once after the issue, once after the revoke.
    assert cluster.signals == [f"{node} HUP" for node in PRODUCTION.nats_nodes] * 2
    spare = cluster.certs / f"{checks.SPARE_OPS_CERTIFICATE}.crt"
    assert revocation.serial_of(spare) in revocation.revoked_serials(cluster.certs)
    assert len(said) == 7 and said[0].endswith("paysaga-certs issue client ops --file-name compose-spare-ops")
    assert said[1] == said[4] == "ops: docker compose kill -s HUP nats nats-2 nats-3"
    assert "NATS lets the probe in (connected)" in said[2]
    assert "OK on 8 connections" in said[2]  # 4 per payments replica, on connections of their own
    assert "paysaga-certs revoke compose-spare-ops " in said[3]
    assert "NATS refuses it" in said[5] and "8 UNAUTHENTICATED (the client certificate (serial" in said[5]
    assert "regular ops certificate still connects" in said[6] and "9 then 8 keys" in said[6]


@pytest.mark.parametrize(
    ("cluster_options", "message"),
    [
        ({"export": False}, "paysaga-certs issue did not export NATS's pins"),  # no PAYSAGA_EXPORT_DIR
        ({"reloads": False}, "expected: NATS lets the new ops certificate in"),  # SIGHUP ignored
    ],
)
def test_the_revocation_check_fails_when_nats_does_not_get_the_pins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cluster_options: dict[str, bool], message: str
) -> None:
    with pytest.raises(checks.CheckFailed, match=message):
        revocation_check(monkeypatch, tmp_path, RevocationCluster(tmp_path, **cluster_options))


def test_the_revocation_check_fails_when_nats_keeps_the_revoked_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """NATS reloaded after the issue, but not after the revocation: it still lets the certificate in."""
    cluster = RevocationCluster(tmp_path)
    signal = cluster.signal

    def first_only(service: str, name: str) -> None:
        if not cluster.signals:
            signal(service, name)
        else:
            cluster.signals.append(f"{service} {name} (lost)")

    monkeypatch.setattr(cluster, "signal", first_only)

    with pytest.raises(checks.CheckFailed, match="expected: NATS refuses it"):
        revocation_check(monkeypatch, tmp_path, cluster)
