"""Runs inside the compose network (piped into `python -` in the ops container): who can talk to
NATS? Standard library only, so it needs nothing installed.

Prints one JSON object: for each way of connecting, "connected", "refused: <why>" (the server
answered, then would not let the client in), or "error: <why>" (the server was never reached,
which proves nothing). The ops client's own certificate must get "connected": that shows the
probe can succeed. Other certificates come in the environment, each as PAYSAGA_PROBE_<NAME>_CERT
and _KEY (PEM), and are tried as "tls_with_<name>_certificate": FOREIGN, one from another CA;
SPARE, another certificate of ours, before and after it is revoked.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys
from pathlib import Path

HOST, PORT = "nats", 4222
TIMEOUT_S = 5.0
CA_FILE = "/certs/ca.crt"


class NotReached(Exception):
    pass


def _exchange(client_certificate: tuple[str, str] | None, use_tls: bool) -> str:
    """Connect, TLS first (our NATS says nothing before the handshake) or in plaintext, send
    CONNECT and PING: "connected" on PONG."""
    try:
        raw = socket.create_connection((HOST, PORT), timeout=TIMEOUT_S)
    except OSError as error:
        raise NotReached(str(error)) from None
    with raw:
        stream: socket.socket = raw
        if use_tls:
            context = ssl.create_default_context(cafile=CA_FILE)
            if client_certificate:
                context.load_cert_chain(*client_certificate)
            stream = context.wrap_socket(raw, server_hostname=HOST)
            info = stream.recv(4096)
            if not info.startswith(b"INFO"):
                return f"refused: no INFO inside TLS ({info[:40]!r})"
        else:
            raw.settimeout(1.0)
            try:
                heard = raw.recv(4096)
            except TimeoutError:
                heard = b""  # silent until a TLS handshake: as it must be
            raw.settimeout(TIMEOUT_S)
            if heard:
                return f"answered in plaintext: {heard[:60]!r}"
        stream.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        answer = b""
        while b"PONG" not in answer and b"-ERR" not in answer:
            try:
                chunk = stream.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
    if b"PONG" in answer:
        return "connected"
    return f"refused: {answer.decode(errors='replace').strip() or 'connection closed'}"


def attempt(client_certificate: tuple[str, str] | None, use_tls: bool) -> str:
    try:
        return _exchange(client_certificate, use_tls)
    except NotReached as error:
        return f"error: {error}"
    except (OSError, ssl.SSLError) as error:
        return f"refused: {error}"


CERTIFICATES_GIVEN = ("FOREIGN", "SPARE")


def given_certificate(name: str) -> tuple[str, str] | None:
    """The certificate and key PAYSAGA_PROBE_<name>_CERT and _KEY hold, as files; None without them."""
    if f"PAYSAGA_PROBE_{name}_CERT" not in os.environ:
        return None
    directory = Path("/tmp") / name.lower()  # noqa: S108 - the one-off container's own tmpfs
    directory.mkdir(mode=0o700, exist_ok=True)
    files = (directory / "client.crt", directory / "client.key")
    for path, suffix in zip(files, ("CERT", "KEY"), strict=True):
        path.write_text(os.environ[f"PAYSAGA_PROBE_{name}_{suffix}"])
    return str(files[0]), str(files[1])


def main() -> int:
    results = {
        "plaintext": attempt(None, use_tls=False),
        "tls_without_certificate": attempt(None, use_tls=True),
    }
    for name in CERTIFICATES_GIVEN:
        certificate = given_certificate(name)
        if certificate is not None:
            results[f"tls_with_{name.lower()}_certificate"] = attempt(certificate, use_tls=True)
    results["tls_with_ops_certificate"] = attempt(("/certs/ops.crt", "/certs/ops.key"), use_tls=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
