"""Whether llama.cpp's pipeline parallelism is on for a coordinator: predicted from its placement
and arguments before it starts, then read from its own log once it is up.

llama.cpp (src/llama-context.cpp) turns it on only with two or more devices, every layer
offloaded (the output layer too), layer split mode, the KV cache offloaded and no tensor
overrides; it logs "pipeline parallelism enabled" at info level (`-lv 4` here), and falls back
("retrying without pipeline parallelism") when the bigger compute buffers do not fit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ENABLED = re.compile(r"pipeline parallelism enabled")
RETRIED = re.compile(r"retrying without pipeline parallelism")
ON = "on"
_OVERRIDES = ("-ot", "--override-tensor", "-cmoe", "--cpu-moe", "-ncmoe", "--n-cpu-moe")
_NO_KV = ("-nkvo", "--no-kv-offload")
_SPLIT = ("-sm", "--split-mode")
_LAYERS = ("-ngl", "--gpu-layers", "--n-gpu-layers")


def predict(devices: int, local_layers: int, layer_count: int | None,
            extra_args: Sequence[str]) -> str:
    """Why llama.cpp will keep pipeline parallelism off for this coordinator, or "" (on)."""
    reasons = []
    if devices < 2:
        reasons.append(f"{devices} RPC device(s) (it needs two or more)")
    if local_layers:
        reasons.append(f"{local_layers} layer(s) kept on the gateway machine (rpc_local_memory)")
    args = list(extra_args)
    if found := [a for a in args if a.split("=")[0] in _OVERRIDES]:
        reasons.append(f"tensor overrides in rpc_coordinator_args ({', '.join(found)})")
    if any(a in _NO_KV for a in args):
        reasons.append("KV cache not offloaded (-nkvo in rpc_coordinator_args)")
    if (mode := _value(args, _SPLIT)) and mode != "layer":
        reasons.append(f"split mode {mode!r} (rpc_coordinator_args; it needs 'layer')")
    layers = _value(args, _LAYERS)
    if layers and layers.isdigit() and (layer_count is None or int(layers) <= layer_count):
        reasons.append(f"not every layer offloaded (-ngl {layers} in rpc_coordinator_args)")
    return "; ".join(reasons)


def from_log(text: str, predicted: str) -> str:
    """"on", or "off: why" from the coordinator's log (and the prediction for the why)."""
    if RETRIED.search(text):
        return "off: its compute buffers did not fit, llama.cpp retried without it"
    if ENABLED.search(text):
        return ON
    return "off: " + (predicted or "llama-server did not enable it (a device without async "
                                   "compute or events?)")


def _value(args: list[str], names: tuple[str, ...]) -> str | None:
    """The last value given to one of `names` (`-sm row` or `--split-mode=row`)."""
    found = None
    for i, arg in enumerate(args):
        name, _, inline = arg.partition("=")
        if name in names:
            found = inline or (args[i + 1] if i + 1 < len(args) else None)
    return found
