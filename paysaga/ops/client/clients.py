"""A client's view of the cluster: one channel per service, and the set-up calls every client
script makes (an account with an opening deposit, an item with its first stock). Used by the
demo, the benchmark and the tests."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from paysaga.common.v1.money_pb2 import Money
from paysaga.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from paysaga.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from paysaga.payments.v1 import payments_pb2_grpc
from paysaga.runtime.security import tls
from paysaga.runtime.settings import TlsFiles


class ServiceClients:
    """One channel per service, shared by every call, as a production client keeps them. A
    target may list several replicas ("host:port,host:port"); calls spread over them."""

    def __init__(self, targets: Mapping[str, str], files: TlsFiles, token: str) -> None:
        credentials = tls.channel_credentials(files, token)  # the files read once, for every channel
        self._channels = {service: tls.channel(targets[service], credentials) for service in targets}
        self.payments = payments_pb2_grpc.PaymentServiceStub(self._channels["payments"])
        self.inventory = inventory_pb2_grpc.InventoryServiceStub(self._channels["inventory"])
        self.ledger = ledger_pb2_grpc.LedgerServiceStub(self._channels["ledger"])

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    async def open_account(
        self,
        kind: ledger_pb2.AccountKind.ValueType,
        *,
        currency: str,
        owner: str,
        funds_minor: int = 0,
        timeout_s: float,
        account_id: str | None = None,
    ) -> str:
        """Open an account (a fresh id unless given) and, with funds_minor, deposit into it."""
        account_id = account_id or str(uuid.uuid4())
        await self.ledger.OpenAccount(
            ledger_pb2.OpenAccountRequest(account_id=account_id, kind=kind, currency=currency, owner=owner),
            timeout=timeout_s,
        )
        if funds_minor:
            await self.ledger.Deposit(
                ledger_pb2.DepositRequest(
                    account_id=account_id,
                    amount=Money(amount_minor=funds_minor, currency=currency),
                    deposit_id=str(uuid.uuid4()),
                ),
                timeout=timeout_s,
            )
        return account_id

    async def add_item(
        self, sku: str, *, name: str, price_minor: int, currency: str, stock: int = 0, timeout_s: float
    ) -> None:
        """Add an item to the catalogue and, with stock, receive its first stock."""
        await self.inventory.AddItem(
            inventory_pb2.AddItemRequest(
                sku=sku, name=name, unit_price=Money(amount_minor=price_minor, currency=currency)
            ),
            timeout=timeout_s,
        )
        if stock:
            await self.inventory.ReceiveStock(
                inventory_pb2.ReceiveStockRequest(sku=sku, quantity=stock, receipt_id=str(uuid.uuid4())),
                timeout=timeout_s,
            )
