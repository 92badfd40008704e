"""Who may call the gateway: the request's `Host` (DNS rebinding), its `Origin` (other web
sites in the user's browser), what a request that changes the cluster carries (cross-site request
forgery), and its access key with the key's scope; CORS for allowed origins.

Everything is decided from sets built once, with small caches of header values already seen:
this runs before every request (docs/performance.md).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs

from sollol.core.access import AccessKey, KeyRing, open_bind, presented
from sollol.errors import Forbidden, Unauthorized
from sollol.gateway.route_table import ROUTES

if TYPE_CHECKING:
    from sollol.config import Config
    from sollol.gateway.asgi import Headers, Send

# Admin scope: model management (and its blob uploads), the monitor (metrics, dashboard) and
# SOLLOL's own state under /sollol/.
_ADMIN_KINDS = ("manage", "blobs", "monitor", "admin")
log = logging.getLogger("sollol.gateway")

ADMIN_PATHS = frozenset(r.path for r in ROUTES if r.kind in _ADMIN_KINDS and not r.prefix)
ADMIN_PREFIXES = ("/sollol/", *(r.path for r in ROUTES if r.kind in _ADMIN_KINDS and r.prefix))
# The whole cluster: its state, events, nodes, metrics and dashboard name every model, and
# membership changes reach every model's requests. Not for a key limited to some models.
_CLUSTER_KINDS = ("monitor", "admin")
CLUSTER_PATHS = frozenset(r.path for r in ROUTES if r.kind in _CLUSTER_KINDS and not r.prefix)
CLUSTER_PREFIXES = ("/sollol/", *(r.path for r in ROUTES if r.kind in _CLUSTER_KINDS and r.prefix))
CORS_METHODS = b"GET, HEAD, POST, DELETE, OPTIONS"
CORS_HEADERS = b"authorization, content-type, x-api-key, anthropic-version"
EXPOSED = b"x-sollol-route, x-sollol-backend, x-sollol-policy, x-sollol-reason, retry-after"
_CACHE_LIMIT = 512
_TOKEN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_, ")
BROWSER_PATHS = ("/dashboard", "/sollol/", "/metrics")
"""Paths people open in a browser: their 401 asks for HTTP Basic, so the browser prompts."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CHANGING: dict[str, frozenset[str]] = {}
for _route in ROUTES:
    if _route.kind in _ADMIN_KINDS and not _route.prefix:
        _CHANGING[_route.path] = _CHANGING.get(_route.path, frozenset()) | (
            frozenset(_route.methods) - SAFE_METHODS)
_CHANGING = {path: methods for path, methods in _CHANGING.items() if methods}
_CHANGING_PREFIXES = tuple((r.path, frozenset(r.methods) - SAFE_METHODS) for r in ROUTES
                           if r.kind in _ADMIN_KINDS and r.prefix)
_CHANGING_STARTS = tuple(prefix for prefix, _ in _CHANGING_PREFIXES)
"""Routes that change the cluster, by path: the methods that do."""
JSON_TYPE = b"application/json"
CSRF_HEADER = b"x-requested-with"
"""A header no HTML form and no simple `fetch` can send (setting it needs a CORS preflight):
the CLI sends it on every request, beside a JSON `Content-Type` where there is a body."""
NO_KEY_HINT = ("send one as 'Authorization: Bearer KEY' or 'x-api-key: KEY'; an admin makes "
               "keys with `sollol keys create NAME`")


@attrs.frozen
class Admitted:
    """A request that passed the guard: its key (None when the gateway needs none) and its
    `Origin` when that is an allowed browser origin (CORS headers go on the response)."""

    key: AccessKey | None = None
    origin: bytes | None = None


OPEN = Admitted()


