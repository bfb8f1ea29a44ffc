"""The compose test's own logic, without a Docker engine: what it compares, how it finds things,
and that its checks fail when what they check is wrong."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from paysaga.common.v1.money_pb2 import Money
from paysaga.compose import checks, engine, images
from paysaga.payments.v1 import payments_pb2

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


@pytest.mark.parametrize(
    ("hex_address", "address"),
    [("0100007F", "127.0.0.1"), ("00000000", "0.0.0.0"), ("00000000000000000000000001000000", "::1")],  # noqa: S104
)
def test_proc_net_addresses_are_read_as_the_kernel_writes_them(hex_address: str, address: str) -> None:
    assert checks._address(hex_address) == address


def test_the_listening_sockets_include_one_this_process_opens() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        assert ("127.0.0.1", port) in checks.listening_sockets()
    assert ("127.0.0.1", port) not in checks.listening_sockets()


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


def test_host_differences_name_what_dockerd_left() -> None:
    before = engine.HostState({"net/ipv4/ip_forward": "0"}, "", ["eth0", "lo"], ["/"])
    after = engine.HostState({"net/ipv4/ip_forward": "1"}, "table ip nat {}", ["docker0", "eth0", "lo"], ["/"])

    assert before.differences(before) == []
    assert before.differences(after) == [
        "sysctl net.ipv4.ip_forward is '1', was '0'",
        "the nftables ruleset differs",
        "network link docker0 is new",
    ]


def test_a_started_engine_record_survives_a_round_trip(tmp_path: Path) -> None:
    started = engine.StartedEngine(123, 456, engine.HostState({"a": "1"}, "rules", ["lo"], ["/"]))
    started.save(tmp_path / "engine.json")

    assert engine.StartedEngine.load(tmp_path / "engine.json") == started


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


def test_the_base_image_is_rebuilt_when_a_trusted_certificate_changes(tmp_path: Path) -> None:
    certificate = tmp_path / "proxy.crt"
    certificate.write_text("one")
    first = images.DebianBase("http://deb.example/debian", (certificate,), check_valid_until=False).fingerprint()
    certificate.write_text("two")
    second = images.DebianBase("http://deb.example/debian", (certificate,), check_valid_until=False).fingerprint()
    other_mirror = images.DebianBase("http://other.example/debian", (certificate,), False).fingerprint()

    assert len({first, second, other_mirror}) == 3
