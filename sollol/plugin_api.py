"""The public plugin API: what plugins may rely on, its version, and a description to diff.

`VERSION` is `MAJOR.MINOR`. An addition that cannot break a plugin (a new hook, a new model
class, a new field or argument with a default) bumps MINOR; a removal or a change of anything
listed here bumps MAJOR. `sollol/plugin_api.json` records the description of every released
version; `tests/plugin_api/test_plugin_api.py` fails when the code no longer matches the record of
`VERSION`, and when a bump is smaller than the change since the previous version.

After a bump: `python -m sollol.plugin_api --write` records the new version. It refuses to
rewrite the record of a version that exists: a change needs a bump, not a new record.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

VERSION = "3.3"
"""The plugin API's version (see the module docstring for when to bump which part)."""

RECORD = Path(__file__).with_name("plugin_api.json")

PUBLIC: Mapping[str, tuple[str, ...]] = {
    # the contract: hooks, the values they pass, the interfaces routes and policies implement
    "sollol.hookspecs": ("hookimpl", "PolicyFactory"),  # and every `sollol_*` hook spec
    "sollol.models": ("Api", "Endpoint", "Backend", "BackendKind", "HealthReport",
                      "ResolvedModel", "ModelInfo", "RouteRequest", "BackendState", "RouteState",
                      "RouteDecision", "RouteEvent", "ShardOffer", "ShardPlacement",
                      "split_host_port", "join_host_port", "check_host", "check_node_address",
                      "GatewayEndpoint", "HttpRequest", "HttpReply"),
    "sollol.routes": ("POOL", "SHARDING", "Outcome", "Lease", "RouteProvider", "Placement",
                      "Membership", "ModelManagement", "KeepAlive", "Policy"),
    "sollol.config": ("Setting", "Config", "core_setting"),
    "sollol.errors": ("SollolError", "ConfigError", "PluginError", "DuplicateNameError",
                      "BinaryNotFound", "ModelFileError", "RequestError", "ModelNotFound",
                      "BackendNotFound", "PayloadTooLarge", "Overloaded", "NoRouteAvailable",
                      "NotSupported", "BackendError"),
    # the running cluster every route and lifecycle hook is given
    "sollol.core.runtime": ("ClusterRuntime",),
    # memory machines report themselves (`ClusterRuntime.live_memory`), for placement
    "sollol.core.live_memory": ("LiveMemory", "MemoryReading"),
    # what a backend plugin shares with the core, so both agree
    "sollol.core.capabilities": ("COMPLETION", "CHAT", "EMBEDDING", "VISION", "TOOLS", "ALL",
                                 "describe", "unsupported"),
    "sollol.core.names": ("canonical", "canonical_model", "spellings", "stem", "is_path",
                          "closest"),
    "sollol.core.units": ("parse_bytes", "parse_count", "format_bytes", "format_count",
                          "positive", "non_negative", "at_least", "port_number", "port_list",
                          "cidr"),
    "sollol.core.secret": ("Secret", "REDACTED", "bearer", "split_userinfo", "redact_url",
                           "scrub"),
    "sollol.core.gguf_info": ("read_model_info",),
    # a plugin's services per running cluster, found from a config in discovery
    "sollol.core.services": ("RunningServices", "Service"),
    # strings from nodes and clients, made safe for a log line or a terminal
    "sollol.core.logtext": ("escape", "terminal_text", "escape_lines", "escape_strings"),
    # running local servers
    "sollol.core.processes": ("free_port", "die_with_parent", "server_child", "terminate",
                              "ManagedProcess", "wait_port", "wait_http"),
    "sollol.llamacpp": ("Binaries", "find_binaries", "for_serving", "Device",
                        "rpc_server_devices", "visible_gpus"),
    # plugin commands: options, errors, config, our own gateway, systemd units
    "sollol.cli": ("UsageFailure", "handle_errors", "config_option", "load_for_cli",
                   "operator_gguf"),
    "sollol.cli.gateway_client": ("gateway_option", "gateway_url", "gateway_address",
                                  "gateway_client", "gateway_headers", "refusal_hint", "call",
                                  "item", "read_json", "reply_text"),
    "sollol.cli.service": ("emit_unit", "program_needs", "refuse_unreadable"),
    "sollol.cli.unit_access": ("Need",),
    "sollol.cli.systemd": ("exec_line", "environment_line", "worker_sandbox", "GPU_DEVICES"),
    "sollol.client.loop_thread": ("LoopThread",),
}
"""Modules and names plugins may import; anything else in `sollol` may change at any time."""


