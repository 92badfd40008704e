"""Which rpc-servers a model goes on, how it is split, and whether it fits at all.

The built-in placement (`rpc_placement = "fewest"`) gives a model the fewest rpc-servers that
hold it, so other models can run on the rest at the same time and fewer links carry each token.
Among sets of that size it takes the one with the best worst link, then the tightest fit (a small
model on a small shard leaves the big ones for big models), then the configured order. `"all"`
spreads every model over every free rpc-server, as llama.cpp does when given them all.

Probe latency and free memory are measurements that move between two probes (two CPU rpc-servers
on hosts alike report nearly the same RAM, and a probe's round trip jitters by milliseconds on a
busy host). Links within LINK_RATIO and LINK_SLACK_S of the best and fits within FIT_TOLERANCE
count as equal, so noise never decides where a model goes: `sollol route` and the coordinator
that then starts name the same rpc-servers.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import attrs

from sollol.models import ShardOffer, ShardPlacement

GiB = 1024**3
MiB = 1024**2
EXACT_SEARCH_LIMIT = 16
"""Up to this many free rpc-servers every set of the minimal size is compared (llama.cpp takes at
most 16 RPC servers); beyond it the largest ones are taken greedily."""

LINK_SLACK_S, LINK_RATIO = 0.005, 2.0
"""A set's worst link is as good as the best set's when within twice it plus 5 ms: a probe on a
busy host (or rpc-server) jitters by milliseconds, while the links worth avoiding (a WAN hop, a
congested Wi-Fi) are tens of milliseconds."""
FIT_TOLERANCE = 0.10
"""Sets whose free memory is within this fraction of the tightest fit are equally tight."""

Candidate = ShardOffer  # the plugin's older name for an offer


@attrs.frozen
class Plan:
    """The backends a coordinator will use, its `--tensor-split`, the numbers and the reason."""

    backends: tuple[ShardOffer, ...]
    needed: int
    available: int
    split: tuple[float, ...] = ()
    reason: str = ""
    numbers: dict[str, Any] = attrs.field(factory=dict)
    local_layers: int = 0
    """Layers kept in the gateway machine's own memory (`rpc_local_memory`)."""
    layer_count: int | None = None
    pipeline_off: str = ""
    """Why llama.cpp will keep pipeline parallelism off here (predicted), or "" (on)."""
    draft: str = ""
    """GGUF path of the draft model for speculative decoding, run on the gateway, or ""."""

    @property
    def gpu_layers(self) -> int:
        """llama-server's `-ngl`: layers (the output layer counts) offloaded to rpc-servers."""
        if not self.local_layers or self.layer_count is None:
            return 99  # all of them
        return self.layer_count + 1 - self.local_layers

    @property
    def devices(self) -> int:
        return sum(len(b.free) for b in self.backends)

    @property
    def addresses(self) -> list[str]:
        return [b.address for b in self.backends]

    @property
    def tensor_split(self) -> str:
        """Shares per RPC device in `--rpc` order (by free memory unless the placement says)."""
        shares = list(self.split)
        if not shares:
            free = [f for b in self.backends for f in b.free]
            total = sum(free) or 1
            shares = [f / total for f in free]
        return ",".join(f"{s:.4f}" for s in shares)


class DoesNotFit(Exception):
    """The model needs more memory than the usable rpc-servers have; carries the numbers."""

    def __init__(self, model: str, needed: int, candidates: Sequence[ShardOffer],
                 why: str = "") -> None:
        self.model, self.needed = model, needed
        self.available = sum(c.total_free for c in candidates)
        self.numbers: dict[str, Any] = {
            "needed_bytes": needed, "available_bytes": self.available,
            "backends": {c.address: c.total_free for c in candidates},
        }
        names = ", ".join(f"{c.address} {c.total_free / GiB:.2f} GiB" for c in candidates)
        where = f"the {len(candidates)} usable rpc-server(s) ({names})" if candidates \
            else "no usable rpc-server"
        super().__init__(f"model {model!r} needs ~{needed / GiB:.2f} GiB but {where} "
                         f"{'have' if candidates else 'has'} {self.available / GiB:.2f} GiB free"
                         + (f"; {why}" if why else ""))


def needed_bytes(file_size: int, kv_bytes_per_token: int | None, context: int) -> int:
    """Weights plus the KV cache for `context` tokens (small compute buffers not counted)."""
    return file_size + (kv_bytes_per_token or 0) * context


