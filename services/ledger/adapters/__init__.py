"""Adapters of the ledger service to the outside world: gRPC today; database and NATS with the saga."""
