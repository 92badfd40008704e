"""The cluster-join plugin's config keys (`sollol_register_settings`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import platformdirs

from sollol.config import Setting
from sollol.core.units import at_least, positive

SETTINGS = (
    Setting("join_policy", "str", "auto",
            "What a machine that joins with a valid token becomes: `auto` a member at once, "
            "`approve` pending until `sollol cluster approve NAME`.", choices=("auto", "approve")),
    Setting("cluster_state_dir", "str", None,
            "Folder of the cluster CA, join tokens (hashed) and members, all mode 0600 "
            "(default: `cluster/` in the user data dir).", optional=True),
    Setting("member_timeout", "float", 15.0,
            "Seconds without a heartbeat after which a joined machine leaves the routes (a "
            "later signed heartbeat brings it back).", check=positive),
    Setting("heartbeat_interval", "float", 3.0,
            "Seconds between a joined machine's heartbeats (told to it when it joins).",
            check=positive),
    Setting("join_failure_limit", "int", 10,
            "Failed join or member requests an address may make per join_failure_window "
            "before it is answered 429.", check=at_least(1)),
    Setting("join_failure_window", "float", 60.0,
            "Seconds over which join_failure_limit counts an address's failures.",
            check=positive),
    Setting("cluster_announce", "bool", True,
            "Announce the gateway on the LAN by mDNS/DNS-SD (_sollol._tcp: port, version, CA pin; "
            "no secret) so `sollol join --token T` finds it without a URL, and list machines "
            "announcing themselves (`sollol cluster discovered`). false: no multicast at all."),
)


def state_dir(config: Any) -> Path:
    """The cluster state folder of a config."""
    configured = config.get("cluster_state_dir")
    if configured:
        return Path(configured).expanduser().resolve()
    return (Path(platformdirs.user_data_dir("sollol")) / "cluster").resolve()


@attrs.frozen
class JoinSettings:
    """The settings the gateway side reads, typed."""

    policy: str = "auto"
    member_timeout: float = 15.0
    heartbeat_interval: float = 3.0
    failure_limit: int = 10
    failure_window: float = 60.0

    @classmethod
    def from_config(cls, config: Any) -> JoinSettings:
        return cls(config["join_policy"], config["member_timeout"],
                   config["heartbeat_interval"], config["join_failure_limit"],
                   config["join_failure_window"])
