"""Adapters of the inventory service to the outside world: gRPC today; database and NATS with the saga."""
