"""Configuration: TOML in the user config dir, `SOLLOL_<KEY>` env overrides, CLI overrides on top.

Keys are declared as `Setting`s, by the core here and by plugins through
`sollol_register_settings` (each plugin declares the keys it owns, such as the pool's
`ollama_nodes`); a key nobody declared is an error.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import platformdirs
import tomli_w

from sollol.core import access
from sollol.core.registries import check_registries
from sollol.core.units import (
    at_least,
    folder_list,
    name_patterns,
    non_negative,
    port_number,
    positive,
    seconds,
    share,
)
from sollol.errors import ConfigError

Kind = Literal["bool", "int", "float", "str", "list", "table"]
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@attrs.frozen
class Setting:
    """One config key: its type, default, help text and an optional extra check."""

    name: str
    kind: Kind
    default: Any
    help: str
    optional: bool = False
    choices: tuple[str, ...] = ()
    check: Callable[[Any], Any] | None = None
    """Takes the typed value, returns it (possibly normalised) or raises ValueError(expected)."""
    redact: Callable[[Any], Any] | None = None
    """For keys that hold secrets: the value as it may be shown (`config show`, errors)."""
    extra_env: str | None = None
    """Another environment variable that sets this key when it is not empty (`SOLLOL_<KEY>`
    wins over it): a name users already know, such as the pool's `OLLAMA_HOSTS`."""

    @property
    def env_var(self) -> str:
        return "SOLLOL_" + self.name.upper()

    def shown(self, value: Any) -> Any:
        """`value` as it may be printed: redacted when this key holds secrets."""
        if self.redact is None:
            return value
        try:
            return self.redact(value)
        except Exception:  # a malformed secret must not leak through its own error message
            return "<hidden>"

    def expected(self) -> str:
        text = {"bool": "true or false", "int": "an integer", "float": "a number",
                "str": "a string", "list": "a list (comma-separated in env)",
                "table": "a table (JSON in env)"}[self.kind]
        if self.choices:
            text = "one of " + ", ".join(self.choices)
        return text + (" or nothing" if self.optional else "")


@attrs.frozen
class Config:
    """Validated configuration values, with where each came from."""

    values: Mapping[str, Any]
    sources: Mapping[str, str] = attrs.field(factory=dict)
    path: Path | None = None

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def read(self, setting: Setting) -> Any:
        """The value of `setting`'s key, or its default (a copy) when this config was built
        without the key: by hand, or loaded before the plugin that declares it was."""
        if setting.name in self.values:
            return self.values[setting.name]
        return copy.deepcopy(setting.default)

    def evolve(self, **changes: Any) -> Config:
        """A copy with some values replaced (marked as coming from code)."""
        values = {**self.values, **changes}
        sources = {**self.sources, **dict.fromkeys(changes, "override")}
        return Config(values=values, sources=sources, path=self.path)


def _aliases(value: Any) -> Any:
    from sollol.core.aliases import check_aliases

    return check_aliases(value)


def _fallbacks(value: Any) -> Any:
    from sollol.core.aliases import check_fallbacks

    return check_fallbacks(value)


