"""Settings: the seed's keys and defaults, their sources and precedence, and the one-line
errors that stop start-up (SPEC.md §1, §2)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from cc_proxy.config import ConfigError, Settings, check_startup, load_settings
from cc_proxy.modes import Mode

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_FILE = REPO / "cc-proxy.toml"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CC_* variable of the developer's shell and no cc-proxy.toml of the repo leak in."""
    for name in list(os.environ):
        if name.upper().startswith("CC_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def value_at(settings: Settings, key: str) -> Any:
    node: Any = settings
    for part in key.split("."):
        node = getattr(node, part)
    return node


def config_error(config: str | None = None, cli: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(config, cli)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


SEED_DEFAULTS: list[tuple[str, Any]] = [
    ("default_mode", Mode.TARGET),
    ("server.listen_address", "0.0.0.0:3080"),
    ("target.timeout_secs", 300),
    ("target.max_concurrent", 50),
    ("passthrough.url", "https://api.anthropic.com"),
    ("passthrough.timeout_secs", 300),
    ("passthrough.passthrough_auth", True),
    ("tracing.service_name", "cc-proxy"),
    ("tracing.log_level", "info"),
    ("tracing.otlp_endpoint", None),
]


# --- keys and defaults -------------------------------------------------------------------


@pytest.mark.parametrize(("key", "expected"), SEED_DEFAULTS)
def test_seed_key_has_seed_default_without_any_file(key: str, expected: Any) -> None:
    assert value_at(load_settings(), key) == expected


@pytest.mark.parametrize(("key", "expected"), SEED_DEFAULTS)
def test_seed_example_file_loads_with_seed_values(key: str, expected: Any) -> None:
    assert value_at(load_settings(str(EXAMPLE_FILE)), key) == expected


def test_seed_example_file_says_no_more_than_the_defaults() -> None:
    assert load_settings(str(EXAMPLE_FILE)).model_dump() == load_settings().model_dump()


def test_secrets_and_target_url_are_unset_by_default() -> None:
    settings = load_settings()
    assert settings.target.url is None
    assert settings.target.api_key is None
    assert settings.passthrough.api_key is None
    assert settings.server.admin_token is None
    assert settings.allow_anthropic_only is False


def test_target_defaults_are_accepted_in_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml", "[target]\ntemperature = 0.2\ntop_p = 0.9\nmax_tokens = 4096\n"
    )
    target = load_settings(str(path)).target
    assert (target.temperature, target.top_p, target.max_tokens) == (0.2, 0.9, 4096)


def test_target_defaults_are_absent_unless_configured() -> None:
    target = load_settings().target
    assert (target.temperature, target.top_p, target.max_tokens) == (None, None, None)


# --- which file ----------------------------------------------------------------------------


def test_cc_proxy_toml_in_working_directory_is_read_by_default(tmp_path: Path) -> None:
    write(tmp_path / "cc-proxy.toml", "[target]\nmax_concurrent = 7\n")
    assert load_settings().target.max_concurrent == 7


def test_missing_default_file_means_built_in_defaults() -> None:
    assert not Path("cc-proxy.toml").exists()
    assert load_settings().model_dump() == Settings().model_dump()


def test_cc_proxy_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "cc-proxy.toml", "[target]\nmax_concurrent = 7\n")
    other = write(tmp_path / "other.toml", "[target]\nmax_concurrent = 8\n")
    monkeypatch.setenv("CC_PROXY_CONFIG", str(other))
    assert load_settings().target.max_concurrent == 8


def test_config_argument_wins_over_cc_proxy_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_env = write(tmp_path / "env.toml", "[target]\nmax_concurrent = 8\n")
    from_flag = write(tmp_path / "flag.toml", "[target]\nmax_concurrent = 9\n")
    monkeypatch.setenv("CC_PROXY_CONFIG", str(from_env))
    assert load_settings(str(from_flag)).target.max_concurrent == 9


def test_missing_file_named_by_config_argument_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    assert str(missing) in config_error(str(missing))


def test_missing_file_named_by_cc_proxy_config_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nowhere.toml"
    monkeypatch.setenv("CC_PROXY_CONFIG", str(missing))
    message = config_error()
    assert str(missing) in message
    assert "CC_PROXY_CONFIG" in message


