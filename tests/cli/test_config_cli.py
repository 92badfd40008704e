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


HAND_WRITTEN = """\
# the gateway of the lab   (written by hand)
gateway_port = 11435  # the port clients know

# the pool
ollama_nodes = ["10.0.0.5:11434"]
"""
WITH_A_SECTION = HAND_WRITTEN + """
[model_fallbacks]
# when the big one is away
big = ["small"]
"""
COMMANDS = [
    ("config", "set", "rpc_placement", "all"),
    ("config", "set", "model_fallbacks.huge", '["big"]'),
    ("config", "set", "policy_settings.size-threshold.min_parameters", "7B"),
    ("keys", "create", "me", "--admin"),
]


def kept_lines(before: str, after: str) -> None:
    """Every non-blank line of `before` is in `after`, in the same order."""
    lines = [line for line in before.splitlines() if line]
    assert [line for line in after.splitlines() if line in lines] == lines


@pytest.mark.parametrize("command", COMMANDS)
def test_commands_edit_the_file_in_place(isolated_config: Path, command) -> None:
    """Comments, blank lines and order stay, and a command opens no [section]: a line the
    operator then appends at the end is still a top-level key (issue 28: tables moved to the
    end swallowed it)."""
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text(HAND_WRITTEN)
    done = sollol(*command)
    assert done.exit_code == 0, done.output
    text = isolated_config.read_text()
    kept_lines(HAND_WRITTEN, text)
    isolated_config.write_text(text + 'rpc_when_busy = "wait"\n')
    assert tomllib.loads(isolated_config.read_text())["rpc_when_busy"] == "wait"
    assert sollol("config", "get", "rpc_when_busy").exit_code == 0


@pytest.mark.parametrize("command", COMMANDS)
def test_sections_the_operator_wrote_stay_where_they_are(isolated_config: Path, command) -> None:
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text(WITH_A_SECTION)
    done = sollol(*command)
    assert done.exit_code == 0, done.output
    kept_lines(WITH_A_SECTION, isolated_config.read_text())
    data = tomllib.loads(isolated_config.read_text())
    assert data["model_fallbacks"]["big"] == ["small"] and data["gateway_port"] == 11435
    again = sollol("keys", "create", "you") if command[0] == "keys" else sollol(*command)
    assert again.exit_code == 0, again.output  # and the result is a valid file for the next
    kept_lines(WITH_A_SECTION, isolated_config.read_text())


def test_unset_and_revoke_leave_the_rest_of_the_file_alone(isolated_config: Path) -> None:
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text(WITH_A_SECTION.replace("gateway_port", 'rpc_placement = "all"\n'
                                                      "gateway_port"))
    assert sollol("keys", "create", "me").exit_code == 0
    assert sollol("config", "unset", "rpc_placement").exit_code == 0
    assert sollol("keys", "revoke", "me").exit_code == 0
    assert tomllib.loads(isolated_config.read_text()) == {
        "gateway_port": 11435, "ollama_nodes": ["10.0.0.5:11434"], "api_keys": [],
        "model_fallbacks": {"big": ["small"]}}
    assert "# the port clients know" in isolated_config.read_text()


def test_a_typo_in_the_file_gets_did_you_mean(isolated_config: Path) -> None:
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text('rpc_placment = "all"\n')
    from sollol.core.runtime import load

    with pytest.raises(ConfigError, match=r"did you mean rpc_placement\b") as caught:
        load(path=isolated_config)
    assert str(isolated_config) in str(caught.value)
    shown = sollol("config", "show")
    assert shown.exit_code != 0 and "did you mean rpc_placement" in shown.output


def test_an_alias_of_an_alias_is_refused_naming_the_config_file(isolated_config: Path) -> None:
    assert sollol("config", "set", "model_aliases.fast", "llama3").exit_code == 0
    refused = sollol("config", "set", "model_aliases.quick", "fast")
    assert refused.exit_code != 0 and "points at another alias" in refused.output
    assert str(isolated_config) in refused.output and ".check-" not in refused.output
