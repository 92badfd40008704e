"""Can a systemd unit's account read what the unit runs? Checked before the unit is written.

A unit whose program, Python packages, config or binaries its account cannot read fails at
start (status 203/EXEC, or a PermissionError in the journal). A `DynamicUser=yes` account is a
fresh uid in no group: it reads what "others" may read. Root's home (0700) and a 0600 config
are the usual traps, so each problem names the path and the fix.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Iterable
from pathlib import Path

import attrs

__all__ = ["Account", "Need", "unreadable"]


@attrs.frozen
class Account:
    """Who a unit runs as: a named account (uid and groups), or a DynamicUser (None)."""

    name: str | None
    uid: int | None = None
    gids: frozenset[int] = frozenset()

    @classmethod
    def named(cls, name: str | None) -> Account:
        """The account `name` (KeyError when it does not exist); None: a DynamicUser."""
        if name is None:
            return cls(None)
        entry = pwd.getpwnam(name)
        groups = {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
        return cls(name, entry.pw_uid, frozenset({entry.pw_gid, *groups}))

    def describe(self) -> str:
        return f"account {self.name!r}" if self.name else "the unit's DynamicUser"

    def may(self, info: os.stat_result, mask: int) -> bool:
        """Whether the mode bits grant `mask` (an `S_IROTH`-style 'other' mask) to this account."""
        if self.uid == 0:
            return True
        shift = 6 if info.st_uid == self.uid else 3 if info.st_gid in self.gids else 0
        return (info.st_mode >> shift) & mask == mask


@attrs.frozen
class Need:
    """A path the unit uses, what for, and whether it is run (needs execute, not just read)."""

    path: Path
    why: str
    execute: bool = False


def unreadable(needs: Iterable[Need], account: Account) -> list[str]:
    """One line per path the account cannot reach (every folder on the way needs search)."""
    problems = []
    for need in needs:
        path = need.path.resolve()
        shown = str(need.path) if path == need.path else f"{need.path} (-> {path})"
        # a symlink is followed from where it lies: the folders on the way to the link and on
        # the way to its target all need search permission
        on_the_way = [*reversed(need.path.absolute().parents), *reversed(path.parents)]
        try:
            blocked = next((f for f in on_the_way
                            if not account.may(f.stat(), stat.S_IXOTH)), None)
            info = path.stat()
        except FileNotFoundError:
            problems.append(f"{need.why} {shown} does not exist")
            continue
        if blocked is not None:
            problems.append(f"{account.describe()} cannot enter {blocked}, so it cannot read "
                            f"{need.why} {shown}")
            continue
        mask = stat.S_IROTH | (stat.S_IXOTH if need.execute or path.is_dir() else 0)
        if not account.may(info, mask):
            what = "run" if need.execute else "read"
            problems.append(f"{account.describe()} cannot {what} {need.why} {shown} "
                            f"(mode {stat.filemode(info.st_mode)}, owner uid {info.st_uid})")
    return problems