def test_file_that_is_not_toml_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[server\n")
    assert str(path) in config_error(str(path))


# --- precedence: command line > environment > file > defaults --------------------------

# key, its value as written in the file and as read, environment variable, its value as
# written and as read
LAYERED: list[tuple[str, str, Any, str, str, Any]] = [
    ("default_mode", '"compare"', Mode.COMPARE, "CC_DEFAULT_MODE", "target", Mode.TARGET),
    (
        "server.listen_address",
        '"127.0.0.1:4000"',
        "127.0.0.1:4000",
        "CC_SERVER__LISTEN_ADDRESS",
        "127.0.0.1:4001",
        "127.0.0.1:4001",
    ),
    ("server.max_body_bytes", "1000", 1000, "CC_SERVER__MAX_BODY_BYTES", "2000", 2000),
    ("target.timeout_secs", "10", 10, "CC_TARGET__TIMEOUT_SECS", "20", 20),
    ("target.max_concurrent", "3", 3, "CC_TARGET__MAX_CONCURRENT", "4", 4),
    ("target.model", '"file-model"', "file-model", "CC_TARGET__MODEL", "env-model", "env-model"),
    ("target.temperature", "0.1", 0.1, "CC_TARGET__TEMPERATURE", "0.7", 0.7),
    (
        "passthrough.url",
        '"http://file.test"',
        "http://file.test",
        "CC_PASSTHROUGH__URL",
        "http://env.test",
        "http://env.test",
    ),
    ("passthrough.timeout_secs", "11", 11, "CC_PASSTHROUGH__TIMEOUT_SECS", "12", 12),
    (
        "passthrough.passthrough_auth",
        "false",
        False,
        "CC_PASSTHROUGH__PASSTHROUGH_AUTH",
        "true",
        True,
    ),
    (
        "tracing.service_name",
        '"from-file"',
        "from-file",
        "CC_TRACING__SERVICE_NAME",
        "from-env",
        "from-env",
    ),
    ("tracing.log_level", '"debug"', "debug", "CC_TRACING__LOG_LEVEL", "warning", "warning"),
    (
        "tracing.otlp_endpoint",
        '"http://file.test:4318"',
        "http://file.test:4318",
        "CC_TRACING__OTLP_ENDPOINT",
        "http://env.test:4318",
        "http://env.test:4318",
    ),
]
LAYERED_NAMES = ("key", "written", "read", "env", "env_written", "env_read")


def _file_with(key: str, value: str) -> str:
    section, _, name = key.rpartition(".")
    return f"[{section}]\n{name} = {value}\n" if section else f"{name} = {value}\n"


@pytest.mark.parametrize(LAYERED_NAMES, LAYERED)
def test_file_value_overrides_default(
    tmp_path: Path, key: str, written: str, read: Any, env: str, env_written: str, env_read: Any
) -> None:
    path = write(tmp_path / "c.toml", _file_with(key, written))
    assert value_at(load_settings(), key) != read
    assert value_at(load_settings(str(path)), key) == read


@pytest.mark.parametrize(LAYERED_NAMES, LAYERED)
def test_environment_value_overrides_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    key: str,
    written: str,
    read: Any,
    env: str,
    env_written: str,
    env_read: Any,
) -> None:
    path = write(tmp_path / "c.toml", _file_with(key, written))
    monkeypatch.setenv(env, env_written)
    assert env_read != read
    assert value_at(load_settings(str(path)), key) == env_read


def test_environment_and_file_keys_of_one_section_combine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "c.toml", "[target]\ntimeout_secs = 10\nmax_concurrent = 3\n")
    monkeypatch.setenv("CC_TARGET__MAX_CONCURRENT", "4")
    target = load_settings(str(path)).target
    assert (target.timeout_secs, target.max_concurrent) == (10, 4)


def test_command_line_model_overrides_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "c.toml", '[target]\nmodel = "file-model"\ntimeout_secs = 10\n')
    monkeypatch.setenv("CC_TARGET__MODEL", "env-model")
    monkeypatch.setenv("CC_TARGET__MAX_CONCURRENT", "4")
    target = load_settings(str(path), {"target": {"model": "cli-model"}}).target
    assert (target.model, target.max_concurrent, target.timeout_secs) == ("cli-model", 4, 10)


def test_command_line_target_url_overrides_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC_TARGET__URL", "http://env.test")
    settings = load_settings(None, {"target": {"url": "http://cli.test"}})
    assert settings.target.url == "http://cli.test"


def test_target_url_comes_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC_TARGET__URL", "http://gpu.internal:8000/anthropic/")
    assert load_settings().target.url == "http://gpu.internal:8000/anthropic"


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ("CC_TARGET__API_KEY", "target.api_key"),
        ("CC_PASSTHROUGH__API_KEY", "passthrough.api_key"),
        ("CC_SERVER__ADMIN_TOKEN", "server.admin_token"),
    ],
)
def test_secret_comes_from_environment_and_is_not_shown(
    monkeypatch: pytest.MonkeyPatch, env: str, key: str
) -> None:
    monkeypatch.setenv(env, "sekrit-value-123")
    secret = value_at(load_settings(), key)
    assert secret.get_secret_value() == "sekrit-value-123"
    assert "sekrit-value-123" not in repr(load_settings())


