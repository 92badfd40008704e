"""Seeing the cluster: request metrics, their history, backends' own metrics, and the overview.

The gateway registers a `Recorder` on its cluster's plugin manager, so every finished request
reaches it through `sollol_request_routed` like any metrics plugin. `/metrics` exposes it in
Prometheus' format; `/sollol/overview` and the dashboard's event stream read it as data.
Nothing here imports the gateway, and the request path never imports this package.
"""

from sollol.observe.backend_metrics import BackendMetrics
from sollol.observe.history import History
from sollol.observe.labels import OTHER, BoundedLabels
from sollol.observe.recorder import Recorder

__all__ = ["OTHER", "BackendMetrics", "BoundedLabels", "History", "Recorder"]
