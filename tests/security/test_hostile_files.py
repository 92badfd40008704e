"""Hostile files SOLLOL reads: GGUF headers, Ollama manifests, config files.

hypothesis writes headers with absurd counts, nested arrays, huge strings and truncations,
manifests of every wrong shape and config files of wrong types and huge values: each is read
whole or refused with SOLLOL's own error, never a crash, and the GGUF reader's memory stays
bounded whatever the file declares.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sollol.core.gguf_info import read_header, read_model_info
from sollol.errors import ModelFileError

FILES = settings(suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow, HealthCheck.data_too_large])
U64 = st.one_of(st.integers(0, 16), st.sampled_from([2**31, 2**32 - 1, 2**63, 2**64 - 1]))

# GGUF value types: 0-7 and 10-12 scalars, 8 string, 9 array (and unknown ones)
SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q",
                  11: "q", 12: "d"}


def gguf_string(text: bytes, declared: int | None = None) -> bytes:
    return struct.pack("<Q", len(text) if declared is None else declared) + text


@st.composite
def values(draw: st.DrawFn, depth: int = 0) -> tuple[int, bytes]:
    """(type, encoded value) of a metadata value, well formed or not."""
    kind = draw(st.sampled_from([*SCALAR_FORMATS, 8, 9, 13, 2**32 - 1]))
    if kind in SCALAR_FORMATS:
        fmt = SCALAR_FORMATS[kind]
        if fmt in "fd":
            number = draw(st.floats(allow_nan=True, allow_infinity=True, width=32))
        elif fmt == "?":
            number = draw(st.booleans())
        else:
            bits = struct.calcsize(fmt) * 8
            low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if fmt.islower() else \
                (0, 2**bits - 1)
            number = draw(st.integers(low, high))
        return kind, struct.pack("<" + fmt, number)
    if kind == 8:
        text = draw(st.binary(max_size=20))
        return kind, gguf_string(text, draw(st.one_of(st.none(), U64)))
    if kind == 9 and depth < 12:  # nested deeper than the reader allows, sometimes
        children = draw(st.lists(values(depth + 1), max_size=3)) if draw(st.booleans()) else []
        element = children[0][0] if children else draw(st.sampled_from([0, 8, 9, 12]))
        body = b"".join(encoded for kind, encoded in children if kind == element)
        count = draw(st.one_of(st.just(sum(k == element for k, _ in children)), U64))
        return kind, struct.pack("<IQ", element, count) + body
    return kind, b""


@st.composite
def gguf_files(draw: st.DrawFn) -> bytes:
    items = draw(st.lists(st.tuples(st.binary(max_size=12), values()), max_size=6))
    meta = b"".join(gguf_string(key) + struct.pack("<I", kind) + value
                    for key, (kind, value) in items)
    tensors = b""
    for _ in range(draw(st.integers(0, 3))):
        dims = draw(st.one_of(st.integers(0, 4), st.sampled_from([9, 2**32 - 1])))
        shape = b"".join(struct.pack("<Q", draw(U64)) for _ in range(min(dims, 6)))
        tensors += (gguf_string(draw(st.binary(max_size=8))) + struct.pack("<I", dims) + shape
                    + struct.pack("<IQ", draw(st.integers(0, 40)), 0))
    version = draw(st.sampled_from([3, 3, 3, 2, 1, 4, 2**24]))
    kv_count = draw(st.one_of(st.just(len(items)), U64))
    tensor_count = draw(st.one_of(st.just(0), st.integers(0, 3), U64))
    data = b"GGUF" + struct.pack("<IQQ", version, tensor_count, kv_count) + meta + tensors
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return data if cut is None else data[:cut]


@FILES
@given(data=gguf_files())
def test_any_gguf_header_is_read_or_refused_in_bounded_memory(tmp_path: Path, data) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        try:
            read_header(path)
            read_model_info(path)
        except ModelFileError as exc:
            assert str(path) in str(exc)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # whatever counts and lengths the header declares (up to 2^64), the reader allocates in
    # proportion to the bytes really there
    assert peak < 1_000_000 + 200 * len(data), peak


def test_a_declared_huge_string_is_refused_without_reading_it(tmp_path: Path) -> None:
    key = gguf_string(b"general.name") + struct.pack("<I", 8)
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + key + gguf_string(b"x" * 100,
                                                                                 2**40))
    with pytest.raises(ModelFileError, match="malformed GGUF header"):
        read_header(path)


def all_settings():
    from sollol.core.plugin_manager import collect_named, get_plugin_manager

    named = collect_named(get_plugin_manager(), "sollol_register_settings", "config key")
    return [setting for setting, _plugin in named.values()]


SETTINGS = all_settings()
toml_scalars = st.one_of(
    st.booleans(), st.integers(), st.sampled_from([2**63 - 1, -(2**63), 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", "1", "1e400", "inf", "127.0.0.1:1", "http://[::1]:1", "x" * 5000]))
toml_values = st.recursive(toml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(min_size=1, max_size=6), inner,
                                                 max_size=3)), max_leaves=8)


@FILES
@given(config=st.dictionaries(st.one_of(st.sampled_from([s.name for s in SETTINGS]),
                                        st.text(min_size=1, max_size=8)),
                               toml_values, max_size=4))
def test_any_config_file_loads_or_is_a_config_error(tmp_path: Path, config) -> None:
    import tomli_w

    from sollol.config import load_config
    from sollol.errors import ConfigError

    path = tmp_path / "config.toml"
    path.write_bytes(tomli_w.dumps(config).encode())
    try:
        loaded = load_config(SETTINGS, path=path, env={})
    except ConfigError as exc:
        assert str(path) in str(exc) or "config key" in str(exc)
        return
    for setting in SETTINGS:  # what loads is of the declared type
        value = loaded[setting.name]
        if value is None:
            assert setting.optional or setting.default is None
        elif setting.kind == "float":
            assert isinstance(value, (int, float)) and value == value


@FILES
@given(name=st.sampled_from([s.name for s in SETTINGS]),
       value=st.one_of(st.text(max_size=30), st.sampled_from(
           ["inf", "nan", "1e400", "9" * 5000, "[[[[", '{"a": ' * 100, "-1", "0x10"])))
def test_any_environment_value_loads_or_is_a_config_error(name, value) -> None:
    from sollol.config import load_config
    from sollol.errors import ConfigError

    try:
        load_config(SETTINGS, path=Path("/nonexistent/sollol.toml"),
                    env={"SOLLOL_" + name.upper(): value})
    except ConfigError as exc:
        assert name in str(exc)


GOOD_DIGEST = "sha256:" + "ab" * 32
manifest_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10),
              st.sampled_from([GOOD_DIGEST, "sha256:../../etc/passwd", "x" * 100_000,
                               "application/vnd.ollama.image.model",
                               "application/vnd.ollama.image.projector",
                               "application/vnd.oci.image.index.v1+json"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(
                                ["mediaType", "digest", "size", "layers", "manifests",
                                 "platform", "os", "architecture", "config"]), inner,
                                max_size=4)), max_leaves=10)


@FILES
@given(manifest=st.one_of(
    manifest_values.map(lambda value: json.dumps(value).encode()),
    st.sampled_from([b"[" * 100_000, b"\xff\xfe", b"", b'{"layers": ' + b"[" * 5000])),
    blob=st.sampled_from([b"GGUF" + b"\0" * 20, b"nope", None]))
def test_any_manifest_resolves_or_is_a_model_file_error(tmp_path: Path, manifest, blob) -> None:
    from sollol_plugins.ollama_pool.store import resolve

    root = tmp_path / "store"
    folder = root / "manifests" / "registry.ollama.ai" / "library" / "m"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "latest").write_bytes(manifest)
    (root / "blobs").mkdir(exist_ok=True)
    if blob is not None:
        (root / "blobs" / ("sha256-" + "ab" * 32)).write_bytes(blob)
    try:
        resolved = resolve("m", [root])
    except ModelFileError as exc:
        assert len(str(exc)) < 2000  # never the whole hostile manifest
        return
    assert resolved is not None and resolved.path.is_file()