CORE_SETTINGS: tuple[Setting, ...] = (
    Setting("model_sharding_enabled", "bool", False,
            "Serve models through llama.cpp RPC sharding."),
    Setting("task_distribution_enabled", "bool", True,
            "Balance requests over the pool of nodes."),
    Setting("routing_policy", "str", "size-threshold",
            "Policy that picks a route when sharding and distribution are both on."),
    Setting("policy_settings", "table", {},
            "Settings per policy, e.g. {\"size-threshold\": {\"min_parameters\": 13e9}}."),
    Setting("gateway_host", "str", "127.0.0.1", "Address the gateway binds to."),
    Setting("gateway_port", "int", 11435, "Port the gateway listens on.", check=port_number),
    Setting("plugins", "list", None, "Allow-list of plugin names (unset: all installed).",
            optional=True),
    Setting("disabled_plugins", "list", [], "Plugin names never to load."),
    Setting("max_body_bytes", "int", 16 * 1024 * 1024, "Largest request body accepted.",
            check=positive),
    Setting("header_timeout", "float", 10.0,
            "Seconds a client has to send a request's headers, from connecting (on a kept-alive "
            "connection, from the request's first bytes); then 408 and closed.",
            check=positive),
    Setting("body_timeout", "float", 60.0,
            "Seconds a client has to send a request's whole body once its headers are in; "
            "then 408 and closed.", check=positive),
    Setting("max_connections", "int", 1000,
            "Client connections open at once; at the limit an idle one or one of a client "
            "over max_client_share gives way, else 503.", check=positive),
    Setting("max_client_share", "float", 0.5, "Share of slots one address keeps.", check=share),
    Setting("max_header_bytes", "int", 64 * 1024, "Largest request head (then 431).",
            check=at_least(1024)),
    Setting("max_headers", "int", 100, "Most header fields (then 431).", check=at_least(8)),
    Setting("max_event_streams", "int", 16, "Dashboard event streams at once.", check=at_least(1)),
    Setting("blob_dir", "str", None,
            "Folder where blobs uploaded for /api/create wait until a create sends them to the "
            "nodes (unset: a folder in SOLLOL's user cache folder).", optional=True),
    Setting("max_blob_bytes", "int", 256 * 1024**3,
            "Largest blob a client may upload through the gateway (/api/blobs).",
            check=positive),
    Setting("blob_quota_bytes", "int", 512 * 1024**3, "Most bytes spooled (then 507).",
            check=positive),
    Setting("blob_min_free_bytes", "int", 1024**3, "Disk space uploads leave.", check=non_negative),
    Setting("blob_idle_timeout", "float", 3600.0, "Seconds unused uploads stay.", check=positive),
    Setting("blob_keep_after_create", "float", 60.0, "Kept after a create, s.", check=non_negative),
    Setting("gguf_dirs", "list", [],
            "Folders of GGUF files that requests may name (by file name, or a path inside "
            "them); no other file on the gateway machine can be named.", check=folder_list),
    Setting("max_reply_bytes", "int", 64 * 1024 * 1024,
            "Largest whole (non-streamed) reply accepted from a node; a larger one is an error "
            "naming the node.", check=positive),
    Setting("request_timeout", "float", 600.0,
            "Seconds a request may take upstream before it is cut.", check=positive),
    Setting("connect_timeout", "float", 5.0, "Seconds to connect to an upstream.",
            check=positive),
    Setting("stream_idle_timeout", "float", 60.0,
            "Seconds a stream may go without a chunk, once its first chunk came, before it is "
            "cut with an error.", check=positive),
    Setting("health_interval", "float", 5.0, "Seconds between active health probes.",
            check=positive),
    Setting("discovery_interval", "float", 60.0,
            "Seconds between re-runs of backend discovery while the gateway serves (subnet "
            "scans, loopback rpc-servers, every plugin's discovery); 0 turns it off.",
            check=seconds),
    Setting("llama_cpp_dir", "str", None, "Folder holding llama-server and ggml-rpc-server.",
            optional=True),
    Setting("metrics_enabled", "bool", True,
            "Keep request metrics: /metrics, the dashboard's charts and request statistics."),
    Setting("metrics_max_models", "int", 50,
            "Models that get their own metric label; the rest share the label \"other\".",
            check=at_least(1)),
    Setting("metrics_public", "bool", False,
            "Serve /metrics without an access key once access keys are configured "
            "(otherwise it needs an admin key, like the dashboard)."),
    Setting("backend_metrics_interval", "float", 5.0,
            "Seconds between reads of llama-server backends' own /metrics (0: never).",
            check=seconds),
    Setting("api_keys", "list", [],
            "Access keys the gateway requires (`sollol keys create`): plain keys or tables "
            "{name, hash|key, admin, models}.", check=access.normalise, redact=access.redact),
    Setting("allowed_hosts", "list", [],
            "Host names the gateway answers to besides loopback, IP addresses, its bind "
            "address and this machine's name (`*.example.com` globs; `*`: any).",
            check=name_patterns),
    Setting("allowed_origins", "list", [],
            "Browser origins allowed to call the gateway besides its own dashboard; pages "
            "on other loopback ports are other sites (`https://app.example.com`, globs; "
            "`*`: any).", check=name_patterns),
    Setting("allowed_registries", "list", [],
            "Registries a pull, push or create may name besides Ollama's registry.ollama.ai "
            "(`host[:port]`; `http://host[:port]` also allows plain HTTP and `insecure`).",
            check=check_registries),

    Setting("model_aliases", "table", {},
            "Public model names: name = \"model\" or {model, route, nodes}.",
            check=_aliases),
    Setting("model_fallbacks", "table", {},
            "Models to try, in order, when a model is unavailable or overloaded.",
            check=_fallbacks),
    Setting("local_ctx_size", "int", 16384,
            "Tokens of context each request gets on the servers `sollol run --local` and "
            "`sollol demo` start (prompt and answer; coding agents need 16384).",
            check=at_least(256)),
)


def core_setting(name: str) -> Setting:
    """The core's declaration of key `name`, for a plugin that reads a core key (such as
    `health_interval`) through its `Setting`; KeyError when the core declares no such key."""
    for setting in CORE_SETTINGS:
        if setting.name == name:
            return setting
    raise KeyError(name)


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """The config file: `SOLLOL_CONFIG`, else `config.toml` in the platformdirs user config dir."""
    env = os.environ if env is None else env
    if env.get("SOLLOL_CONFIG"):
        return Path(env["SOLLOL_CONFIG"])
    return Path(platformdirs.user_config_dir("sollol")) / "config.toml"


