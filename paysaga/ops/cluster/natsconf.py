"""The nats-server configuration paysaga runs with: mTLS, a user per certificate, JetStream with fsync.

``verify_and_map: true`` makes the server demand a client certificate from our CA at the
handshake and map its URI identity (spiffe://paysaga/<name>) to a user below; a certificate that
maps to no user is refused. Each service may publish only its own event and dead-letter subjects,
manage only its own streams, and read only the producers it consumes, through its own durable
consumers; replies reach it only under its own inbox prefix (paysaga.runtime.messaging.streams.inbox_prefix).
``sync_interval: always`` makes JetStream fsync every write before it acknowledges a publish.

deploy/nats/nats.conf is this module's output for docker-compose, and deploy/nats/cluster/*.conf
for the production profile's three nodes (``python -m paysaga.ops.cluster.natsconf --write``); a
test fails when one is stale. There, the keys NATS may accept (``pinned_certs``: how a revoked
certificate is shut out) come from a file the CA script writes into NATS's certificate volume
(paysaga.ops.pki.revocation.publish_nats_pins), which the configuration includes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from paysaga.core.eventing import DEAD_LETTER_SUBJECT_ROOT, EVENTS_SUBJECT_ROOT
from paysaga.core.identity import client_identity, service_identity
from paysaga.ops.pki.authority import CLUSTER_CLIENTS
from paysaga.ops.pki.revocation import NATS_PINS_FILE, NO_KEY_PIN
from paysaga.runtime.messaging.consumer import Subscription
from paysaga.runtime.messaging.lanes import legacy_durable_name
from paysaga.runtime.messaging.revocations import REVOCATIONS_STREAM
from paysaga.runtime.messaging.streams import inbox_prefix, owned_streams
from paysaga.runtime.settings import TlsFiles
from services.auth import bootstrap as auth_bootstrap
from services.inventory import bootstrap as inventory_bootstrap
from services.ledger import bootstrap as ledger_bootstrap
from services.payments import bootstrap as payments_bootstrap
from services.reconcile.sources import CONSUMER as RECONCILE_CONSUMER

# What each service consumes (a producer's lanes): derived from its handlers (its bootstrap's
# SUBSCRIPTIONS), so the permissions cannot drift from what the service subscribes to.
CONSUMES: Mapping[str, Sequence[Subscription]] = {
    "payments": payments_bootstrap.SUBSCRIPTIONS,
    "inventory": inventory_bootstrap.SUBSCRIPTIONS,
    "ledger": ledger_bootstrap.SUBSCRIPTIONS,
    "auth": auth_bootstrap.SUBSCRIPTIONS,
}
# The services that read their own events stream (payments: its fraud rules' statistics).
READS_OWN_EVENTS = frozenset({"payments"})
OPS_CLIENTS = CLUSTER_CLIENTS
# The nightly reconciliation's identity, and the services whose streams it reads.
RECONCILE = "reconcile"
RECONCILED = ("payments", "ledger", "inventory")
JS_API = "$JS.API"
CLUSTER_NAME = "paysaga"
# docker-compose: where the nats service mounts deploy/nats/nats.conf, and its certificate volume.
# nats-server resolves an include relative to the directory of the file that includes it, even a
# path written as absolute (2.15: "/certs/x" from /etc/nats.conf opens /etc/certs/x); with the
# configuration at /, the include "certs/nats-pins.conf" is the volume's /certs/nats-pins.conf.
COMPOSE_CONFIG_PATH = Path("/nats.conf")
COMPOSE_CERTS_DIR = Path("/certs")
# The production profile's cluster: its nodes' compose service names, and the port they route on.
COMPOSE_CLUSTER_NODES = ("nats", "nats-2", "nats-3")
COMPOSE_ROUTE_PORT = 6222


@dataclass(frozen=True)
class NatsUser:
    identity: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def service_user(service: str, consumes: Sequence[Subscription]) -> NatsUser:
    identity = service_identity(service)
    publish = [f"{EVENTS_SUBJECT_ROOT}.{service}.>", f"{DEAD_LETTER_SUBJECT_ROOT}.{service}.>", f"{JS_API}.INFO"]
    # Every service reads the token revocations, message by message (paysaga.runtime.messaging.revocations).
    publish += [f"{JS_API}.STREAM.INFO.{REVOCATIONS_STREAM}", f"{JS_API}.STREAM.MSG.GET.{REVOCATIONS_STREAM}"]
    for stream in owned_streams(service):
        publish += [f"{JS_API}.STREAM.{action}.{stream.name}" for action in ("CREATE", "UPDATE", "INFO")]
    if service in READS_OWN_EVENTS:
        # An ordered consumer of its own events stream: ephemeral (the server removes it once
        # unused), unacknowledged, with flow control. No name to grant, so no delete either.
        own = owned_streams(service)[0].name
        publish += [f"{JS_API}.CONSUMER.CREATE.{own}", f"$JS.FC.{own}.>"]
    for producer, source in dict.fromkeys((subscription.producer, subscription.stream) for subscription in consumes):
        # The age of a lane's oldest event is read from the stream; the consumer of a version
        # before lanes is read once more, and deleted, when its lanes take over.
        legacy = legacy_durable_name(service, producer)
        publish += [
            f"{JS_API}.STREAM.INFO.{source}",
            f"{JS_API}.STREAM.MSG.GET.{source}",
            f"{JS_API}.CONSUMER.INFO.{source}.{legacy}",
            f"{JS_API}.CONSUMER.DELETE.{source}.{legacy}",
        ]
    for subscription in consumes:
        source, durable = subscription.stream, subscription.durable_name(service)
        publish += [
            f"{JS_API}.CONSUMER.CREATE.{source}.{durable}",
            f"{JS_API}.CONSUMER.CREATE.{source}.{durable}.>",
            f"{JS_API}.CONSUMER.INFO.{source}.{durable}",
            f"{JS_API}.CONSUMER.MSG.NEXT.{source}.{durable}",
            f"$JS.ACK.{source}.{durable}.>",
        ]
    return NatsUser(identity, tuple(publish), (f"{inbox_prefix(identity)}.>",))


def reconcile_user() -> NatsUser:
    """The nightly reconciliation: it reads the services' event and dead-letter streams through a
    consumer of its own, by name (services.reconcile.sources.CONSUMER: a create request naming
    any other consumer is refused, so it cannot change a service's), and publishes only its own
    events, into its own stream."""
    identity = service_identity(RECONCILE)
    publish = [f"{EVENTS_SUBJECT_ROOT}.{RECONCILE}.>", f"{JS_API}.INFO"]
    own = owned_streams(RECONCILE)[0].name
    publish += [f"{JS_API}.STREAM.{action}.{own}" for action in ("CREATE", "UPDATE", "INFO")]
    for service in RECONCILED:
        for stream in owned_streams(service):
            consumer = f"{stream.name}.{RECONCILE_CONSUMER}"
            publish += [
                f"{JS_API}.STREAM.INFO.{stream.name}",
                f"{JS_API}.CONSUMER.CREATE.{consumer}",
                f"{JS_API}.CONSUMER.CREATE.{consumer}.>",
                f"{JS_API}.CONSUMER.INFO.{consumer}",
                f"{JS_API}.CONSUMER.MSG.NEXT.{consumer}",
                f"{JS_API}.CONSUMER.DELETE.{consumer}",
            ]
    return NatsUser(identity, tuple(publish), (f"{inbox_prefix(identity)}.>",))


def users(
    services: Mapping[str, Sequence[Subscription]] = CONSUMES, ops_clients: Sequence[str] = OPS_CLIENTS
) -> list[NatsUser]:
    """Every identity allowed on NATS: the services, the reconciliation, ops (JetStream
    administration, no events) and the NATS server's own identity (used by its health check)."""
    found = [service_user(service, consumes) for service, consumes in services.items()]
    found.append(reconcile_user())
    for client in ops_clients:
        identity = client_identity(client)
        # JetStream's administration, and the chunks of a stream's snapshot or restore (backups).
        found.append(NatsUser(identity, (f"{JS_API}.>", "$JS.SNAPSHOT.>"), (f"{inbox_prefix(identity)}.>",)))
    nats = service_identity("nats")
    found.append(NatsUser(nats, (f"{JS_API}.INFO",), (f"{inbox_prefix(nats)}.>",)))
    return found


def _quoted(value: object) -> str:
    return json.dumps(str(value))


def _list(values: Sequence[str], indent: str) -> str:
    if len(values) == 1:
        return f"[{_quoted(values[0])}]"
    return "[\n" + "".join(f"{indent}  {_quoted(value)}\n" for value in values) + f"{indent}]"


def authorization(users_: Sequence[NatsUser]) -> str:
    lines = ["authorization {", "  users = ["]
    for user in users_:
        lines += [
            f"    {{user: {_quoted(user.identity)}, permissions: {{",
            f"      publish: {{allow: {_list(user.publish, '      ')}}}",
            f"      subscribe: {{allow: {_list(user.subscribe, '      ')}}}",
            "    }}",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines)


def render(
    *,
    server_name: str,
    host: str,
    port: int,
    tls: TlsFiles,
    store_dir: Path,
    users_: Sequence[NatsUser] | None = None,
    pinned_keys: Sequence[str] | None = None,
    pins_include: str | None = None,
    fsync_always: bool = True,
    routes: Routes | None = None,
) -> str:
    """The configuration; with pinned_keys, only clients whose certificate's key is listed get in
    (paysaga.ops.pki.revocation.NatsPins: how a revoked certificate is shut out). With
    pins_include, that list is read from a file instead (publish_nats_pins writes it), at start
    and at each reload; the path is relative to the configuration file's directory.
    fsync_always=False is for benchmark fixtures only (streams filled fast, to measure reading
    them): JetStream then syncs to disk every 2 minutes instead of before every acknowledgement."""
    if pinned_keys is not None and pins_include is not None:
        raise ValueError("pinned_keys or pins_include, not both")
    # An empty list would pin nothing (everybody in): a pin no key has keeps everybody out instead.
    listed = None if pinned_keys is None else list(pinned_keys) or [NO_KEY_PIN]
    pins = "" if listed is None else f"\n  pinned_certs: [{', '.join(_quoted(pin) for pin in listed)}]"
    if pins_include is not None:
        pins = (
            "\n  # Only clients whose certificate's key this file lists get in (pinned_certs): how a revoked"
            "\n  # certificate is shut out. paysaga-certs writes it; nats-server re-reads it at each reload"
            "\n  # (SIGHUP). The path is relative to this file's directory, as nats-server resolves includes."
            f"\n  include {_quoted(pins_include)}"
        )
    return f"""# Generated by paysaga (python -m paysaga.ops.cluster.natsconf); see paysaga/ops/cluster/natsconf.py.
server_name: {_quoted(server_name)}
listen: {_quoted(f"{host}:{port}")}

# Mutual TLS: every client presents a certificate from the paysaga CA, and its URI identity
# (spiffe://paysaga/...) is its user below. TLS first: the handshake is the first thing on the
# wire, so nothing (not even the server's INFO) is ever sent in plaintext.
tls {{
  cert_file: {_quoted(tls.cert_file)}
  key_file: {_quoted(tls.key_file)}
  ca_file: {_quoted(tls.ca_file)}
  handshake_first: true
  verify_and_map: true{pins}
  min_version: "1.2"
  timeout: 2
}}

# Each identity may publish and subscribe only where it must: a service publishes only its own
# events, and reads other services' events only through its own durable consumers.
{authorization(users() if users_ is None else users_)}

# JetStream with fsync before every acknowledgement: an acked publish survives a crash.
jetstream {{
  store_dir: {_quoted(store_dir)}
  sync_interval: {"always" if fsync_always else "2m"}
}}
{"" if routes is None else routes.render(tls)}"""


@dataclass(frozen=True)
class Routes:
    """This node's place in a cluster of nats-servers: where it listens for the other nodes, and
    where they listen (its own address may be among them; nats-server skips it)."""

    listen: str
    peers: tuple[str, ...]
    name: str = CLUSTER_NAME

    def render(self, tls: TlsFiles) -> str:
        peers = _list([f"tls://{peer}" for peer in self.peers], "  ")
        return f"""
# A cluster: the nodes replicate the streams (R3) and elect a leader per stream. Routes are mutual
# TLS with certificates from our CA (server and client usage: each node dials the others); a node
# that presents none, or another CA's, is refused, and no route speaks plaintext.
cluster {{
  name: {_quoted(self.name)}
  listen: {_quoted(self.listen)}
  routes: {peers}
  tls {{
    cert_file: {_quoted(tls.cert_file)}
    key_file: {_quoted(tls.key_file)}
    ca_file: {_quoted(tls.ca_file)}
    verify: true
    min_version: "1.2"
    timeout: 2
  }}
}}
"""


def compose_config(node: str | None = None) -> str:
    """deploy/nats/nats.conf: the same configuration with the paths of the docker-compose volumes.
    With node (one of COMPOSE_CLUSTER_NODES), that node's configuration in the production
    profile's cluster of three (deploy/nats/cluster/<node>.conf): routes to the others, by their
    compose service names, which the one NATS certificate names too (paysaga-certs bootstrap
    --dns nats=nats-2,nats-3)."""
    routes = None
    if node is not None:
        peers = tuple(f"{peer}:{COMPOSE_ROUTE_PORT}" for peer in COMPOSE_CLUSTER_NODES)
        routes = Routes(f"0.0.0.0:{COMPOSE_ROUTE_PORT}", peers)
    return render(
        server_name=f"paysaga-{node or 'nats'}",
        host="0.0.0.0",  # noqa: S104 - inside the private compose network; mTLS still applies
        port=4222,
        tls=TlsFiles.in_directory(COMPOSE_CERTS_DIR, "nats"),
        # nats-server keeps its streams in <store_dir>/jetstream: /data/jetstream in the volume.
        store_dir=Path("/data"),
        # Exported by the certs job with NATS's certificate (paysaga-certs bootstrap --export-to).
        pins_include=str((COMPOSE_CERTS_DIR / NATS_PINS_FILE).relative_to(COMPOSE_CONFIG_PATH.parent)),
        routes=routes,
    )


def compose_config_path(node: str | None = None) -> Path:
    """Where compose_config(node) is kept in the repository, relative to its root."""
    return Path("deploy/nats/nats.conf") if node is None else Path(f"deploy/nats/cluster/{node}.conf")


def main(argv: Sequence[str]) -> int:
    """No argument: deploy/nats/nats.conf on stdout. --write: every compose configuration, into
    the repository (the current directory)."""
    if list(argv) == ["--write"]:
        for node in (None, *COMPOSE_CLUSTER_NODES):
            path = compose_config_path(node)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(compose_config(node))
            print(f"wrote {path}")
        return 0
    if argv:
        print("usage: python -m paysaga.ops.cluster.natsconf [--write]", file=sys.stderr)
        return 2
    sys.stdout.write(compose_config())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
