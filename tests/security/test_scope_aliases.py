"""A key's model globs hold for every model a request may end up using (issue 27, finding 1),
and the names it may not use never show (finding 2).

A real gateway over an emulated Ollama node holding `tiny:1b` and `secret:7b`; `tiny-fast` is an
alias of `secret:7b`, `tiny-gone` falls back to it, `tiny-mixed` falls back to it and then to
`tiny:1b` (tests/security/conftest.py). Every dispatch endpoint of the route table is driven
with each name, by a key for `tiny*` and, as the control that shows the path is real, by a key
for every model. The listing sweep reads every GET endpoint of the route table.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sollol.gateway.route_table import ROUTES, dialect

MSG = [{"role": "user", "content": "hi"}]
BODIES = {
    ("ollama", "generate"): {"prompt": "hi", "stream": False},
    ("ollama", "chat"): {"messages": MSG, "stream": False},
    ("ollama", "embed"): {"input": "hi"},
    ("ollama", "embeddings"): {"prompt": "hi"},
    ("ollama", "show"): {},
    ("openai", "chat"): {"messages": MSG},
    ("openai", "completions"): {"prompt": "hi"},
    ("openai", "embed"): {"input": "hi"},
    ("openai", "responses"): {"input": "hi"},
    ("anthropic", "messages"): {"max_tokens": 16, "messages": MSG},
    ("anthropic", "count_tokens"): {"messages": MSG},
}
"""A valid body for every dispatched operation (a new endpoint fails here until it has one)."""
DISPATCH = [pytest.param(r, id=r.path) for r in ROUTES if r.kind == "dispatch"]
CASES = {
    # name: (status for a tiny* key, what an every-model key's request reaches)
    "tiny-fast": (403, "alias of secret:7b"),
    "tiny-gone": (404, "falls back to secret:7b only"),
}


def body_for(route, model: str) -> dict:
    return {"model": model, **BODIES[(route.api, route.op)]}


def check_error_shape(route, reply) -> None:
    assert reply.headers["content-type"].startswith("application/json"), reply.text
    error = reply.json()["error"]
    if dialect(route.path) == "ollama":
        assert isinstance(error, str) and error
    else:
        assert isinstance(error["message"], str) and error["message"]
    if route.api == "anthropic":
        assert reply.json()["type"] == "error"


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("route", DISPATCH)
def test_no_dialect_reaches_a_hidden_model_through_an_alias_or_a_fallback(scoped, route, name):
    status, _why = CASES[name]
    before = scoped.served().get("secret:7b", 0)
    reply = scoped.post(route.path, body_for(route, name), scoped.limited)
    assert reply.status_code == status, reply.text
    check_error_shape(route, reply)
    assert not scoped.leaks(reply), scoped.leaks(reply)
    assert scoped.served().get("secret:7b", 0) == before  # never tried, not even once
    # the control: a key for every model goes through the same name to the hidden model
    control = scoped.post(route.path, body_for(route, name), scoped.user)
    assert control.status_code == 200, control.text
    if route.op == "show":
        assert "secret" in control.text  # the emulator's modelfile names its model
    elif route.op == "count_tokens":  # an Ollama node has no tokenizer endpoint: estimated
        assert control.json()["input_tokens"] > 0 and control.json()["exact"] is False
    else:
        assert scoped.served()["secret:7b"] == before + 1


@pytest.mark.parametrize("route", DISPATCH)
def test_a_fallback_the_key_may_not_use_is_skipped_not_tried(scoped, route):
    before = scoped.served().get("secret:7b", 0)
    reply = scoped.post(route.path, body_for(route, "tiny-mixed"), scoped.limited)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-sollol-fallback"] == "tiny:1b"
    assert not scoped.leaks(reply), scoped.leaks(reply)
    assert scoped.served().get("secret:7b", 0) == before
    allowed = scoped.post(route.path, body_for(route, "tiny-ok"), scoped.limited)
    assert allowed.status_code == 200, allowed.text  # an alias inside the globs still serves


def test_the_hidden_model_itself_and_its_spellings_are_refused(scoped):
    for name in ("secret:7b", "SECRET:7b", "library/secret:7b", "tiny/../secret:7b",
                 "tiny:1b/../../secret:7b", "./tiny/../secret.gguf"):
        reply = scoped.post("/api/chat", {"model": name, "messages": MSG, "stream": False},
                            scoped.limited)
        assert reply.status_code == 403, (name, reply.text)


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["tiny-fast", "tiny-gone"]),
       prefix=st.sampled_from(["", "library/", "registry.ollama.ai/library/",
                               "Registry.Ollama.AI/library/"]),
       tag=st.sampled_from(["", ":latest"]), upper=st.lists(st.booleans(), min_size=9,
                                                            max_size=9),
       route=st.sampled_from([r for r in ROUTES if r.kind == "dispatch"]))
def test_no_spelling_of_an_alias_or_a_fallback_reaches_the_hidden_model(scoped, name, prefix,
                                                                        tag, upper, route):
    spelled = "".join(c.upper() if up else c for c, up in zip(name, upper, strict=True))
    before = scoped.served().get("secret:7b", 0)
    reply = scoped.post(route.path, body_for(route, prefix + spelled + tag), scoped.limited)
    assert reply.status_code in (403, 404), reply.text
    assert not scoped.leaks(reply), scoped.leaks(reply)
    assert scoped.served().get("secret:7b", 0) == before


# ---- finding 2: names the key may not use never show


def test_listings_show_only_what_the_key_may_use(scoped):
    warm = scoped.post("/api/generate", {"model": "secret:7b", "prompt": "hi",
                                         "stream": False}, scoped.user)
    assert warm.status_code == 200  # loaded: /api/ps lists it, and its alias with alias_of
    everything = scoped.get("/api/tags", scoped.admin)
    assert "secret" in everything.text and '"alias_of"' in everything.text  # the control
    assert "secret" in scoped.get("/api/ps", scoped.admin).text
    for key in (scoped.limited, scoped.manager):
        tags = scoped.get("/api/tags", key)
        assert sorted(m["name"] for m in tags.json()["models"]) == ["tiny-ok", "tiny:1b"]
        assert [m["alias_of"] for m in tags.json()["models"] if "alias_of" in m] == ["tiny:1b"]
        models = scoped.get("/v1/models", key)
        assert sorted(m["id"] for m in models.json()["data"]) == ["tiny-ok", "tiny:1b"]
        for path in ("/api/tags", "/api/ps", "/v1/models", "/v1/models/tiny-fast"):
            reply = scoped.get(path, key)
            assert not scoped.leaks(reply), (path, scoped.leaks(reply))
        for name in ("tiny-fast", "secret:7b", "nothing-at-all"):  # hidden is unknown, alike
            reply = scoped.get(f"/v1/models/{name}", key)
            assert reply.status_code == 404
            assert reply.json()["error"]["message"] == f"model {name!r} not found"


def test_did_you_mean_names_only_models_the_key_may_use(scoped):
    control = scoped.post("/api/chat", {"model": "tiny-fsat", "messages": MSG}, scoped.user)
    assert control.status_code == 404 and "did you mean 'tiny-fast'" in control.text
    for route in (r for r in ROUTES if r.kind == "dispatch"):
        for typo in ("tiny-fsat", "tiny-fast:7b", "tiny:7b"):
            reply = scoped.post(route.path, body_for(route, typo), scoped.limited)
            assert reply.status_code == 404, (route.path, typo, reply.text)
            suggested = reply.json()["error"]
            suggested = suggested if isinstance(suggested, str) else suggested["message"]
            assert "tiny-fast" not in suggested.partition("did you mean")[2], suggested
            assert not scoped.leaks(reply), reply.text
    hint = scoped.post("/api/chat", {"model": "tiny:7b", "messages": MSG}, scoped.limited)
    assert "did you mean 'tiny:1b'" in hint.text  # suggestions still help, inside the globs


def test_no_get_endpoint_shows_a_hidden_name_to_a_limited_key(scoped):
    """Every GET endpoint of the route table, with the limited admin key (the wider of the
    two): either filtered or refused, and never a hidden name; cluster-wide views (state,
    events, nodes, metrics, the dashboard) are refused to a key limited to some models."""
    names = {"/v1/models/": "tiny-fast", "/sollol/routes/": "pool"}
    for route in ROUTES:
        if "GET" not in route.methods:
            continue
        path = route.path + names.get(route.path, "") if route.prefix else route.path
        if path == "/sollol/route":
            path += "?model=tiny-fast"
        reply = scoped.get(path, scoped.manager)
        assert reply.status_code in (200, 403, 404), (path, reply.status_code)
        assert not scoped.leaks(reply), (path, scoped.leaks(reply))
        if path.startswith(("/sollol/", "/metrics", "/dashboard")):
            assert reply.status_code == 403, path
            assert "limited to some models" in reply.json()["error"]
            if path != "/sollol/stream":  # (an endless event stream: covered by its refusal)
                assert scoped.get(path, scoped.admin).status_code in (200, 404), path
    for route in ROUTES:  # changes to the cluster too (nodes, rpc-servers, reload)
        if route.kind == "admin":
            path = route.path + ("x" if route.prefix else "")
            reply = scoped.post(path, {}, scoped.manager, method=route.methods[0])
            assert reply.status_code == 403 and "limited to some models" in reply.text, path


def test_a_model_built_from_a_hidden_one_does_not_name_it(scoped):
    made = scoped.post("/api/create", {"model": "tiny-child", "from": "secret:7b",
                                       "stream": False}, scoped.admin)
    assert made.status_code == 200, made.text
    try:
        control = scoped.post("/api/show", {"model": "tiny-child"}, scoped.admin)
        assert control.json()["details"]["parent_model"] == "secret:7b"
        assert "secret" in scoped.get("/api/tags", scoped.admin).text
        shown = scoped.post("/api/show", {"model": "tiny-child"}, scoped.limited)
        assert shown.status_code == 200 and shown.json()["details"]["parent_model"] == ""
        assert not scoped.leaks(shown), scoped.leaks(shown)
        for path in ("/api/tags", "/v1/models"):
            listed = scoped.get(path, scoped.limited)
            assert "tiny-child" in listed.text and not scoped.leaks(listed), listed.text
    finally:
        scoped.post("/api/delete", {"model": "tiny-child"}, scoped.admin, method="DELETE")
