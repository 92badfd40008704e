"""A whole SOLLOL cluster on this machine, for `sollol demo`, `sollol run --local` and tests."""

from sollol.local.cluster import LocalCluster, LocalServer, default_root, ensure_binaries
from sollol.local.models import LARGE, SMALL, THRESHOLD, LocalModel, ModelSet, ensure_models

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
