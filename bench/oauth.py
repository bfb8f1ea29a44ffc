"""What OAuth costs, measured in the same run as the sagas.

- The token endpoint: a closed loop of clients asking the cluster's authorization server for
  client_credentials tokens over mutual TLS (keep-alive connections, as an OAuth client library
  keeps them), with its rate, latency percentiles and the authorization server's CPU per token.
- The per-call cost of the checks every service makes on every client call: verifying the
  token (ES256 signature, terms, revocation list) and its certificate binding, against a call by
  one of our services (certificate only), in the services' own Authorizer, in this process.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.limits import RawLimit, closed_loop
from bench.procstats import Usage
from bench.stats import Latency
from paysaga.core.identity import client_identity, service_identity
from paysaga.ops.cluster.localcluster import AUTHORIZATION_SERVER, LocalCluster
from paysaga.ops.pki import authority
from paysaga.runtime.security import tls, tokens
from paysaga.runtime.security.authz import Authorizer, Rule
from paysaga.runtime.settings import TlsFiles

TOKEN_ENDPOINT = "OAuth token endpoint (mTLS)"  # noqa: S105 - a name, not a password
TOKEN_CONCURRENCY = 8
CHECK_ITERATIONS = 20_000
METHOD = "/paysaga.ledger.v1.LedgerService/GetBalance"


def register_client(cluster: LocalCluster, directory: Path) -> TlsFiles:
    """A client of its own, with a certificate from our CA, registered by ops' command."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    authority.issue(authority.load_ca(cluster.certs_dir), directory, name, authority.Kind.CLIENT, force=True)
    shutil.copyfile(cluster.certs_dir / "ca.crt", directory / "ca.crt")
    command = [sys.executable, "-m", "services.auth.clients_cli", "--database-url"]
    command += [cluster.database_url(AUTHORIZATION_SERVER), "register", name, "--scope", "ledger:read"]
    subprocess.run(command, check=True, capture_output=True)
    return TlsFiles.in_directory(directory, name)


async def token_endpoint(cluster: LocalCluster, directory: Path, *, concurrency: int, duration_s: float) -> RawLimit:
    """Tokens per second from the authorization server, and its CPU share while issuing them."""
    files = register_client(cluster, directory)
    url = cluster.oauth_issuer + "/oauth2/token"
    connector = aiohttp.TCPConnector(ssl=tls.client_ssl_context(files), limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def ask() -> None:
            async with session.post(url, data={"grant_type": "client_credentials"}) as response:
                body = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"the token endpoint answered {response.status}: {body}")

        await ask()  # connected and warm
        usage = Usage.of({AUTHORIZATION_SERVER: cluster.processes[AUTHORIZATION_SERVER].pid})
        usage.start()
        count, elapsed_s, latencies = await closed_loop(ask, concurrency, duration_s)
        usage.stop()
    cpu = {name: 100 * process.cpu_s / elapsed_s for name, process in usage.processes.items()}
    return RawLimit(TOKEN_ENDPOINT, concurrency, count, elapsed_s, Latency.of(latencies), cpu_percent=cpu)


@dataclass(frozen=True)
class CheckCost:
    """Microseconds of one process's CPU per call for each way a call is authorized."""

    service_identity_us: float  # one of our services: its certificate is its proof
    client_token_us: float  # a client: its token's terms, revocation and binding (signature verified before)
    # A token's first call: its ES256 signature and claims verified (then remembered until it expires).
    first_use_us: float
    iterations: int

    @property
    def token_and_binding_us(self) -> float:
        return self.client_token_us - self.service_identity_us

    def as_json(self) -> dict[str, Any]:
        return {
            "service_identity_us": round(self.service_identity_us, 2),
            "client_token_us": round(self.client_token_us, 2),
            "token_and_binding_us": round(self.token_and_binding_us, 2),
            "first_use_us": round(self.first_use_us, 2),
            "iterations": self.iterations,
        }


def _per_call_us(check: Any, iterations: int) -> float:
    started = time.process_time()
    for _ in range(iterations):
        check()
    return (time.process_time() - started) / iterations * 1e6


def authorization_checks(certs_dir: Path, iterations: int = CHECK_ITERATIONS) -> CheckCost:
    """The Authorizer of a service deciding the same call again and again, with a client's token
    (bound to its certificate, checked against a revocation list of 10 000 entries) and without."""
    thumbprint = tokens.certificate_file_thumbprint(certs_dir / "ops.crt")
    token = tokens.issue_token(
        tokens.load_signing_key(certs_dir),
        subject=client_identity("ops"),
        audiences=[tokens.audience_of("ledger")],
        scopes=["ledger:read"],
        bound_to=thumbprint,
    )
    revoked = tokens.RevokedTokens()
    revoked.add((str(uuid.uuid4()) for _ in range(10_000)), expires_at=time.time() + 3600)
    verifier = tokens.TokenVerifier(
        certs_dir / tokens.PUBLIC_KEYS_FILE, audience=tokens.audience_of("ledger"), revoked=revoked
    )
    authorizer = Authorizer({METHOD: Rule.clients("ledger:read", "payments")}, verifier)
    metadata = (("authorization", f"Bearer {token}"),)
    service = service_identity("payments")
    client = client_identity("ops")
    authorizer.check(METHOD, client, metadata, thumbprint)  # warm: keys loaded, caches filled
    return CheckCost(
        service_identity_us=_per_call_us(lambda: authorizer.check(METHOD, service, (), ""), iterations),
        client_token_us=_per_call_us(lambda: authorizer.check(METHOD, client, metadata, thumbprint), iterations),
        first_use_us=_per_call_us(lambda: verifier._verify_signed(token), iterations // 10),
        iterations=iterations,
    )


async def measure(cluster: LocalCluster, work_dir: Path, duration_s: float) -> tuple[RawLimit, CheckCost]:
    endpoint = await token_endpoint(
        cluster, work_dir / "oauth-client", concurrency=TOKEN_CONCURRENCY, duration_s=duration_s
    )
    checks = await asyncio.to_thread(authorization_checks, cluster.certs_dir)
    return endpoint, checks