def test_allow_anthropic_only_comes_from_command_line() -> None:
    assert load_settings(None, {"allow_anthropic_only": True}).allow_anthropic_only is True


# --- errors: one line, naming the key and where it came from ------------------------------


def test_unknown_key_in_file_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "listen_address = '127.0.0.1:3080'\n")
    message = config_error(str(path))
    assert "listen_address" in message
    assert str(path) in message


def test_unknown_nested_key_in_file_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[server]\nlisten_adress = '127.0.0.1:3080'\n")
    message = config_error(str(path))
    assert "server.listen_adress" in message
    assert str(path) in message


def test_unknown_section_in_file_names_it(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[targets]\ntimeout_secs = 3\n")
    message = config_error(str(path))
    assert "targets" in message
    assert str(path) in message


def test_unknown_nested_key_in_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CC_SERVER__BOGUS", "1")
    message = config_error()
    assert "server.bogus" in message
    assert "CC_SERVER__BOGUS" in message


def test_wrong_type_in_file_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[target]\nmax_concurrent = 'many'\n")
    message = config_error(str(path))
    assert "target.max_concurrent" in message
    assert str(path) in message


def test_wrong_type_for_flag_in_file_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[passthrough]\npassthrough_auth = 'sometimes'\n")
    message = config_error(str(path))
    assert "passthrough.passthrough_auth" in message
    assert str(path) in message


def test_section_that_is_not_a_table_names_it(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "server = '0.0.0.0:3080'\n")
    message = config_error(str(path))
    assert "server" in message
    assert str(path) in message


def test_wrong_type_in_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC_TARGET__TIMEOUT_SECS", "soon")
    message = config_error()
    assert "target.timeout_secs" in message
    assert "CC_TARGET__TIMEOUT_SECS" in message


def test_unknown_default_mode_in_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CC_DEFAULT_MODE", "claude-only")
    message = config_error()
    assert "default_mode" in message
    assert "CC_DEFAULT_MODE" in message


def test_error_names_environment_when_it_overrides_a_good_file_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "c.toml", "[target]\nmax_concurrent = 5\n")
    monkeypatch.setenv("CC_TARGET__MAX_CONCURRENT", "lots")
    message = config_error(str(path))
    assert "CC_TARGET__MAX_CONCURRENT" in message
    assert str(path) not in message


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("passthrough.url", "api.anthropic.com"),
        ("passthrough.url", "ftp://api.anthropic.com"),
        ("tracing.otlp_endpoint", "localhost:4317"),
    ],
)
def test_malformed_url_in_file_names_key_and_file(tmp_path: Path, key: str, bad: str) -> None:
    path = write(tmp_path / "c.toml", _file_with(key, f'"{bad}"'))
    message = config_error(str(path))
    assert key in message
    assert str(path) in message


def test_malformed_target_url_in_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CC_TARGET__URL", "gpu-box:8000")
    message = config_error()
    assert "target.url" in message
    assert "CC_TARGET__URL" in message


def test_malformed_target_url_on_command_line_names_the_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CC_TARGET__URL", "http://env.test")
    message = config_error(None, {"target": {"url": "not a url"}})
    assert "target.url" in message
    assert "--target-url" in message
    assert "CC_TARGET__URL" not in message


@pytest.mark.parametrize(
    "bad", ["localhost", "127.0.0.1:", ":3080", "127.0.0.1:99999", "127.0.0.1:port"]
)
def test_invalid_listen_address_in_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv("CC_SERVER__LISTEN_ADDRESS", bad)
    message = config_error()
    assert "server.listen_address" in message
    assert "CC_SERVER__LISTEN_ADDRESS" in message


def test_invalid_listen_address_in_file_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[server]\nlisten_address = '3080'\n")
    message = config_error(str(path))
    assert "server.listen_address" in message
    assert str(path) in message


def test_invalid_listen_address_on_command_line_names_the_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `cc-proxy demo --listen` is the flag that sets the address from the command line.
    monkeypatch.setenv("CC_SERVER__LISTEN_ADDRESS", "127.0.0.1:3080")
    message = config_error(None, {"server": {"listen_address": "nowhere"}})
    assert "server.listen_address" in message
    assert "command line --listen" in message
    assert "CC_SERVER__LISTEN_ADDRESS" not in message


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:0", "0.0.0.0:3080", "localhost:3080", "[::1]:3080", "gpu.lan:80"]
)
def test_valid_listen_address_is_accepted(monkeypatch: pytest.MonkeyPatch, listen: str) -> None:
    monkeypatch.setenv("CC_SERVER__LISTEN_ADDRESS", listen)
    assert load_settings().server.listen_address == listen


