"""`sollol plugins new`: write an installable plugin package that runs and passes its tests."""

from __future__ import annotations

import re
import string
from importlib import resources
from pathlib import Path

import attrs

from sollol import __version__
from sollol.errors import SollolError

KINDS = ("backend", "policy", "command")
_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
_SUMMARIES = {
    "backend": "OpenAI-compatible servers of a new kind as SOLLOL pool nodes.",
    "policy": "A SOLLOL routing policy that prefers one route and falls back to the others.",
    "command": "A `sollol` command that lists the models a running gateway serves.",
}
_USAGE = {
    "backend": "List your servers, then start the gateway with this plugin beside the pool:\n\n"
               "```\nsollol config set ${ident}_nodes 10.0.0.9:8000\n"
               "sollol run --plugin ollama_pool --plugin $name\n```",
    "policy": "Select it, then start the gateway:\n\n"
              "```\nsollol config set routing_policy $name\nsollol run\n```",
    "command": "```\nsollol $name --gateway http://127.0.0.1:11435\n```",
}


class ScaffoldError(SollolError):
    """The plugin could not be written (bad name, folder not empty)."""


@attrs.frozen
class Scaffold:
    """What `sollol plugins new` writes for one plugin."""

    name: str
    kind: str

    @property
    def ident(self) -> str:
        return self.name.replace("-", "_")

    @property
    def package(self) -> str:
        return f"sollol_{self.ident}"

    @property
    def dist(self) -> str:
        return f"sollol-{self.name.replace('_', '-')}"

    def variables(self) -> dict[str, str]:
        values = {"name": self.name, "ident": self.ident, "package": self.package,
                  "dist": self.dist, "kind": self.kind, "summary": _SUMMARIES[self.kind],
                  "classname": "".join(p.title() for p in re.split("[-_]", self.name)),
                  "sollol_version": __version__,
                  "extra_deps": '"httpx"' if self.kind == "backend" else '"click"'}
        values["usage"] = string.Template(_USAGE[self.kind]).substitute(values)
        return values

    def files(self) -> dict[str, str]:
        """{relative path: text} of every file in the new package."""
        layout = {
            "pyproject.toml": "common/pyproject.toml.tmpl",
            "README.md": "common/README.md.tmpl",
            f"{self.package}/__init__.py": f"{self.kind}/plugin.py.tmpl",
            f"tests/test_{self.ident}.py": f"{self.kind}/test.py.tmpl",
        }
        templates = resources.files("sollol.scaffold") / "templates"
        values = self.variables()
        return {path: string.Template((templates / source).read_text()).substitute(values)
                for path, source in layout.items()}


def check_name(name: str) -> str:
    """A plugin name: lowercase letters and digits, words joined by - or _."""
    if not _NAME.match(name) or len(name) > 40:
        msg = (f"plugin name {name!r}: use lowercase letters and digits, words joined by - or _ "
               "(e.g. vllm, lm-studio), at most 40 characters")
        raise ScaffoldError(msg)
    return name


def write(name: str, kind: str, parent: Path) -> Path:
    """Write the package into `parent/<dist>`; refuses a folder that exists and is not empty."""
    scaffold = Scaffold(check_name(name), kind)
    root = parent / scaffold.dist
    if root.exists() and any(root.iterdir()):
        raise ScaffoldError(f"{root} exists and is not empty; choose another name or folder")
    for relative, text in scaffold.files().items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
