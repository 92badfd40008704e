"""The Ray plugin's config keys (`sollol_register_settings`), and the typed view of them."""

from __future__ import annotations

from typing import Any

import attrs

from sollol.config import Setting
from sollol.core.units import non_negative, positive


def _models(value: dict[str, Any]) -> dict[str, Any]:
    """`{name: path}` with names and paths as non-empty strings."""
    for name, path in value.items():
        if not (isinstance(name, str) and name.strip() and isinstance(path, str)
                and path.strip()):
            raise ValueError("a table of model names to GGUF paths on the Ray nodes "
                             "({name = \"/shared/x.gguf\"})")
    return value


SETTINGS = (
    Setting("ray_address", "str", "",
            "Address of a Ray cluster's GCS (`HOST:6379`, or `auto` for the one on this "
            "machine). Set: the gateway joins it as a Ray driver (namespace `sollol`) and runs "
            "its rpc-servers (and `ray_pool_models`) as Ray actors on the Ray nodes. "
            "Empty: the Ray plugin does nothing."),
    Setting("ray_rpc_per", "str", "node",
            "How many rpc-server actors a Ray node gets: `node` one (serving every device of "
            "the node), `gpu` one per GPU Ray lists on the node (each pinned to its GPU; a node "
            "without GPUs gets none), `none` no rpc-servers (pool models only).",
            choices=("node", "gpu", "none")),
    Setting("ray_rpc_cpus", "float", 1.0,
            "CPUs Ray reserves for each rpc-server actor (its `-t` threads: this, rounded down, "
            "at least 1). 0 reserves none.", check=non_negative),
    Setting("ray_pool_models", "table", {},
            "Pool nodes run by Ray: `{name = \"/shared/models/x.gguf\"}`; each model gets one "
            "llama-server actor (`--alias name`) placed by Ray, on a path every Ray node can "
            "read, and joins the pool as an OpenAI-compatible node.", check=_models),
    Setting("ray_pool_cpus", "float", 1.0,
            "CPUs Ray reserves for each llama-server actor of `ray_pool_models` (its threads: "
            "this, rounded down, at least 1).", check=non_negative),
    Setting("ray_watch_interval", "float", 1.0,
            "Seconds between two looks at the Ray cluster: nodes that joined get actors, dead "
            "actors and nodes leave the routes.", check=positive),
    Setting("ray_start_timeout", "float", 120.0,
            "Seconds an actor may take to start its server (finding the binaries, listing the "
            "devices, loading a pool model) before it is given up and tried again later.",
            check=positive),
)


@attrs.frozen
class RaySettings:
    """The keys as the service reads them."""

    address: str = ""
    rpc_per: str = "node"
    rpc_cpus: float = 1.0
    pool_models: dict[str, str] = attrs.field(factory=dict)
    pool_cpus: float = 1.0
    watch_interval: float = 1.0
    start_timeout: float = 120.0
    llama_cpp_dir: str | None = None

    @classmethod
    def from_config(cls, config: Any) -> RaySettings:
        models = {str(k): str(v) for k, v in dict(config["ray_pool_models"] or {}).items()}
        return cls(str(config["ray_address"] or "").strip(), config["ray_rpc_per"],
                   float(config["ray_rpc_cpus"]), models, float(config["ray_pool_cpus"]),
                   float(config["ray_watch_interval"]), float(config["ray_start_timeout"]),
                   config.get("llama_cpp_dir") or None)
