"""NATS as paysaga runs it: mutual TLS at the handshake, JetStream streams owned per service."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import uuid
from pathlib import Path

import pytest
from nats.js.api import StorageType

from paysaga.ops.cluster import natsconf
from paysaga.ops.cluster.localcluster import LocalCluster, find_nats_server
from paysaga.runtime.messaging import streams, windows
from paysaga.runtime.settings import TlsFiles
from tests.helpers import connect_as, connect_nats, ssl_context_without_client_certificate, wait_for_log

REPO = Path(__file__).resolve().parents[2]


async def test_service_certificate_connects_and_can_publish_to_jetstream_with_dedup(nats_cluster: LocalCluster) -> None:
    client = await connect_as(nats_cluster.nats_url, nats_cluster.tls_files("ledger"))
    try:
        jetstream = client.jetstream()
        for stream in streams.owned_streams("ledger"):
            await streams.ensure_stream(jetstream, stream, replicas=1)
        event_id = str(uuid.uuid4())

        first = await jetstream.publish(
            "paysaga.events.ledger.FundsHeld", b"{}", headers={"Nats-Msg-Id": event_id}, timeout=5
        )
        again = await jetstream.publish(
            "paysaga.events.ledger.FundsHeld", b"{}", headers={"Nats-Msg-Id": event_id}, timeout=5
        )

        assert first.stream == "LEDGER_EVENTS" and not first.duplicate
        assert again.duplicate and again.seq == first.seq
        info = await jetstream.stream_info("LEDGER_EVENTS")
        assert StorageType(info.config.storage) is StorageType.FILE
        assert info.config.duplicate_window == windows.DUPLICATE_WINDOW_S
    finally:
        await client.close()


async def test_ensure_stream_creates_once_then_leaves_it_or_updates_a_changed_config(
    nats_cluster: LocalCluster,
) -> None:
    # ops administers JetStream; a service could only do this to its own streams.
    client = await connect_as(nats_cluster.nats_url, nats_cluster.tls_files("ops"))
    try:
        jetstream = client.jetstream()
        spec = streams.StreamSpec("IDEMPOTENCE_CHECK", ("paysaga.events.idempotence-check.>",), "test stream")
        drifted = streams.StreamSpec(spec.name, spec.subjects, "someone edited this by hand")

        outcomes = [await streams.ensure_stream(jetstream, stream, 1) for stream in (spec, spec, drifted, spec)]

        assert outcomes == ["created", "unchanged", "updated", "updated"]
        assert (await jetstream.stream_info(spec.name)).config.description == "test stream"
    finally:
        await client.close()


async def test_connection_without_a_client_certificate_is_refused(nats_cluster: LocalCluster) -> None:
    ca_file = nats_cluster.tls_files("ops").ca_file

    with pytest.raises(Exception):  # noqa: B017 - nats-py reports a dropped handshake in several ways
        await connect_nats(nats_cluster.nats_url, ssl_context_without_client_certificate(ca_file))

    wait_for_log(nats_cluster, "nats", "TLS handshake error: tls: client didn't provide a certificate")


async def test_certificate_from_another_ca_is_refused(nats_cluster: LocalCluster, foreign_certs_dir: Path) -> None:
    foreign = TlsFiles(
        foreign_certs_dir / "ledger.crt", foreign_certs_dir / "ledger.key", nats_cluster.tls_files("ops").ca_file
    )

    with pytest.raises(Exception):  # noqa: B017 - nats-py reports a dropped handshake in several ways
        await connect_as(nats_cluster.nats_url, foreign)

    wait_for_log(nats_cluster, "nats", "certificate signed by unknown authority")

    # The same call with our own certificate goes through, so the refusal was about the certificate.
    client = await connect_as(nats_cluster.nats_url, nats_cluster.tls_files("ops"))
    await client.close()


def test_a_plaintext_peer_hears_nothing_and_gets_no_service(nats_cluster: LocalCluster) -> None:
    """TLS first: the server says nothing in the clear (no INFO with its versions), and a client
    that speaks plaintext is dropped."""
    with socket.create_connection(("127.0.0.1", nats_cluster.ports.nats), timeout=5) as sock:
        sock.settimeout(1.0)
        with pytest.raises(TimeoutError):
            sock.recv(4096)  # the server waits for a TLS ClientHello, silent
        sock.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
        sock.settimeout(5.0)
        try:
            reply = sock.recv(4096)
        except ConnectionResetError:
            reply = b""

    assert b"INFO" not in reply and not reply.startswith(b"PONG"), reply


def test_a_tls_client_hears_the_info_only_inside_tls(nats_cluster: LocalCluster) -> None:
    files = nats_cluster.tls_files("ops")
    context = ssl.create_default_context(cafile=str(files.ca_file))
    context.load_cert_chain(str(files.cert_file), str(files.key_file))
    with (
        socket.create_connection(("127.0.0.1", nats_cluster.ports.nats), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as wrapped,
    ):
        info = json.loads(wrapped.makefile("rb").readline().removeprefix(b"INFO "))

    assert info["tls_required"] is True and info["tls_verify"] is True


def test_rendered_configuration_is_valid_and_demands_client_certificates_and_fsync(
    tmp_path: Path, certs_dir: Path
) -> None:
    text = natsconf.render(
        server_name="check",
        host="127.0.0.1",
        port=4222,
        tls=TlsFiles.in_directory(certs_dir, "nats"),
        store_dir=tmp_path,
    )
    (tmp_path / "nats.conf").write_text(text)

    result = subprocess.run(
        [find_nats_server(), "-c", str(tmp_path / "nats.conf"), "-t"], capture_output=True, text=True
    )

    assert result.returncode == 0, result.stderr + result.stdout
    assert "verify_and_map: true" in text and "sync_interval: always" in text and 'min_version: "1.2"' in text


def test_compose_nats_configuration_is_valid_for_the_real_server(tmp_path: Path, certs_dir: Path) -> None:
    compose_config = (REPO / "deploy" / "nats" / "nats.conf").read_text()
    assert "verify_and_map: true" in compose_config and "sync_interval: always" in compose_config
    shutil.copytree(certs_dir, tmp_path / "certs")
    local = compose_config.replace('"/certs/', f'"{tmp_path}/certs/').replace('"/data', f'"{tmp_path}/data')
    (tmp_path / "nats.conf").write_text(local)

    result = subprocess.run(
        [find_nats_server(), "-c", str(tmp_path / "nats.conf"), "-t"], capture_output=True, text=True
    )

    assert result.returncode == 0, result.stderr + result.stdout
