"""The base image every paysaga image builds on: python:3.11-slim, or a stand-in from Debian packages.

Where a container registry is reachable, python:3.11-slim is used (pulled if need be). Where
none is, a stand-in is built from Debian's archive, which these machines do reach: debootstrap
makes a minimal Debian, it is imported as an image, and deploy/base/Dockerfile adds Python, a
virtualenv on PATH and the CA certificates. Two host settings are carried into it, because apt
and pip inside containers meet the same network as on the host: extra CA certificates (an HTTPS
proxy's, e.g. from /usr/local/share/ca-certificates) and apt's Check-Valid-Until setting.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from paysaga.ops.compose.engine import EngineError, Say, apt_install, debian_mirror, run
from paysaga.ops.compose.project import REPO

OFFICIAL_BASE = "python:3.11-slim"
DEBIAN_BASE = "paysaga-base/python:3.11-bookworm"
DEBIAN_ROOTFS = "paysaga-base/debian:bookworm"
DEBIAN_SUITE = "bookworm"
FINGERPRINT_LABEL = "dev.paysaga.base.fingerprint"
# Every image the compose files build carries it, so a rebuild's leftovers can be pruned.
PROJECT_LABEL = "dev.paysaga.image"
HOST_EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")
BASE_DOCKERFILE = REPO / "deploy" / "base" / "Dockerfile"
PULL_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class DebianBase:
    """How to build the stand-in: the archive, extra CA certificates, and apt's Valid-Until check."""

    mirror: str
    extra_ca_certificates: tuple[Path, ...]
    check_valid_until: bool

    @classmethod
    def from_host(cls, extra_ca_dir: Path | None, mirror: str | None = None) -> DebianBase:
        certificates = tuple(sorted(extra_ca_dir.glob("**/*.crt"))) if extra_ca_dir and extra_ca_dir.is_dir() else ()
        return cls(mirror or debian_mirror(), certificates, _host_checks_valid_until())

    def fingerprint(self, today: dt.date | None = None) -> str:
        """Changes whenever what the image would contain changes, so a stale one is rebuilt, and
        every week, so it gets the distribution's security updates."""
        year, week, _ = (today or dt.date.today()).isocalendar()
        digest = hashlib.sha256(f"{self.mirror}\n{DEBIAN_SUITE}\n{self.check_valid_until}\n{year}-{week}\n".encode())
        digest.update(BASE_DOCKERFILE.read_bytes())
        for path in self.extra_ca_certificates:
            digest.update(path.read_bytes())
        return digest.hexdigest()[:16]


def _host_checks_valid_until() -> bool:
    result = run(["apt-config", "dump", "Acquire::Check-Valid-Until"], timeout_s=30, check=False)
    return '"false"' not in result.stdout


def image_label(image: str, label: str) -> str | None:
    """A label of a local image, "" when it has no such label, None when there is no such image."""
    result = run(
        ["docker", "image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', image],
        timeout_s=60,
        check=False,
    )
    if result.returncode != 0:
        return None
    value = result.stdout.strip()
    return "" if value == "<no value>" else value


def image_exists(image: str) -> bool:
    return run(["docker", "image", "inspect", image], timeout_s=60, check=False).returncode == 0


def choose_base_image(mode: str, debian_base: Callable[[], DebianBase], say: Say) -> str:
    """The base image to build on. mode: auto (python:3.11-slim if present or pullable, else the
    Debian stand-in), python (python:3.11-slim or fail) or debian (the stand-in). debian_base is
    asked only when the stand-in is wanted (it reads the host's apt settings)."""
    if mode in ("auto", "python"):
        if image_exists(OFFICIAL_BASE):
            say(f"base image {OFFICIAL_BASE}: present")
            return OFFICIAL_BASE
        say(f"base image: pulling {OFFICIAL_BASE}")
        pulled = run(["docker", "pull", OFFICIAL_BASE], timeout_s=PULL_TIMEOUT_S, check=False)
        if pulled.returncode == 0:
            return OFFICIAL_BASE
        reason = pulled.stderr.strip().splitlines()[-1:] or ["no output"]
        if mode == "python":
            raise EngineError(f"cannot pull {OFFICIAL_BASE}: {reason[0]}")
        say(f"no registry ({reason[0]}); building the base image from Debian packages instead")
    return ensure_debian_base(debian_base(), say)


def ensure_debian_base(base: DebianBase, say: Say) -> str:
    """The Debian stand-in, built unless one from the same inputs is already there."""
    fingerprint = base.fingerprint()
    if image_label(DEBIAN_BASE, FINGERPRINT_LABEL) == fingerprint:
        say(f"base image {DEBIAN_BASE}: present (built from Debian packages, {base.mirror})")
        return DEBIAN_BASE
    if shutil.which("debootstrap") is None:
        apt_install(["debootstrap"], say)
    trusted = ", ".join(str(path) for path in base.extra_ca_certificates) or "none"
    say(f"building {DEBIAN_BASE} from {base.mirror} ({DEBIAN_SUITE}); extra CA certificates: {trusted}")
    with tempfile.TemporaryDirectory(prefix="paysaga-rootfs-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        run(["debootstrap", "--variant=minbase", DEBIAN_SUITE, rootfs, base.mirror], timeout_s=1200)
        certificates = rootfs / "usr" / "local" / "share" / "ca-certificates"
        certificates.mkdir(parents=True, exist_ok=True)
        for index, path in enumerate(base.extra_ca_certificates):
            shutil.copyfile(path, certificates / f"extra-{index}-{path.name}")
        if not base.check_valid_until:
            (rootfs / "etc" / "apt" / "apt.conf.d" / "99check-valid-until").write_text(
                "// As on the host that built this image (its archive may serve an expired Release file).\n"
                'Acquire::Check-Valid-Until "false";\n'
            )
        _import(rootfs, DEBIAN_ROOTFS)
    run(
        [
            "docker",
            "build",
            "--tag",
            DEBIAN_BASE,
            "--build-arg",
            f"ROOTFS_IMAGE={DEBIAN_ROOTFS}",
            "--label",
            f"{FINGERPRINT_LABEL}={fingerprint}",
            "--file",
            BASE_DOCKERFILE,
            BASE_DOCKERFILE.parent,
        ],
        timeout_s=1200,
    )
    return DEBIAN_BASE


def _import(rootfs: Path, tag: str) -> None:
    """tar the root file system into `docker import`, numeric owners kept."""
    with subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE) as archive:
        imported = subprocess.run(
            ["docker", "import", "-", tag], stdin=archive.stdout, capture_output=True, text=True, timeout=600
        )
    if archive.returncode != 0 or imported.returncode != 0:
        raise EngineError(f"importing {rootfs} as {tag} failed: {imported.stderr.strip()}")
