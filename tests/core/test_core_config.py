"""Configuration: file, env and command-line layers, validation and atomic persistence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sollol.config import (
    CORE_SETTINGS,
    Setting,
    config_path,
    core_setting,
    load_config,
    read_file,
    write_file,
)
from sollol.core.plugin_manager import collect_named
from sollol.core.runtime import load
from sollol.errors import ConfigError


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sollol", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_defaults_hold_the_seed_keys() -> None:
    config = load_config(path=Path(os.devnull), env={})
    assert config["model_sharding_enabled"] is False
    assert config["task_distribution_enabled"] is True
    assert "rpc_backends" not in config.values  # declared by the llamacpp_rpc plugin
    assert load(path=os.devnull, env={})[0]["rpc_backends"] == []
    assert config["gateway_port"] == 11435
    assert config.sources["gateway_port"] == "default"


def test_env_overrides_every_key_and_beats_the_file(isolated_config: Path) -> None:
    write_file(isolated_config, {"model_sharding_enabled": False, "gateway_port": 9000})
    env = {
        "SOLLOL_MODEL_SHARDING_ENABLED": "true",
        "SOLLOL_RPC_BACKENDS": "10.0.0.2:50052, 10.0.0.3:50052",
        "SOLLOL_POLICY_SETTINGS": '{"size-threshold": {"min_parameters": 7e9}}',
    }
    config, pm = load(path=isolated_config, env=env)
    assert config["model_sharding_enabled"] is True
    assert config["rpc_backends"] == ["10.0.0.2:50052", "10.0.0.3:50052"]
    assert config["gateway_port"] == 9000
    assert config.sources["gateway_port"] == str(isolated_config)
    assert config.sources["model_sharding_enabled"] == "SOLLOL_MODEL_SHARDING_ENABLED"
    assert config["policy_settings"]["size-threshold"]["min_parameters"] == 7e9
    every = collect_named(pm, "sollol_register_settings", "config key")
    assert {s.name for s in CORE_SETTINGS} < set(every)
    for setting, _plugin in every.values():
        assert setting.env_var == "SOLLOL_" + setting.name.upper()


def test_ollama_hosts_lists_pool_nodes_and_sollol_key_wins() -> None:
    config = load(path=os.devnull, env={"OLLAMA_HOSTS": "a:11434,b:11434"})[0]
    assert config["ollama_nodes"] == ["a:11434", "b:11434"]
    assert config.sources["ollama_nodes"] == "OLLAMA_HOSTS"
    both = {"OLLAMA_HOSTS": "a:11434", "SOLLOL_OLLAMA_NODES": "c:1"}
    assert load(path=os.devnull, env=both)[0]["ollama_nodes"] == ["c:1"]
    assert load(path=os.devnull, env={"OLLAMA_HOSTS": ""})[0]["ollama_nodes"] == []


def test_a_settings_extra_env_var_is_read_below_its_own() -> None:
    """A plugin names another variable for its key (the pool: OLLAMA_HOSTS); the core names none."""
    setting = Setting("demo_hosts", "list", [], "Hosts.", extra_env="DEMO_HOSTS")
    assert load_config([setting], path=Path(os.devnull), env={"DEMO_HOSTS": "a,b"}).sources == {
        "demo_hosts": "DEMO_HOSTS"}
    both = {"DEMO_HOSTS": "a", "SOLLOL_DEMO_HOSTS": "c"}
    assert load_config([setting], path=Path(os.devnull), env=both)["demo_hosts"] == ["c"]
    with pytest.raises(ConfigError, match="from DEMO_N"):
        load_config([Setting("n", "int", 0, "N.", extra_env="DEMO_N")], path=Path(os.devnull),
                    env={"DEMO_N": "many"})
    assert not any(s.extra_env for s in CORE_SETTINGS)


def test_a_config_reads_an_undeclared_key_as_its_settings_default() -> None:
    setting = Setting("demo_list", "list", ["a"], "A list.")
    config = load_config(path=Path(os.devnull), env={})
    first = config.read(setting)
    assert first == ["a"] and first is not setting.default  # a copy: callers may not share it
    assert config.evolve(demo_list=["b"]).read(setting) == ["b"]
    assert core_setting("gateway_port").default == 11435
    with pytest.raises(KeyError):
        core_setting("ollama_nodes")  # the pool plugin's key


def test_command_line_overrides_win(isolated_config: Path) -> None:
    write_file(isolated_config, {"gateway_port": 9000})
    config = load_config(path=isolated_config, env={"SOLLOL_GATEWAY_PORT": "9001"},
                         overrides={"gateway_port": 9002})
    assert config["gateway_port"] == 9002
    assert config.sources["gateway_port"] == "command line"


def test_rpc_backends_accept_tables_in_toml(isolated_config: Path) -> None:
    isolated_config.parent.mkdir(parents=True)
    isolated_config.write_text('rpc_backends = [{host = "10.0.0.2", port = 50052}, "h:1"]\n')
    assert load(path=isolated_config, env={})[0]["rpc_backends"] == ["10.0.0.2:50052", "h:1"]


@pytest.mark.parametrize(
    ("content", "key", "fragment"),
    [
        ("gateway_port = 70000\n", "gateway_port", "1 to 65535"),
        ('gateway_port = "high"\n', "gateway_port", "an integer"),
        ("model_sharding_enabled = 3\n", "model_sharding_enabled", "true or false"),
        ("no_such_key = 1\n", "no_such_key", "a known key"),
        ('rpc_backends = ["nohost"]\n', "rpc_backends", "host:port"),
        ("request_timeout = nan\n", "request_timeout", "above 0"),
    ],
)
def test_bad_values_name_key_value_and_expectation(
    isolated_config: Path, content: str, key: str, fragment: str
) -> None:
    isolated_config.parent.mkdir(parents=True)
    isolated_config.write_text(content)
    with pytest.raises(ConfigError) as info:
        load(path=isolated_config, env={})  # with every installed plugin's keys
    assert info.value.key == key
    assert fragment in str(info.value)


def test_bad_env_value_is_an_error() -> None:
    with pytest.raises(ConfigError, match="SOLLOL_MODEL_SHARDING_ENABLED"):
        load_config(path=Path(os.devnull), env={"SOLLOL_MODEL_SHARDING_ENABLED": "maybe"})


def test_config_path_follows_xdg_config_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOLLOL_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_path() == tmp_path / "xdg" / "sollol" / "config.toml"


def test_write_is_atomic(isolated_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_file(isolated_config, {"gateway_port": 9000})

    def crash(*args: object) -> None:
        raise OSError("disk died")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk died"):
        write_file(isolated_config, {"gateway_port": 9001})
    assert read_file(isolated_config) == {"gateway_port": 9000}
    assert [p.name for p in isolated_config.parent.iterdir()] == ["config.toml"]


def test_config_set_persists_across_processes(isolated_config: Path) -> None:
    result = run_cli("config", "set", "rpc_backends", "127.0.0.1:50052,127.0.0.1:50053")
    assert result.returncode == 0, result.stderr
    result = run_cli("config", "set", "model_sharding_enabled", "true")
    assert result.returncode == 0, result.stderr
    config, _pm = load()
    assert config["rpc_backends"] == ["127.0.0.1:50052", "127.0.0.1:50053"]
    assert config["model_sharding_enabled"] is True
    shown = run_cli("config", "show")
    assert "model_sharding_enabled = true" in shown.stdout
    assert str(isolated_config) in run_cli("config", "path").stdout


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (("config", "set", "gateway_port", "99999"), {}, "gateway_port"),
        (("config", "set", "gateway_port", "abc"), {}, "gateway_port"),
        (("config", "set", "bogus", "1"), {}, "bogus"),
        (("config", "show"), {"SOLLOL_GATEWAY_PORT": "0"}, "gateway_port"),
        (("config", "show"), {"SOLLOL_TASK_DISTRIBUTION_ENABLED": "perhaps"},
         "task_distribution_enabled"),
    ],
)
def test_cli_bad_config_is_one_line_and_exit_2(
    args: tuple[str, ...], env: dict[str, str], needle: str
) -> None:
    result = run_cli(*args, env=env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_file_value_makes_cli_exit_2(isolated_config: Path) -> None:
    isolated_config.parent.mkdir(parents=True)
    isolated_config.write_text("unknown_thing = 1\n")
    result = run_cli("config", "show")
    assert result.returncode == 2
    assert "unknown_thing" in result.stderr
