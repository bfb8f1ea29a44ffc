"""The compose files as docker compose reads them, without a Docker engine: YAML with compose's
!reset and !override tags, files merged in order, ${VARIABLE:-default} filled in."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FILES = ("docker-compose.yml",)
PRODUCTION_FILES = ("docker-compose.yml", "docker-compose.production.yml")
STANDBY_FILES = (*PRODUCTION_FILES, "docker-compose.standby.yml")


class Reset(list[Any]):
    """!reset: the key's value from earlier files is dropped."""


class Override:
    """!override: the value replaces the earlier one instead of merging with it."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    pass


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node))
    assert isinstance(node, yaml.MappingNode)
    return Override(loader.construct_mapping(node))


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())
ComposeLoader.add_constructor("!override", _override)


def read(name: str) -> dict[str, Any]:
    loaded = yaml.load((REPO / name).read_text(), Loader=ComposeLoader)  # noqa: S506 - SafeLoader plus two tags
    assert isinstance(loaded, dict)
    return loaded


# Sequences that replace the earlier value when merged; every other sequence is appended to it.
REPLACED_SEQUENCES = frozenset({"command", "entrypoint", "test"})


def merge(base: Any, overlay: Any, key: str = "") -> Any:
    """Compose's merge rules for what our files use: mappings merge key by key (environment
    included); sequences append what is not there yet (volumes, ports, networks, tmpfs), except
    command, entrypoint and healthcheck.test, which replace; !reset drops the earlier value,
    !override replaces it; scalars replace."""
    if isinstance(overlay, Reset):
        return []
    if isinstance(overlay, Override):
        return overlay.value
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for name, value in overlay.items():
            merged[name] = merge(base[name], value, name) if name in base else _strip(value)
        return merged
    if isinstance(base, list) and isinstance(overlay, list) and key not in REPLACED_SEQUENCES:
        return [*base, *(item for item in overlay if item not in base)]
    return _strip(overlay)


def _strip(value: Any) -> Any:
    if isinstance(value, Override):
        return value.value
    if isinstance(value, dict):
        return {name: _strip(item) for name, item in value.items()}
    return value


def interpolate(value: Any, environ: Mapping[str, str]) -> Any:
    """${NAME:-default} and ${NAME} as docker compose fills them in."""
    if isinstance(value, str):
        return re.sub(
            r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}",
            lambda found: environ.get(found[1]) or (found[2] or ""),
            value,
        )
    if isinstance(value, list):
        return [interpolate(item, environ) for item in value]
    if isinstance(value, dict):
        return {name: interpolate(item, environ) for name, item in value.items()}
    return value


def load(files: tuple[str, ...], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name in files:
        merged = merge(merged, read(name))
    result = interpolate(merged, environ or {})
    assert isinstance(result, dict)
    return result


def mount_targets(spec: Mapping[str, Any]) -> list[str]:
    """Where a service's volumes, bind mounts and tmpfs appear inside its container."""
    return [volume.split(":")[1] for volume in spec.get("volumes", [])] + list(spec.get("tmpfs", []))


def outside_mounts(paths: list[Path], spec: Mapping[str, Any], workdir: Path = Path("/app")) -> list[str]:
    """The paths (relative ones taken from the image's working directory) that no mount holds: what a
    container would read from its image, or fail to write on a read-only root file system."""
    targets = [Path(target) for target in mount_targets(spec)]
    found = []
    for path in paths:
        absolute = path if path.is_absolute() else workdir / path
        if not any(absolute.is_relative_to(target) for target in targets):
            found.append(str(absolute))
    return found