def describe() -> dict[str, Any]:
    """Every public name with its signature, fields or bases, as JSON-ready data."""
    described: dict[str, Any] = {}
    for module_name, names in PUBLIC.items():
        module = importlib.import_module(module_name)
        wanted = list(names)
        if module_name == "sollol.hookspecs":
            wanted += sorted(n for n in vars(module) if n.startswith("sollol_"))
        for name in wanted:
            described[f"{module_name}.{name}"] = _describe(getattr(module, name))
    return described


def _describe(obj: Any) -> Any:
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        init = obj.__dict__.get("__init__")
        return {"bases": [b.__name__ for b in obj.__bases__],
                "init": _signature(init) if init else None}
    if inspect.isclass(obj) and attrs.has(obj):
        return {"fields": {f.name: {"type": _text(f.type), "default": f.default is not
                                    attrs.NOTHING} for f in attrs.fields(obj) if f.init},
                "methods": _methods(obj)}
    if inspect.isclass(obj):  # a Protocol or a plain class
        return {"attributes": {n: _text(t) for n, t in
                               inspect.get_annotations(obj).items()},
                "methods": _methods(obj)}
    spec = getattr(obj, "sollol_spec", None)
    if spec is not None:  # a hook: new parameters are opt-in for implementations (pluggy)
        signature = inspect.signature(obj)
        return {"params": {n: _text(p.annotation) for n, p in signature.parameters.items()},
                "returns": _text(signature.return_annotation),
                "spec": {k: v for k, v in spec.items() if v}}
    if inspect.isfunction(obj):
        return {"signature": _signature(obj)}
    project = getattr(obj, "project_name", None)  # pluggy's hookimpl marker
    if project is not None:
        return {"marker": type(obj).__name__, "project": project}
    return {"value": _text(obj)}  # a type alias


def _methods(cls: type) -> dict[str, str]:
    return {name: _signature(member) for name, member in sorted(vars(cls).items())
            if inspect.isfunction(member) and not name.startswith("_")} | {
            name: "property" for name, member in sorted(vars(cls).items())
            if isinstance(member, property) and not name.startswith("_")}


def _signature(func: Any) -> str:
    return str(inspect.signature(func))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def compare(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(breaking changes, additions) between two descriptions, each as readable lines."""
    breaking, added = [], []
    for name in sorted(set(recorded) | set(current)):
        if name not in current:
            breaking.append(f"removed: {name}")
        elif name not in recorded:
            added.append(f"added: {name}")
        elif recorded[name] != current[name]:
            change = _member_change(recorded[name], current[name])
            (added if change == "added" else breaking).append(f"{change}: {name}")
    return breaking, added


def _member_change(old: Any, new: Any) -> str:
    """"added" when `new` only adds optional fields, methods or attributes to `old`."""
    if not (isinstance(old, dict) and isinstance(new, dict)) or set(old) != set(new):
        return "changed"
    for key in old:
        before, after = old[key], new[key]
        if before == after:
            continue
        if not (isinstance(before, dict) and isinstance(after, dict)):
            return "changed"
        if any(after.get(k) != v for k, v in before.items()):
            return "changed"
        extra = [after[k] for k in set(after) - set(before)]
        if key == "fields" and not all(f["default"] for f in extra):
            return "changed"  # a new required field breaks everyone who builds the class
        if key == "spec":
            return "changed"  # firstresult, historic... change how every caller sees results
    return "added"


def read_record(path: Path = RECORD) -> dict[str, Any]:
    """{version: description} of every recorded version."""
    return json.loads(path.read_text()) if path.exists() else {}


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def required_bump(previous: str, breaking: list[str], added: list[str]) -> str | None:
    """The smallest version after `previous` that such changes need (None: no change)."""
    major, minor = version_key(previous)
    if breaking:
        return f"{major + 1}.0"
    if added:
        return f"{major}.{minor + 1}"
    return None


def write(path: Path = RECORD) -> str:
    """Record the current description under VERSION; refuse to rewrite a recorded version."""
    records = read_record(path)
    current = describe()
    if VERSION in records and records[VERSION] != current:
        breaking, added = compare(records[VERSION], current)
        msg = (f"the plugin API changed but VERSION is still {VERSION}; bump it to "
               f"{required_bump(VERSION, breaking, added)} or later first:\n  "
               + "\n  ".join(breaking + added))
        raise SystemExit(msg)
    records[VERSION] = current
    ordered = dict(sorted(records.items(), key=lambda item: version_key(item[0])))
    path.write_text(json.dumps(ordered, indent=1, sort_keys=False) + "\n")
    return f"recorded plugin API {VERSION} in {path}"


def main() -> None:
    import sys

    if sys.argv[1:] == ["--write"]:
        print(write())
    else:
        print(json.dumps(describe(), indent=1))


if __name__ == "__main__":
    main()
