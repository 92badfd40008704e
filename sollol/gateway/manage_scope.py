"""Every model a management request reads from or writes to, checked against the access key.

A create, a copy, a pull or a push names more than the model it makes: `from` and a modelfile's
`FROM` lines name the model whose weights it takes, `ADAPTER` lines and the `files` and
`adapters` digests name blobs on the nodes, a copy names its source. A key limited to some models
(`api_keys` `models`) must be allowed every one of them, or it could make `tiny-stolen` out of a
model it may not use and then serve or push it. So:

- each name (`model` and `name`, `source` and `destination`, `from`, every `FROM` and `ADAPTER`
  argument) must pass the key's globs;
- a blob (a `files` or `adapters` digest, an `@sha256:...` argument) must be one uploaded through
  this gateway (`POST /api/blobs/:digest`): a node's own blob store also holds the layers of
  models the key may not use, and their digests are public for library models;
- a modelfile argument that names a file on a node (a path) is refused to a limited key.

The modelfile is read the way that refuses more: every line whose first word is `FROM` or
`ADAPTER` in any case counts, wherever it sits, and an argument this reading cannot make out
(a quote left open) is refused, so no parser's reading can find a model this one missed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sollol.core.access import AccessKey
from sollol.core.names import check_model_name, is_path
from sollol.errors import Forbidden, RequestError
from sollol.gateway.blobs import parse_digest

if TYPE_CHECKING:
    from sollol.gateway.blobs import BlobSpool

FIELDS = frozenset({"model", "name", "source", "destination", "from", "files", "adapters",
                    "modelfile", "stream", "insecure", "nodes", "quantize", "quantization",
                    "template", "system", "license", "parameters", "messages", "path"})
"""Top-level fields of the management requests (Ollama's pull, push, create, copy, delete)."""
NAMES: dict[str, tuple[str, ...]] = {
    "/api/pull": ("model", "name"), "/api/push": ("model", "name"),
    "/api/delete": ("model", "name"), "/api/create": ("model", "name", "from"),
    "/api/copy": ("source", "destination"),
}
"""The fields of each request that hold a model name."""
_COMMAND = re.compile(r"^\s*(from|adapter)(?:\s+(.*?))?\s*$", re.IGNORECASE)
_BLOB = re.compile(r"@(sha256[:-][0-9a-fA-F]{64})")


def check(key: AccessKey | None, path: str, body: dict[str, Any],
          blobs: BlobSpool | None) -> None:
    """Forbidden unless `key` may use every model and blob the request at `path` names;
    RequestError for a name that is no model name."""
    names = [body[field] for field in NAMES.get(path, ()) if isinstance(body.get(field), str)
             and body[field].strip()]
    for name in names:
        check_model_name(name)
    if key is None or not key.limited:
        return
    for name in names:
        _allowed(key, name)
    if path != "/api/create":
        return
    if body.get("path") is not None:  # (Ollama before 0.1.15: a modelfile on the node's disk)
        raise Forbidden(f"key {key.name!r} is limited to some models and may not create from "
                        "a modelfile on a node's disk ('path'); send 'from' or 'files'")
    for field in ("files", "adapters"):
        value = body.get(field)
        if isinstance(value, dict):
            for digest in value.values():
                _uploaded(key, str(digest), blobs)
    modelfile = body.get("modelfile")
    if modelfile is not None and not isinstance(modelfile, str):
        raise RequestError("field 'modelfile' must be a string")
    for command, argument in modelfile_references(modelfile or ""):
        blob = _BLOB.fullmatch(argument)
        if blob is not None:
            _uploaded(key, blob.group(1), blobs)
        elif is_path(argument):
            raise Forbidden(f"key {key.name!r} is limited to some models and may not name a "
                            f"file on the nodes ({command} {argument[:200]!r})")
        else:
            _allowed(key, check_model_name(argument))


def modelfile_references(text: str) -> Iterator[tuple[str, str]]:
    """(`FROM` or `ADAPTER`, its argument) for every line that could be one; RequestError for
    such a line whose argument cannot be made out."""
    for line in text.splitlines():
        match = _COMMAND.match(line)
        if match is None:
            continue
        command, argument = match.group(1).upper(), (match.group(2) or "")
        if argument.startswith('"'):
            inner = argument[1:-1] if len(argument) >= 2 and argument.endswith('"') else ""
            if not inner or '"' in inner:
                raise RequestError(f"modelfile: cannot read the {command} line {line[:200]!r}; "
                                   f"write {command} NAME on one line")
            argument = inner.strip()
        if not argument:
            raise RequestError(f"modelfile: {command} needs an argument ({line[:200]!r})")
        yield command, argument


def _allowed(key: AccessKey, name: str) -> None:
    if not key.allows_model(name):
        raise Forbidden(f"key {key.name!r} may not manage model {name[:200]!r}")


def _uploaded(key: AccessKey, digest: str, blobs: BlobSpool | None) -> None:
    if blobs is None or blobs.path(parse_digest(digest)) is None:
        raise Forbidden(f"key {key.name!r} is limited to some models: blob {digest[:80]!r} must "
                        "be uploaded through this gateway first (POST /api/blobs/DIGEST); a "
                        "node's own blobs may belong to models outside the key's scope")