def place(needed: int, offers: Sequence[ShardOffer], strategy: str = "fewest") -> ShardPlacement:
    """The built-in placement; a placement with no addresses when the model does not fit."""
    usable = [o for o in offers if o.total_free > 0]
    available = sum(o.total_free for o in usable)
    numbers: dict[str, Any] = {"strategy": strategy, "needed_bytes": needed,
                               "available_bytes": available,
                               "offers": {o.address: list(o.free) for o in offers}}
    if not usable or available < needed:
        return ShardPlacement((), reason=f"needs {_size(needed)}, the free rpc-servers have "
                              f"{_size(available)}", numbers=numbers)
    chosen = list(usable) if strategy == "all" else _fewest(needed, usable)
    left = [o.address for o in usable if o not in chosen]
    numbers.update(chosen={o.address: o.total_free for o in chosen}, left_out=left)
    parts = ", ".join(f"{o.address} ({_size(o.total_free)} free)" for o in chosen)
    if strategy == "all":
        reason = f"{_size(needed)} spread over every free rpc-server: {parts}"
    else:
        reason = (f"{_size(needed)} fits on {len(chosen)} of {len(usable)} free rpc-server(s): "
                  f"{parts}" + (f"; not needed: {', '.join(left)}" if left else ""))
    split = _split(chosen)
    if len(split) > 1:
        reason += "; layers split by each device's free memory: " + _shares(chosen, split)
    return ShardPlacement(tuple(o.address for o in chosen), split=split,
                          reason=reason, numbers=numbers)


def _fewest(needed: int, usable: Sequence[ShardOffer]) -> list[ShardOffer]:
    """The fewest offers holding `needed`; ties: best worst link, then the tightest fit."""
    by_size = sorted(usable, key=lambda o: (-o.total_free, _latency(o), o.address))
    count = next(n for n in range(1, len(by_size) + 1)
                 if sum(o.total_free for o in by_size[:n]) >= needed)
    if len(usable) > EXACT_SEARCH_LIMIT:
        return by_size[:count]
    order = {o.address: i for i, o in enumerate(usable)}
    fitting = [sorted(set_, key=lambda o: order[o.address])  # keep the configured order
               for set_ in itertools.combinations(by_size, count)
               if sum(o.total_free for o in set_) >= needed]
    link = {id(s): max(_latency(o) for o in s) for s in fitting}
    best_link = min(link.values())
    fitting = [s for s in fitting if link[id(s)] <= best_link * LINK_RATIO + LINK_SLACK_S]
    tightest = min(sum(o.total_free for o in s) for s in fitting)
    fitting = [s for s in fitting if sum(o.total_free for o in s) <= tightest * (1 + FIT_TOLERANCE)]
    return min(fitting, key=lambda s: [order[o.address] for o in s])


def _split(chosen: Sequence[ShardOffer]) -> tuple[float, ...]:
    """A share per device, in proportion to what each device can take."""
    free = [f for o in chosen for f in o.free]
    total = sum(free) or 1
    return tuple(round(f / total, 4) for f in free)


def _shares(chosen: Sequence[ShardOffer], split: Sequence[float]) -> str:
    """`127.0.0.1:50052 Vulkan0 2.00 GiB free -> 61%, ...` in `--tensor-split` order."""
    parts = []
    shares = iter(split)
    for offer in chosen:
        names = offer.devices if len(offer.devices) == len(offer.free) else \
            tuple(f"device {i}" for i in range(len(offer.free)))
        parts += [f"{offer.address} {name} {_size(free)} free -> {next(shares):.0%}"
                  for name, free in zip(names, offer.free, strict=True)]
    return ", ".join(parts)


def _latency(offer: ShardOffer) -> float:
    return offer.latency_s if offer.latency_s is not None else 0.0


def _size(count: int) -> str:
    return f"{count / GiB:.2f} GiB" if count >= GiB else f"{count / MiB:.1f} MiB"


def make_plan(model: str, needed: int, offers: Sequence[ShardOffer],
              placement: ShardPlacement, why: str = "") -> Plan:
    """A Plan from a placement (any plugin's): DoesNotFit when it has no rpc-server, or names
    one that was not offered."""
    usable = [o for o in offers if o.total_free > 0]
    if not placement.addresses:
        raise DoesNotFit(model, needed, usable, why or placement.reason)
    by_address = {o.address: o for o in offers}
    unknown = [a for a in placement.addresses if a not in by_address]
    if unknown or len(set(placement.addresses)) != len(placement.addresses):
        raise DoesNotFit(model, needed, usable, f"the placement named rpc-servers that are not "
                                                f"free or named one twice: {unknown}")
    chosen = tuple(by_address[a] for a in placement.addresses)
    devices = sum(len(o.free) for o in chosen)
    split = placement.split if len(placement.split) == devices else ()
    return Plan(chosen, needed, sum(o.total_free for o in chosen), split, placement.reason,
                dict(placement.numbers))
