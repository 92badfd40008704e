"""Pull, push and create reach only the registries the operator allows (`allowed_registries`,
always Ollama's own): any other host, in any spelling (ports, IP addresses, user info, case,
IDN, trailing dots, escapes, backslashes, schemes), and plain HTTP or `insecure: true` to a
registry not listed for it, is a 403 JSON error before any node is asked."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sollol.config import load_config
from sollol.core.registries import OLLAMA_REGISTRY, Registries, check_registries
from sollol.errors import ConfigError, Forbidden

LISTED = ["reg.example.com:5000", "http://plain.example.com"]
POLICY = Registries(check_registries(LISTED))
ALLOWED_HOSTS = {OLLAMA_REGISTRY, "reg.example.com:5000", "plain.example.com"}

HOSTS = st.sampled_from([
    "registry.ollama.ai", "REGISTRY.Ollama.AI", "registry.ollama.ai.", "registry.ollama.ai:443",
    "registry.ollama.ai:80", "127.0.0.1:33999", "127.0.0.1", "localhost", "[::1]:5000", "[::1]",
    "0x7f.1", "2130706433", "0177.0.0.1", "evil.example", "\uff52\uff45\uff47istry.ollama.ai",
    "xn--rgistry-bya.ollama.ai", "registry.ollama.ai@evil.example",
    "evil.example@registry.ollama.ai", "user:pass@evil.example", "registry.ollama.ai%2f@evil",
    "registry.ollama.ai\\@evil.example", "reg.example.com:5000", "reg.example.com:05000",
    "REG.example.com:5000", "reg.example.com", "plain.example.com", "plain.example.com:80",
    "\u212aeg.example.com", "registry.ollama.ai:5000", "reg.example.com:5000.evil.example",
    "", " ", "registry.ollama.ai/../evil.example", "evil.example#registry.ollama.ai"])
NAMES = st.one_of(
    st.builds(lambda scheme, host, path, tag: f"{scheme}{host}/{path}{tag}",
              st.sampled_from(["", "http://", "https://", "HTTPS://", "ftp://", "http:///"]),
              HOSTS, st.sampled_from(["library/m", "ns/m", "a/b/c", "ns\\m", "/m", "ns/",
                                      "ns/m@sha256:" + "0" * 64, "ns/m@evil.example/x"]),
              st.sampled_from(["", ":latest", ":1b", ":"])),
    st.text(st.sampled_from("ab.:/@\\[]%-_ Ⅎ\u212a0"), max_size=30))


def ollama_connects_to(name: str) -> tuple[str, str] | None:
    """(scheme, host[:port]) an Ollama node would connect to for `name`, read as Ollama's
    `model.ParseNameBare` does and then as a URL; None when Ollama would use its registry."""
    text = name.replace("\\", "/")
    if text.rfind(":") > text.rfind("/"):
        text = text[:text.rfind(":")]
    parts = text.split("/")
    if len(parts) <= 2:
        return None
    prefix = "/".join(parts[:-2])
    scheme, sep, host = prefix.partition("://")
    if not sep:
        scheme, host = "https", prefix
    try:
        url = urlsplit(f"{scheme}://{host}/v2/")
        netloc = (url.hostname or "") + (f":{url.port}" if url.port is not None else "")
    except ValueError:
        return scheme, host
    return scheme, netloc.rstrip(".")


@given(NAMES, st.booleans())
def test_no_spelling_reaches_a_registry_not_listed(name, insecure):
    try:
        POLICY.check(name, insecure)
    except Forbidden as exc:
        assert exc.status == 403 and str(exc)
        return
    target = ollama_connects_to(name)
    if target is None:
        assert not insecure  # Ollama's registry is allowed over HTTPS only
        return
    scheme, host = target
    assert host in ALLOWED_HOSTS, (name, target)
    if scheme.lower() == "http" or insecure:
        assert host == "plain.example.com", (name, target)


@pytest.mark.parametrize("name", [
    "m", "m:1b", "library/m", "registry.ollama.ai/library/m:1b", "Registry.Ollama.AI/library/m",
    "reg.example.com:5000/ns/m", "https://reg.example.com:5000/ns/m:tag",
    "plain.example.com/ns/m", "http://plain.example.com/ns/m", "library/m@sha256:" + "0" * 64])
def test_listed_registries_and_plain_names_pass(name):
    POLICY.check(name)


def test_insecure_only_where_listed_for_it():
    POLICY.check("plain.example.com/ns/m", insecure=True)
    for name in ("m", "registry.ollama.ai/library/m", "reg.example.com:5000/ns/m"):
        with pytest.raises(Forbidden, match="insecure"):
            POLICY.check(name, insecure=True)


@pytest.mark.parametrize("bad", ["user@reg", "reg/x", "ftp://reg", "\uff52\uff45\uff47", "",
                                 "[::1]", "a b"])
def test_bad_entries_are_config_errors(bad):
    with pytest.raises(ConfigError):
        load_config(overrides={"allowed_registries": [bad]})


def test_the_gateway_refuses_before_any_node_is_asked(emulator, pool_gateway):
    node = emulator(models=["m"], library=["fresh"])
    gw = pool_gateway(node.address, allowed_registries=["reg.example.com:5000"])
    refused = [("/api/pull", {"model": "127.0.0.1:33999/evil/x"}),
               ("/api/pull", {"model": "registry.ollama.ai/library/fresh", "insecure": True}),
               ("/api/pull", {"model": "http://registry.ollama.ai/library/fresh"}),
               ("/api/pull", {"model": "registry.ollama.ai@evil.example/library/x"}),
               ("/api/pull", {"model": "REG.example.com:5001/ns/x"}),
               ("/api/push", {"model": "evil.example/ns/m"}),
               ("/api/push", {"name": "[::1]:5000/ns/m"}),
               ("/api/create", {"model": "made", "from": "evil.example/ns/m"}),
               ("/api/create", {"model": "made", "modelfile": "FROM 10.0.0.1:5000/ns/m\n"})]
    for path, body in refused:
        reply = httpx.post(gw.url + path, json={**body, "stream": False}, timeout=30)
        assert reply.status_code == 403, (body, reply.text)
        assert "allowed_registries" in reply.json()["error"], reply.text
    seen = node.stats()["requests"]
    assert not any(seen.get(p) for p in ("/api/pull", "/api/push", "/api/create")), seen
    # the default registry and a listed one do reach the node
    for body in ({"model": "fresh"}, {"model": "reg.example.com:5000/ns/fresh"}):
        reply = httpx.post(gw.url + "/api/pull", json={**body, "stream": False}, timeout=30)
        assert reply.status_code != 403, reply.text
    assert node.stats()["requests"]["/api/pull"] == 2
