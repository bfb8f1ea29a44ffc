"""The paysaga benchmark: a load generator for a running cluster and the machine's raw limits.

``python3 scripts/dev.py bench`` starts a fresh local cluster (SQLite, one process per service),
measures the raw limits of this machine (an mTLS echo RPC, a JetStream publish+ack with fsync),
drives purchases through the public gRPC API and prints a report (README: "Benchmark").
"""

import paysaga  # noqa: F401 - first, before any module imports grpc: see paysaga/__init__.py
