"""paysaga: the shared runtime of the payments, inventory and ledger services.

paysaga.<service>.v1 and paysaga.events.v1 are the generated API (see protos/); the other modules
hold what every service process needs: settings, TLS, logging, NATS, the database engine and the
gRPC server lifecycle.
"""

import os

# No paysaga process forks a child that goes on using gRPC: every child (a service, nats-server,
# PostgreSQL) is exec'ed at once. gRPC's fork support would restart its poller in the child
# between fork and exec, where Python's close_fds has just closed the poller's epoll fd, and
# abort the child before it runs (grpc/grpc#43055; we spawn with a preexec hook, which forks).
# gRPC reads this when it is first imported, so it is set here, before any of our modules
# imports grpc. An explicit setting in the environment wins.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
