"""The committed protobuf stubs match protos/: regenerate into a temporary tree and compare."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import generate_stubs  # noqa: E402 - lives in scripts/, not in the package


def test_committed_stubs_are_what_the_protos_generate(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "generate_stubs.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr

    fresh = generate_stubs.generated_files(tmp_path)
    committed = generate_stubs.generated_files(REPO)

    assert fresh, "the generator produced nothing"
    stale = sorted(path for path in fresh.keys() | committed.keys() if fresh.get(path) != committed.get(path))
    assert not stale, f"stale or missing stubs {stale}: run 'python3 scripts/dev.py stubs' and commit the result"


def test_every_proto_has_typed_stubs_importable_from_the_package() -> None:
    from paysaga.events.v1 import events_pb2
    from paysaga.inventory.v1 import inventory_pb2_grpc
    from paysaga.ledger.v1 import ledger_pb2_grpc
    from paysaga.payments.v1 import payments_pb2, payments_pb2_grpc

    envelope = events_pb2.EventEnvelope(event_id="e", event_type="FundsHeld", saga_id="s", producer="ledger")
    envelope.funds_held.amount.amount_minor = 500
    assert envelope.WhichOneof("payload") == "funds_held"
    assert payments_pb2.DESCRIPTOR.package == "paysaga.payments.v1"
    assert all(
        hasattr(module, name)
        for module, name in [
            (payments_pb2_grpc, "PaymentServiceStub"),
            (inventory_pb2_grpc, "InventoryServiceStub"),
            (ledger_pb2_grpc, "LedgerServiceStub"),
        ]
    )
    for proto in (REPO / "protos").rglob("*.proto"):
        module = REPO / proto.relative_to(REPO / "protos").with_name(proto.stem + "_pb2.pyi")
        assert module.exists(), f"no type stub for {proto}"
