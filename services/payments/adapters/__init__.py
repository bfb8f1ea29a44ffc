"""Adapters of the payments service to the outside world: gRPC today; database and NATS with the saga."""
