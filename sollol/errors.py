"""SOLLOL's exceptions. Library code raises these; only the CLI and the gateway translate them.

SollolError
├── ConfigError            a config key has a bad value, or is unknown
├── PluginError            a plugin failed to load, or broke the hook contract
│   └── DuplicateNameError two plugins registered the same name
├── BinaryNotFound         a llama.cpp binary is missing
├── BuildError             building the llama.cpp binaries failed
├── ModelFileError         a GGUF file or a model-store entry is malformed
├── RequestError           the client's request is wrong (HTTP 400)
│   ├── ModelNotFound      no route knows the model (HTTP 404)
│   ├── BackendNotFound    no route has the named node or rpc-server (HTTP 404)
│   ├── PayloadTooLarge    the body is over the limit (HTTP 413)
│   ├── Unauthorized       no valid access key (HTTP 401)
│   └── Forbidden          the key, Host or Origin may not do this (HTTP 403)
├── Overloaded             queues are full; try again later (HTTP 429)
├── NoRouteAvailable       nothing can serve the request now (HTTP 503)
├── NotSupported           no backend holding the model can do what is asked (HTTP 501)
└── BackendError           a backend failed while serving (HTTP 502)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class SollolError(Exception):
    """Base class of every error SOLLOL raises on purpose."""

    status = 500


class ConfigError(SollolError):
    """A configuration value is invalid; the message names key, value and what is expected."""

    def __init__(self, key: str, value: object, expected: str, source: str = "") -> None:
        self.key, self.value, self.expected, self.source = key, value, expected, source
        where = f" (from {source})" if source else ""
        super().__init__(f"config key {key!r}{where}: got {value!r}, expected {expected}")


class PluginError(SollolError):
    """A plugin could not be loaded or does not follow the hook contract."""


class DuplicateNameError(PluginError):
    """Two plugins registered something under the same name."""

    def __init__(self, what: str, name: str, first: str, second: str) -> None:
        self.what, self.name, self.first, self.second = what, name, first, second
        super().__init__(
            f"{what} {name!r} is registered by both plugin {first!r} and plugin {second!r}"
        )


class BinaryNotFound(SollolError):
    """A llama.cpp binary could not be found anywhere SOLLOL looks."""


class BuildError(SollolError):
    """Downloading or building the llama.cpp binaries failed; the message ends with the log tail."""


class ModelFileError(SollolError):
    """A model file is not valid GGUF, or a store's manifest or digest is malformed or unsafe."""


class RequestError(SollolError):
    """The client's request is invalid."""

    status = 400


class ModelNotFound(RequestError):
    """No route can serve the requested model."""

    status = 404


class BackendNotFound(RequestError):
    """A node or rpc-server named by the client is not a member of its route."""

    status = 404


class PayloadTooLarge(RequestError):
    """The request body is larger than `max_body_bytes`."""

    status = 413


class Unauthorized(RequestError):
    """The request carries no access key, or one the gateway does not know."""

    status = 401

    def __init__(self, message: str, browser: bool = False) -> None:
        self.browser = browser  # answer with a Basic challenge, so that a browser prompts
        super().__init__(message)


class Forbidden(RequestError):
    """The key's scope, the request's `Host` or its `Origin` does not allow this request."""

    status = 403


class Overloaded(SollolError):
    """Every queue is full; the client should retry after `retry_after` seconds."""

    status = 429

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class NoRouteAvailable(SollolError):
    """Nothing healthy can serve the request now; the message names what is down."""

    status = 503

    def __init__(
        self, message: str, retry_after: float = 5.0, numbers: Mapping[str, Any] | None = None
    ) -> None:
        self.retry_after = retry_after
        self.numbers = dict(numbers or {})  # the figures behind the message, as data
        super().__init__(message)


class NotSupported(SollolError):
    """The backends that hold the model lack a capability the request needs (e.g. embeddings).

    Never retried and never a health failure: asking again cannot help.
    """

    status = 501

    def __init__(self, message: str, status: int = 501) -> None:
        self.status = status
        super().__init__(message)


class BackendError(SollolError):
    """A backend failed while serving a request."""

    status = 502
