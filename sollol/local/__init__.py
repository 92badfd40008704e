"""A whole SOLLOL cluster on this machine, for `sollol demo`, `sollol run --local` and tests."""

from sollol.local.model_set import LARGE, SMALL, THRESHOLD, LocalModel, ModelSet, ensure_models
from sollol.local.servers import LocalCluster, LocalServer, default_root, ensure_binaries

__all__ = [
    "LARGE",
    "SMALL",
    "THRESHOLD",
    "LocalCluster",
    "LocalModel",
    "LocalServer",
    "ModelSet",
    "default_root",
    "ensure_binaries",
    "ensure_models",
]
