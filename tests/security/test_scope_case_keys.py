"""The check and the node see the same request (issue 27, finding 4).

Go's `encoding/json`, which Ollama decodes requests with, matches keys to fields
case-insensitively (Unicode simple folding) and lets the last one win, so
`{"model": "tiny:1b", "Model": "secret:7b"}` runs `secret:7b` on a real Ollama. The emulator
decodes the same way (`sollol.testing.emulator_http.go_fields`). The gateway refuses every body
with keys equal, or equal but for case, in one object, and any top-level key that spells a field
it reads in another case, on every endpoint that forwards a body
(sollol/dialects/jsonkeys.py); objects of the client's own names (schema properties, metadata,
arguments) may hold keys equal but for case.
"""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sollol.dialects.jsonin import parse_json_object
from sollol.dialects.jsonkeys import DATA_KEYS
from sollol.errors import RequestError
from sollol.gateway.route_table import ROUTES

MSG = [{"role": "user", "content": "hi"}]
FUZZ = settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                        HealthCheck.too_slow])
GO_ONLY_FOLDS = {"\u0130", "\u0131"}
"""Go's caseOrbit keeps the dotted capital I and the dotless small i to themselves."""


def test_casefold_equates_every_pair_go_folds():
    """Go folds a rune with its simple upper, lower and title case (and the orbits of K, S,
    µ, Å, ß...); casefold must equate each such pair, or a body could slip through."""
    for point in range(sys.maxunicode + 1):
        if 0xD800 <= point <= 0xDFFF:
            continue
        char = chr(point)
        for other in (char.lower(), char.upper(), char.title()):
            if len(other) == 1 and not {char, other} & GO_ONLY_FOLDS:
                assert other.casefold() == char.casefold(), (hex(point), other)
    orbits = ["Kk\u212a", "Ss\u017f", "\u00b5\u039c\u03bc", "\u00c5\u00e5\u212b",
              "\u00df\u1e9e", "\u0398\u03b8\u03d1\u03f4", "\u0399\u03b9\u1fbe\u0345"]
    for orbit in orbits:
        assert len({c.casefold() for c in orbit}) == 1, orbit


def variants(name: str) -> st.SearchStrategy[str]:
    """`name` in another case: any letter upper-cased, `k` and `s` also as the Kelvin sign
    and the long s, which Go folds onto them."""
    def spell(choices: list[int]) -> str:
        out = []
        for char, choice in zip(name, choices, strict=True):
            special = {"k": "\u212a", "s": "\u017f"}.get(char)
            out.append(special if choice == 2 and special else
                       char.upper() if choice else char)
        return "".join(out)

    return (st.lists(st.integers(0, 2), min_size=len(name), max_size=len(name)).map(spell)
            .filter(lambda spelled: spelled != name))


def error_text(reply) -> str:
    error = reply.json()["error"]
    return error if isinstance(error, str) else error["message"]


def raw(pairs: list[tuple[str, object]]) -> bytes:
    """A JSON object from pairs in order, duplicates kept (a dict cannot hold them)."""
    return ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}").encode()


# ---- in process: any nesting


def trees(depth: int = 3) -> st.SearchStrategy[object]:
    leaves = st.one_of(st.integers(-5, 5), st.text(max_size=4), st.booleans(), st.none())
    keys = st.one_of(st.text(alphabet="abcXYZ_", min_size=1, max_size=4),
                     st.sampled_from(sorted(DATA_KEYS)))
    return st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)), max_leaves=12)


