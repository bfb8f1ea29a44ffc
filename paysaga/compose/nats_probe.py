"""Runs inside the compose network (piped into `python -` in the ops container): can a client talk
to NATS without a certificate from our CA? Standard library only, so it needs nothing installed.

Prints one JSON object: for each way of connecting, "refused: <why>" or "connected". Only the
ops client's own certificate should get "connected"; that one proves the probe can succeed.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys

HOST, PORT = "nats", 4222
TIMEOUT_S = 5.0


def _exchange(client_certificate: tuple[str, str] | None, use_tls: bool) -> str:
    """Connect, read INFO, (maybe) upgrade to TLS, send CONNECT and PING: "connected" on PONG."""
    with socket.create_connection((HOST, PORT), timeout=TIMEOUT_S) as raw:
        info = raw.recv(4096)
        if not info.startswith(b"INFO"):
            return f"refused: no INFO from the server ({info[:40]!r})"
        stream: socket.socket = raw
        if use_tls:
            context = ssl.create_default_context(cafile="/certs/ca.crt")
            if client_certificate:
                context.load_cert_chain(*client_certificate)
            stream = context.wrap_socket(raw, server_hostname=HOST)
        stream.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        answer = b""
        while b"\r\n" not in answer:
            chunk = stream.recv(4096)
            if not chunk:
                break
            answer += chunk
        if b"PONG" in answer:
            return "connected"
        return f"refused: {answer.decode(errors='replace').strip() or 'connection closed'}"


def attempt(client_certificate: tuple[str, str] | None, use_tls: bool) -> str:
    try:
        return _exchange(client_certificate, use_tls)
    except (OSError, ssl.SSLError) as error:
        return f"refused: {error}"


def main() -> int:
    results = {
        "plaintext": attempt(None, use_tls=False),
        "tls_without_certificate": attempt(None, use_tls=True),
        "tls_with_ops_certificate": attempt(("/certs/ops.crt", "/certs/ops.key"), use_tls=True),
    }
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
