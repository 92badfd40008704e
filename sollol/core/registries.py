"""Which registries a pull, push or create may make the nodes talk to (`allowed_registries`).

A model name may name its registry (`host[:port]/namespace/model[:tag]`, with `http://` or
`https://` in front); Ollama connects wherever it says, and with `insecure: true` over plain HTTP
or without checking the certificate. The gateway reads the host as Ollama does (the part before
the last two `/`-separated parts; none: Ollama's registry) and refuses, with a 403, any host not
listed, any spelling it cannot read for certain (user info, non-ASCII, brackets, escapes, empty
parts), and plain HTTP or `insecure` to a registry not listed as `http://host[:port]`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from sollol.errors import Forbidden

OLLAMA_REGISTRY = "registry.ollama.ai"
"""Ollama's own registry: always allowed (over HTTPS)."""
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?(?::[0-9]{1,5})?")
_FROM = re.compile(r"^\s*from\s+(\S+)", re.IGNORECASE | re.MULTILINE)
_HINT = "add it to allowed_registries to let the nodes use it"


def check_registries(values: list[Any]) -> list[str]:
    """The setting's check: `host[:port]` or `http(s)://host[:port]`, normalised."""
    out = []
    for value in values:
        try:
            plain, host = _split_scheme(value.strip().lower().rstrip("/")) \
                if isinstance(value, str) and value.isascii() else (False, "")
        except Forbidden:
            plain, host = False, ""
        host = host.rstrip(".")
        if not _HOST.fullmatch(host):
            raise ValueError("a list of registry hosts: host[:port] or http://host[:port]")
        out.append(("http://" if plain else "") + host)
    return out


class Registries:
    """The allowed registries of one config."""

    def __init__(self, allowed: Iterable[str]) -> None:
        entries = [OLLAMA_REGISTRY, *allowed]
        self.secure = {e.removeprefix("http://") for e in entries}
        self.plain = {e.removeprefix("http://") for e in entries if e.startswith("http://")}

    def check(self, name: str, insecure: bool = False) -> None:
        """Refuse (Forbidden) a model name whose registry the nodes may not use."""
        plain, host = registry_of(name)
        if host not in self.secure:
            raise Forbidden(f"model {name[:200]!r} names the registry {host[:100]!r}, which is "
                            f"not allowed; {_HINT}")
        if (plain or insecure) and host not in self.plain:
            raise Forbidden(f"model {name[:200]!r}: plain HTTP or 'insecure' to registry "
                            f"{host[:100]!r} is not allowed; to allow it, list it as "
                            f"'http://{host[:100]}' in allowed_registries")

    def check_request(self, operation: str, model: str, body: dict[str, Any]) -> None:
        """Every registry a pull, push or create would reach: its model, and for a create the
        model it starts from (Ollama pulls one it lacks) and a modelfile's `FROM` lines."""
        insecure = body.get("insecure") not in (None, False)
        if operation in ("pull", "push"):
            self.check(model, insecure)
        elif operation == "create":
            for source in _sources(body):
                if not source.startswith(("/", "./", "../", "~")):  # a file on the node
                    self.check(source, insecure)


def _sources(body: dict[str, Any]) -> Iterator[str]:
    source = body.get("from")
    if isinstance(source, str) and source.strip():
        yield source.strip()
    modelfile = body.get("modelfile")
    if isinstance(modelfile, str):
        yield from (match.group(1) for match in _FROM.finditer(modelfile))


def _split_scheme(text: str) -> tuple[bool, str]:
    scheme, sep, rest = text.partition("://")
    if not sep:
        return False, text
    if scheme not in ("http", "https"):
        raise Forbidden(f"unknown registry scheme {scheme[:20]!r} (allowed_registries takes "
                        "http:// and https://)")
    return scheme == "http", rest


def registry_of(name: str) -> tuple[bool, str]:
    """(plain HTTP, normalised host) of the registry a model name points at, read as Ollama
    reads it; Forbidden for a spelling that is not certain."""
    plain, rest = _split_scheme(name.strip())
    rest = rest.replace("\\", "/")  # an Ollama on Windows reads a backslash as a separator
    path, at, digest = rest.rpartition("@") if "@" in rest else (rest, "", "")
    if at and ("@" in path or "/" in digest):
        raise Forbidden(f"model {name[:200]!r}: a registry with user info is not allowed "
                        "(allowed_registries lists plain hosts)")
    parts = path.split("/")
    if len(parts) <= 2:
        return plain, OLLAMA_REGISTRY
    host = "/".join(parts[:-2])
    host = host.lower().rstrip(".") if host.isascii() else host  # "\u212a".lower() is "k"
    if not _HOST.fullmatch(host) or not all(parts[-2:]):
        raise Forbidden(f"model {name[:200]!r}: cannot tell which registry it names; use "
                        "host[:port]/namespace/model with a host in allowed_registries")
    return plain, host
