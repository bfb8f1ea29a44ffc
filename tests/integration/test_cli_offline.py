"""The paysaga CLI where a server cannot be reached: it says so and exits 1, without a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from paysaga.ops.client import cli, lanes
from paysaga.ops.cluster.localcluster import free_port


def test_lanes_without_nats_says_so_and_exits_1(
    certs_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lanes, "CONNECT_TIMEOUT_S", 0.5)  # nobody listens: no need to wait 10 s
    files = (
        "--cert",
        str(certs_dir / "ops.crt"),
        "--key",
        str(certs_dir / "ops.key"),
        "--ca",
        str(certs_dir / "ca.crt"),
    )

    code = cli.main([*files, "lanes", "--nats-url", f"tls://127.0.0.1:{free_port()}"])

    assert code == 1
    assert "could not connect to NATS" in capsys.readouterr().err