def _host_name(value: str) -> str:
    """The host part of a `Host` header, lower-case, without port, brackets or trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class _Patterns:
    """Exact names, globs and `*`, matched case-insensitively."""

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = [p.lower() for p in patterns]
        self.any = "*" in patterns
        self.exact = set(patterns)  # also `https://[::1]:5000`, which fnmatch reads as a class
        self.globs = [p for p in patterns if any(c in p for c in "*?[") and p != "*"]

    def match(self, value: str) -> bool:
        return (self.any or value in self.exact
                or any(fnmatch.fnmatchcase(value, g) for g in self.globs))


class Guard:
    """The gateway's admission checks, built once from the config and the bind address."""

    def __init__(self, config: Config, bind_host: str) -> None:
        self.config = config
        self.bind_host = bind_host
        self.keys = KeyRing.from_config(config["api_keys"])
        # one Admitted per key, made once: requests without an Origin reuse it
        self._admitted = {key.name: Admitted(key) for key in self.keys.keys}
        bind = _host_name(bind_host)
        machine = socket.gethostname().lower().rstrip(".")
        own = {bind, machine, f"{machine}.local"} if machine else {bind}
        self._hosts = _Patterns([*own, *config["allowed_hosts"]])
        # `GET /` is how clients check that a server is up; /metrics only if the user says so
        self._public = {"/", *(["/metrics"] if config.get("metrics_public") else [])}
        self._origins = _Patterns(config["allowed_origins"])
        self._hosts_seen: set[bytes] = set()
        self._origins_seen: set[bytes] = set()

    def for_config(self, config: Config, insecure: bool) -> Guard:
        """The guard for a reloaded config; this one when the new config would leave a wide
        bind without keys (refused at start-up, so refused at a reload too)."""
        if config is self.config:
            return self
        problem = open_bind(self.bind_host, config["api_keys"])
        if problem and not insecure:
            log.error("config reload: keeping the old access keys: %s", problem)
            self.config = config  # do not check again for every request
            return self
        return Guard(config, self.bind_host)

    # ---- the checks

    def admit(self, path: str, method: str, headers: Headers, public: bool = False,
              plugin_admin: bool = False) -> Admitted:
        """Check one request; raise Forbidden (Host, Origin, scope) or Unauthorized (key).

        `public`: a plugin endpoint that authenticates its callers itself (no key needed; the
        Host and Origin checks still apply). `plugin_admin`: a plugin's admin endpoint, which
        changes the cluster on any method but GET/HEAD (the forgery rule applies to it).
        """
        host = origin = auth = api_key = None
        for name, value in headers:
            if name == b"host":
                host = value
                if value not in self._hosts_seen:
                    self._check_host(value)
            elif name == b"origin":
                origin = value
            elif name == b"authorization":
                auth = value
            elif name == b"x-api-key":
                api_key = value
        if origin is not None and origin not in self._origins_seen:
            self._check_origin(origin, host)
        forgeable = (method not in SAFE_METHODS
                     and (plugin_admin or ((path in _CHANGING or path.startswith(_CHANGING_STARTS))
                                           and _changes(path, method)))
                     and not _unforgeable(headers))
        if (not self.keys or method == "OPTIONS" or public  # a preflight never carries a key
                or (path in self._public and method in ("GET", "HEAD"))):
            if forgeable:
                _refuse_forgeable(method, path)
            return OPEN if origin is None else Admitted(None, origin)
        key = None
        for candidate in presented(auth, api_key):
            key = self.keys.find(candidate)
            if key is not None:
                break
        if key is None:
            what = "invalid API key" if auth or api_key else "this gateway needs an API key"
            raise Unauthorized(f"{what}: {NO_KEY_HINT}", browser=path.startswith(BROWSER_PATHS))
        if not key.admin and (path in ADMIN_PATHS or path.startswith(ADMIN_PREFIXES)):
            raise Forbidden(f"key {key.name!r} is an inference key; {method} {path} needs an "
                            "admin key (`sollol keys create NAME --admin`)")
        if key.limited and (path in CLUSTER_PATHS or path.startswith(CLUSTER_PREFIXES)):
            raise Forbidden(f"key {key.name!r} is limited to some models; {method} {path} "
                            "shows or changes the whole cluster and needs a key for every model")
        if forgeable:
            _refuse_forgeable(method, path)
        return self._admitted[key.name] if origin is None else Admitted(key, origin)

    def _check_host(self, value: bytes) -> None:
        name = _host_name(value.decode("latin-1"))
        if not (name == "" or _is_ip(name) or _is_loopback_name(name) or self._hosts.match(name)):
            raise Forbidden(f"requests for host {name[:100]!r} are refused (a defence against "
                            "DNS rebinding); if clients reach the gateway by that name, add it "
                            "to allowed_hosts")
        _remember(self._hosts_seen, value)

    def _check_origin(self, value: bytes, host: bytes | None) -> None:
        origin = value.decode("latin-1").strip().lower().rstrip("/")
        if _same_origin(origin, host):
            return  # a page the gateway served itself (the dashboard); not cached: Host varies
        if not self._origins.match(origin):  # a page on another loopback port is another site
            raise Forbidden(f"requests from web pages at {origin[:100]!r} are refused; to let "
                            "that site call the gateway, add it to allowed_origins")
        _remember(self._origins_seen, value)


