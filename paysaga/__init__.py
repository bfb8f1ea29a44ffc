"""paysaga: the shared runtime of the payments, inventory and ledger services.

paysaga.<service>.v1 and paysaga.events.v1 are the generated API (see protos/); the other modules
hold what every service process needs: settings, TLS, logging, NATS, the database engine and the
gRPC server lifecycle.
"""