def _objects(value: object, data: bool = False, path: tuple = ()) -> list[tuple[tuple, bool]]:
    """Every object in `value` (its path, and whether it sits in the client's own map)."""
    found: list[tuple[tuple, bool]] = []
    if isinstance(value, dict):
        found.append((path, data))
        for key, child in value.items():
            found += _objects(child, data or (key in DATA_KEYS and isinstance(child, dict)),
                              (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _objects(child, data, (*path, index))
    return found


@settings(max_examples=300)
@given(tree=st.dictionaries(st.text(alphabet="abc", min_size=1, max_size=3), trees(),
                            max_size=4),
       data=st.data())
def test_keys_equal_but_for_case_are_refused_at_any_depth(tree, data):
    plain = json.dumps(tree).encode()
    if not any(len({k.casefold() for k in o}) < len(o) for o in _iter_dicts(tree)):
        assert parse_json_object(plain)[0] == tree  # nothing to refuse: read as written
    path, in_data = data.draw(st.sampled_from(_objects(tree)))
    target = tree
    for step in path:
        target = target[step]
    name = data.draw(st.text(alphabet="abcks", min_size=1, max_size=5))
    target[name] = "first"
    target[data.draw(variants(name))] = "second"
    body = json.dumps(tree).encode()
    if in_data:  # the client's own names: only exact duplicates are refused there
        try:
            parse_json_object(body)
        except RequestError as exc:
            assert "differ only in case" not in str(exc)
        return
    with pytest.raises(RequestError, match="differ only in case"):
        parse_json_object(body)


def _iter_dicts(value: object):
    if isinstance(value, dict):
        yield value
        for child in value.values():
            yield from _iter_dicts(child)
    elif isinstance(value, list):
        for child in value:
            yield from _iter_dicts(child)


def test_exact_duplicates_are_refused_even_in_the_clients_own_maps():
    for body in (b'{"model": "a", "model": "b"}', b'{"model": "a", "metadata": {"x": 1, "x": 2}}',
                 b'{"model": "a", "messages": [{"role": "user", "role": "system"}]}'):
        with pytest.raises(RequestError, match="appears twice"):
            parse_json_object(body)


# ---- over HTTP: every endpoint that forwards a body, to an Ollama-like (Go) node

MODEL_FIELDS = {"/api/copy": "source"}
"""The field each endpoint's check reads the model from, where it is not `model`."""
BASES = {
    "/api/generate": {"prompt": "hi", "stream": False},
    "/api/chat": {"messages": MSG, "stream": False},
    "/api/embed": {"input": "hi"}, "/api/embeddings": {"prompt": "hi"}, "/api/show": {},
    "/v1/chat/completions": {"messages": MSG}, "/v1/completions": {"prompt": "hi"},
    "/v1/embeddings": {"input": "hi"}, "/v1/responses": {"input": "hi"},
    "/v1/messages": {"max_tokens": 16, "messages": MSG},
    "/v1/messages/count_tokens": {"messages": MSG},
    "/api/pull": {"stream": False}, "/api/push": {"stream": False},
    "/api/create": {"from": "tiny:1b", "stream": False},
    "/api/copy": {"destination": "tiny-copy"}, "/api/delete": {},
}
FORWARDED = [r for r in ROUTES if r.kind in ("dispatch", "manage")]


def test_every_endpoint_that_forwards_a_body_is_covered():
    assert {r.path for r in FORWARDED} == set(BASES)


@FUZZ
@given(route=st.sampled_from(FORWARDED), data=st.data(), hidden_last=st.booleans())
def test_a_case_variant_key_never_makes_a_node_run_another_model(scoped, route, data,
                                                                 hidden_last):
    field = MODEL_FIELDS.get(route.path, "model")
    allowed = "tiny-new" if route.path == "/api/pull" else "tiny:1b"
    pairs = [(field, allowed), (data.draw(variants(field)), "secret:7b")]
    if not hidden_last:
        pairs.reverse()
    body = raw([*BASES[route.path].items(), *pairs])
    served, held = scoped.served(), scoped.models()
    for key in (scoped.manager, scoped.admin):  # limited or not: the body itself is refused
        reply = scoped.post(route.path, body, key, method=route.methods[0])
        assert reply.status_code == 400, (body, reply.text)
        assert "differ only in case" in error_text(reply)
    if route.path == "/api/create":  # `From` alone: the gateway reads `from`, Go reads `From`
        lone = raw([("model", "tiny-stolen"), ("stream", False),
                    (data.draw(variants("from")), "secret:7b")])
        reply = scoped.post(route.path, lone, scoped.manager)
        assert reply.status_code == 400 and "in another case" in reply.text, reply.text
    assert scoped.served() == served and scoped.models() == held


@FUZZ
@given(where=st.sampled_from(["message", "options", "tool"]), data=st.data())
def test_nested_case_variants_are_refused_and_the_clients_own_maps_pass(scoped, where, data):
    message = {"role": "user", "content": "hi"}
    body: dict = {"model": "tiny:1b", "messages": [message], "stream": False}
    if where == "message":
        message[data.draw(variants("role"))] = "system"
    elif where == "options":
        body["options"] = {"num_ctx": 512, data.draw(variants("num_ctx")): 65536}
    else:
        body["tools"] = [{"type": "function", "function": {
            "name": "f", data.draw(variants("name")): "g", "parameters": {"type": "object"}}}]
    reply = scoped.post("/api/chat", body, scoped.limited)
    assert reply.status_code == 400 and "differ only in case" in reply.text, reply.text
    schema = {"type": "object", "properties": {"id": {"type": "string"},
                                               data.draw(variants("id")): {"type": "string"}}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    ok = scoped.post("/api/chat", {"model": "tiny:1b", "messages": MSG,
                                   "tools": tools, "metadata": {"a": 1, "A": 2},
                                   "stream": False}, scoped.limited)
    assert ok.status_code == 200, ok.text