def _remember(seen: set[bytes], value: bytes) -> None:
    if len(seen) >= _CACHE_LIMIT:  # header values are client-chosen: keep the cache bounded
        seen.clear()
    seen.add(value)


def _same_origin(origin: str, host: bytes | None) -> bool:
    """Whether the page's origin is this gateway as the request addressed it (Host passed its
    check first, so a rebound name never gets here)."""
    if host is None:
        return False
    scheme, _, netloc = origin.partition("://")
    return scheme in ("http", "https") and netloc == host.decode("latin-1").strip().lower()


def _changes(path: str, method: str) -> bool:
    """Whether `method path` is served and changes the cluster (a 405 or 404 changes nothing)."""
    methods = _CHANGING.get(path)
    if methods is not None:
        return method in methods
    if not path.startswith(_CHANGING_STARTS):  # the common case, answered in C
        return False
    for prefix, methods in _CHANGING_PREFIXES:
        if path.startswith(prefix) and method in methods:
            return True
    return False


def _refuse_forgeable(method: str, path: str) -> None:
    raise Forbidden(f"{method} {path} changes the cluster: send it with 'Content-Type: "
                    "application/json' or an 'X-Requested-With' header (a defence against "
                    "cross-site request forgery: any web page can make a browser send other "
                    "requests)")


def _unforgeable(headers: Headers) -> bool:
    """Whether a request carries what no form and no simple `fetch` can send: a JSON body type
    (every `Content-Type` header must be JSON) or the `X-Requested-With` header."""
    json_body = None
    for name, value in headers:
        if name == CSRF_HEADER:
            return True
        if name == b"content-type":
            json_body = _is_json(value) and json_body is not False
    return bool(json_body)


def _is_json(content_type: bytes | None) -> bool:
    """Whether a `Content-Type` is JSON, which no form and no simple `fetch` can send (its media
    type is compared as browsers parse it: up to the first `;`, trimmed, any case)."""
    return (content_type is not None
            and content_type.split(b";", 1)[0].strip(b" \t").lower() == JSON_TYPE)


# ---- CORS


def preflight_headers(origin: bytes, requested: bytes | None) -> Headers:
    """The answer to an allowed origin's preflight: methods, headers, and a cache time."""
    allow = requested if requested and set(requested) <= _TOKEN else CORS_HEADERS
    return [(b"access-control-allow-origin", origin), (b"vary", b"origin"),
            (b"access-control-allow-methods", CORS_METHODS),
            (b"access-control-allow-headers", allow), (b"access-control-max-age", b"600")]


def with_cors(send: Send, origin: bytes) -> Send:
    """`send`, adding the CORS headers for `origin` to the response's start."""
    extra = [(b"access-control-allow-origin", origin), (b"vary", b"origin"),
             (b"access-control-expose-headers", EXPOSED)]

    async def cors_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return cors_send


def request_header(headers: Headers, wanted: bytes) -> bytes | None:
    for name, value in headers:
        if name == wanted:
            return value
    return None