def test_invalid_log_level_in_file_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[tracing]\nlog_level = 'verbose'\n")
    message = config_error(str(path))
    assert "tracing.log_level" in message
    assert str(path) in message


def test_log_level_is_accepted_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC_TRACING__LOG_LEVEL", "WARNING")
    assert load_settings().tracing.log_level == "warning"


def test_invalid_log_level_in_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CC_TRACING__LOG_LEVEL", "verbose")
    message = config_error()
    assert "tracing.log_level" in message
    assert "CC_TRACING__LOG_LEVEL" in message


@pytest.mark.parametrize(
    ("section", "name", "how"),
    [
        ("target", "url", "CC_TARGET__URL"),
        ("target", "api_key", "CC_TARGET__API_KEY"),
        ("passthrough", "api_key", "CC_PASSTHROUGH__API_KEY"),
        ("server", "admin_token", "CC_SERVER__ADMIN_TOKEN"),
    ],
)
def test_secret_in_file_is_refused_saying_how_to_give_it(
    tmp_path: Path, section: str, name: str, how: str
) -> None:
    path = write(tmp_path / "c.toml", f"[{section}]\n{name} = 'http://sekrit.test'\n")
    message = config_error(str(path))
    assert f"{section}.{name}" in message
    assert str(path) in message
    assert how in message
    assert "sekrit" not in message


def test_target_url_in_file_is_refused_naming_the_flag_too(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[target]\nurl = 'http://gpu.test'\n")
    assert "--target-url" in config_error(str(path))


def test_anthropic_only_permission_in_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "allow_anthropic_only = true\n")
    message = config_error(str(path))
    assert "allow_anthropic_only" in message
    assert "--allow-anthropic-only" in message


# --- start-up rules ----------------------------------------------------------------------


def test_anthropic_only_default_without_flag_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CC_DEFAULT_MODE", "anthropic-only")
    with pytest.raises(ConfigError) as caught:
        check_startup(load_settings())
    assert "anthropic-only" in str(caught.value)
    assert "--allow-anthropic-only" in str(caught.value)


def test_anthropic_only_default_with_flag_starts_without_target_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CC_DEFAULT_MODE", "anthropic-only")
    check_startup(load_settings(None, {"allow_anthropic_only": True}))


@pytest.mark.parametrize("mode", ["target", "compare"])
def test_mode_needing_target_without_url_refuses_to_start_saying_how_to_give_it(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv("CC_DEFAULT_MODE", mode)
    with pytest.raises(ConfigError) as caught:
        check_startup(load_settings())
    assert "--target-url" in str(caught.value)
    assert "CC_TARGET__URL" in str(caught.value)


@pytest.mark.parametrize("mode", ["target", "compare"])
def test_mode_needing_target_starts_with_url(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setenv("CC_DEFAULT_MODE", mode)
    check_startup(load_settings(None, {"target": {"url": "http://gpu.test:8000"}}))


class TestTargetShapingKeys:
    def test_defaults_strip_the_billing_block_and_nothing_else(self) -> None:
        target = load_settings().target
        assert target.strip_billing_header is True
        assert target.fold_system_messages is False
        assert (target.drop_betas, target.drop_fields) == ((), ())
        assert target.thinking_signatures == 4096
        assert target.drop_foreign_thinking is False

    def test_every_rule_is_set_in_the_file(self, tmp_path: Path) -> None:
        path = write(
            tmp_path / "c.toml",
            "[target]\nstrip_billing_header = false\nfold_system_messages = true\n"
            'drop_betas = ["b1", "b2"]\ndrop_fields = ["output_config"]\n'
            "thinking_signatures = 0\ndrop_foreign_thinking = true\n",
        )
        target = load_settings(str(path)).target
        assert target.strip_billing_header is False
        assert target.fold_system_messages is True
        assert (target.drop_betas, target.drop_fields) == (("b1", "b2"), ("output_config",))
        assert target.thinking_signatures == 0
        assert target.drop_foreign_thinking is True

    def test_lists_come_from_the_environment_as_json(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CC_TARGET__DROP_FIELDS", '["context_management"]')
        target = load_settings().target
        assert target.drop_fields == ("context_management",)

    def test_a_negative_memory_size_names_the_key(self, tmp_path: Path) -> None:
        path = write(tmp_path / "c.toml", "[target]\nthinking_signatures = -1\n")
        assert "target.thinking_signatures" in config_error(str(path))