def read_file(path: Path) -> dict[str, Any]:
    """The raw TOML table in `path` ({} when the file does not exist)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(file)", str(path), f"valid TOML ({exc})") from None


def write_file(path: Path, values: Mapping[str, Any]) -> None:
    """Write the TOML atomically: a temp file in the same folder, then a rename."""
    write_text_atomically(path, tomli_w.dumps({k: v for k, v in values.items() if v is not None}))


def write_text_atomically(path: Path, text: str) -> None:
    """Replace the config file at `path` with `text` in one rename: a reader sees the old file
    or the new one, never half of it, and a failed write leaves the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".toml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_text(setting: Setting, text: str) -> Any:
    """Turn an env or command-line string into a value of the setting's kind (unchecked)."""
    text = text.strip()
    if setting.optional and text == "":
        return None
    if setting.kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(text)
    if setting.kind == "int":
        try:
            return int(text)
        except ValueError:
            number = float(text)  # accepts "13e9"
            if not number.is_integer():
                raise
            return int(number)
    if setting.kind == "float":
        return float(text)
    if setting.kind == "list":
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    if setting.kind == "table":
        return json.loads(text or "{}")
    return text


def check_value(setting: Setting, value: Any, source: str) -> Any:
    """Validate a typed value; raise ConfigError naming the key, the value and what is expected."""
    if value is None:
        if setting.optional:
            return None
        raise ConfigError(setting.name, setting.shown(value), setting.expected(), source)
    types = {"bool": bool, "int": int, "float": (int, float), "str": str, "list": list,
             "table": dict}[setting.kind]
    wrong_bool = setting.kind in ("int", "float") and isinstance(value, bool)
    if not isinstance(value, types) or wrong_bool:
        raise ConfigError(setting.name, setting.shown(value), setting.expected(), source)
    if setting.kind == "float":
        value = float(value)
    if setting.choices and value not in setting.choices:
        raise ConfigError(setting.name, setting.shown(value), setting.expected(), source)
    if setting.check is not None:
        try:
            value = setting.check(value)
        except ValueError as exc:
            raise ConfigError(setting.name, setting.shown(value), str(exc), source) from None
    return value


def _from_text(setting: Setting, text: str, source: str) -> Any:
    try:
        value = parse_text(setting, text)
    except ValueError:
        shown = "<hidden>" if setting.redact is not None else text
        raise ConfigError(setting.name, shown, setting.expected(), source) from None
    return check_value(setting, value, source)


def _known_key(key: str, known: Iterable[str]) -> str:
    """What an unknown key should have been: the close known names, if any."""
    close = difflib.get_close_matches(key, list(known), n=2, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"a known key (see `sollol config show`){hint}"


def load_config(
    settings: Iterable[Setting] = CORE_SETTINGS,
    *,
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    ignore_unknown: bool = False,
) -> Config:
    """Defaults, then the file, then the environment (a setting's `extra_env`, then
    `SOLLOL_<KEY>`), then `overrides`."""
    env = os.environ if env is None else env
    path = path or config_path(env)
    by_name = {s.name: s for s in settings}
    values = {name: s.default for name, s in by_name.items()}
    sources = dict.fromkeys(by_name, "default")
    for key, value in read_file(path).items():
        if key not in by_name:
            if ignore_unknown:
                continue
            raise ConfigError(key, "...", _known_key(key, by_name), str(path))
        values[key] = check_value(by_name[key], value, str(path))
        sources[key] = str(path)
    for name, setting in by_name.items():
        if setting.extra_env and env.get(setting.extra_env):
            values[name] = _from_text(setting, env[setting.extra_env], setting.extra_env)
            sources[name] = setting.extra_env
        if setting.env_var in env:
            values[name] = _from_text(setting, env[setting.env_var], setting.env_var)
            sources[name] = setting.env_var
    for key, value in (overrides or {}).items():
        if key not in by_name:
            # the value is not shown: nobody declared whether this key holds a secret
            raise ConfigError(key, "...", _known_key(key, by_name), "command line")
        if isinstance(value, str) and by_name[key].kind != "str":
            values[key] = _from_text(by_name[key], value, "command line")
        else:
            values[key] = check_value(by_name[key], value, "command line")
        sources[key] = "command line"
    return Config(values=values, sources=sources, path=path)


def plugin_lists(
    *, path: Path | None = None, env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[list[str] | None, list[str]]:
    """Read only the plugin allow- and block-lists, before any plugin is loaded."""
    names = ("plugins", "disabled_plugins")
    config = load_config(
        [s for s in CORE_SETTINGS if s.name in names], path=path, env=env,
        overrides={k: v for k, v in (overrides or {}).items() if k in names},
        ignore_unknown=True,
    )
    return config["plugins"], config["disabled_plugins"]
