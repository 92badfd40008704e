"""Sizes people write in config ("13B", "8 GiB") and how the policies print them back."""

from __future__ import annotations

import pytest
from sollol_plugins.policies.name_match import canonical, glob_matches, listed
from sollol_plugins.policies.policy_settings import SettingsReader, positive_int

from sollol.core.units import format_bytes, format_count, parse_bytes, parse_count
from sollol.errors import ConfigError


@pytest.mark.parametrize(("text", "count"), [
    (13e9, 13_000_000_000), (7_000_000_000, 7_000_000_000), ("13B", 13_000_000_000),
    ("7.5b", 7_500_000_000), ("500M", 500_000_000), ("13e9", 13_000_000_000), ("1T", 10**12),
])
def test_parameter_counts(text: object, count: int) -> None:
    assert parse_count(text) == count


@pytest.mark.parametrize(("text", "size"), [
    ("8GiB", 8 * 2**30), ("8 GB", 8 * 10**9), ("8G", 8 * 2**30), ("512MiB", 512 * 2**20),
    (1024, 1024), ("100", 100),
])
def test_byte_sizes(text: object, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("bad", ["13 apples", "-1B", "", True, None, [13], "B",
                                 float("inf"), float("nan"), "1e999"])
def test_bad_sizes_say_what_is_expected(bad: object) -> None:
    with pytest.raises(ValueError, match="parameter count"):
        parse_count(bad)
    with pytest.raises(ValueError, match="byte size"):
        parse_bytes(bad)


@pytest.mark.parametrize("bad", [0, -1, 1.5, float("inf"), float("nan"), True, "4096"])
def test_positive_int_refuses_non_integers_with_its_message(bad: object) -> None:
    with pytest.raises(ConfigError, match="an integer above 0"):
        SettingsReader("memory-fit", {"default_context": bad}).get(
            "default_context", 4096, positive_int)


def test_formatting() -> None:
    assert format_count(13_000_000_000) == "13.0B"
    assert format_count(205_000_000) == "205M"
    assert format_count(None) == "unknown"
    assert format_bytes(int(7.4 * 2**30)) == "7.4 GiB"
    assert format_bytes(100) == "100 B"


def test_reader_names_the_full_key_and_rejects_typos() -> None:
    read = SettingsReader("memory-fit", {"default_context": -5})
    with pytest.raises(ConfigError) as info:
        read.get("default_context", 4096, positive_int)
    assert info.value.key == "policy_settings.memory-fit.default_context"
    assert "an integer above 0" in str(info.value)

    read = SettingsReader("memory-fit", {"reserv": 0.2})
    read.get("reserve", 0.1, float)
    with pytest.raises(ConfigError, match=r"policy_settings\.memory-fit\.reserv.*reserve"):
        read.finish()


def test_a_policy_table_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"'policy_settings\.pinned'.*a table"):
        SettingsReader("pinned", ["models"])  # type: ignore[arg-type]


def test_ollama_names_default_to_latest() -> None:
    assert canonical("llama3") == "llama3:latest"
    assert canonical("user/llama3:8b") == "user/llama3:8b"
    assert canonical("hf.co/org/repo") == "hf.co/org/repo:latest"
    assert canonical("/models/x.gguf") == "/models/x.gguf"
    assert listed("llama3", ["llama3:latest"]) and listed("llama3:latest", ["llama3"])
    assert not listed("llama3:8b", ["llama3"])
    assert glob_matches("llama3:*", "llama3") and glob_matches("qwen*", "qwen2:7b")
