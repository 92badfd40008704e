"""`sollol config get|set|unset` with dotted keys, validated at set time with "did you mean", and
node addresses that are checked instead of becoming nodes named after a typo."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from sollol.cli import build_cli
from sollol.core.runtime import load
from sollol.errors import ConfigError
from sollol.models import check_node_address


def sollol(*args: str):
    return CliRunner().invoke(build_cli(), list(args))


def test_dotted_keys_set_get_and_unset(isolated_config: Path) -> None:
    done = sollol("config", "set", "policy_settings.size-threshold.min_parameters", "7B")
    assert done.exit_code == 0, done.output
    data = tomllib.loads(isolated_config.read_text())
    assert data["policy_settings"]["size-threshold"]["min_parameters"] == "7B"
    got = sollol("config", "get", "policy_settings.size-threshold.min_parameters", "--json")
    assert got.exit_code == 0 and got.output.strip() == '"7B"'
    assert sollol("config", "get", "gateway_port").output.startswith("gateway_port = 11435")
    assert sollol("config", "get", "policy_settings.pinned.fallback").exit_code == 1
    assert sollol("config", "set", "gateway_port", "8000").exit_code == 0
    gone = sollol("config", "unset", "policy_settings.size-threshold.min_parameters")
    assert gone.exit_code == 0, gone.output
    data = tomllib.loads(isolated_config.read_text())
    assert "policy_settings" not in data and data["gateway_port"] == 8000  # empty tables go
    assert sollol("config", "unset", "gateway_port").exit_code == 0
    assert tomllib.loads(isolated_config.read_text()) == {}


@pytest.mark.parametrize(("args", "says"), [
    (("gateway_prot", "1"), "did you mean gateway_port"),
    (("policy_settings.size-threshold.min_paramters", "7B"), "did you mean min_parameters"),
    (("policy_settings.size-treshold.min_parameters", "7B"), "did you mean size-threshold"),
    (("policy_settings.size-threshold.min_parameters", "lots"), "min_parameters"),
    (("gateway_port.x", "1"), "not a table"),
    (("ollama_nodes", "http//gpu-box:11434"), "did you mean http://gpu-box:11434"),
    (("model_aliases.fast", '{"model": "m", "route": "gpu"}'), "model_aliases"),
])
def test_bad_changes_are_refused_before_writing(isolated_config: Path, args, says) -> None:
    result = sollol("config", "set", *args)
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert not isolated_config.exists()  # nothing was written


def test_node_typos_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="did you mean http://host"):
        load(overrides={"ollama_nodes": ["http//host"]})
    config, _ = load(overrides={"ollama_nodes": ["http://h:1", "h2", "openai://[::1]:8080"]})
    assert len(config["ollama_nodes"]) == 3


@given(st.text(max_size=30))
def test_any_node_address_is_accepted_or_refused_with_a_value_error(text: str) -> None:
    try:
        check_node_address(text)
    except ValueError:
        return
    # what passes has a host made of host-name characters or an IP address
    assert "/" not in text.split("://", 1)[-1].split("/", 1)[0]


def test_rpc_backend_typos_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="rpc_backends"):
        load(overrides={"rpc_backends": ["gpu box:50052"]})
