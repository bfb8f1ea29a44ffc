"""Serving HTTPS with mutual TLS from a service process (the OAuth endpoints, /metrics)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from paysaga.runtime.security import tls
from paysaga.runtime.settings import TlsFiles
from paysaga.runtime.tasks import sleep_or_stop

log = logging.getLogger(__name__)


async def serve_https(
    app: web.Application, host: str, port: int, files: TlsFiles, stop: asyncio.Event, *, name: str = "https"
) -> None:
    """Serve app on host:port over mutual TLS until stop is set, with this service's certificate
    and trust bundle followed across rotations (new handshakes use the new files)."""
    watcher = tls.CertificateWatcher(files)
    context = tls.server_ssl_context(files)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=context)
        await site.start()
        log.info(f"{name}.ready", extra={"https_bind": f"{host}:{port}"})
        while not stop.is_set():
            await sleep_or_stop(stop, watcher.check_interval_s)
            if watcher.poll() is not None:
                # A trust bundle only grows this way: a CA dropped by a rollover stays trusted
                # here until the next restart (its certificates are expired or revoked by then).
                context.load_cert_chain(str(files.cert_file), str(files.key_file))
                context.load_verify_locations(cafile=str(files.ca_file))
                log.info(f"{name}.certificate_reloaded", extra=watcher.material.describe())
    finally:
        await runner.cleanup()
