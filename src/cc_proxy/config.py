"""Settings: defaults < TOML file < `CC_` environment < command line (SPEC.md §2).

Secrets and launch-time decisions (the target URL, API keys, the admin token and the
anthropic-only permission) are refused in the file: they come from the command line or
the environment only.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources import InitSettingsSource

from cc_proxy.modes import Mode

DEFAULT_CONFIG_FILE = "cc-proxy.toml"
ENV_PREFIX = "CC_"
CONFIG_FILE_ENV = "CC_PROXY_CONFIG"

# key path -> the command-line flag that sets it
CLI_FLAGS: Mapping[tuple[str, ...], str] = {
    ("target", "url"): "--target-url",
    ("target", "model"): "--model",
    ("allow_anthropic_only",): "--allow-anthropic-only",
    ("server", "listen_address"): "--listen",  # `cc-proxy demo` only
}
# keys that may not be written in the TOML file, and how to give them instead
LAUNCH_ONLY: Mapping[tuple[str, ...], str] = {
    ("target", "url"): "--target-url or CC_TARGET__URL",
    ("target", "api_key"): "CC_TARGET__API_KEY",
    ("passthrough", "api_key"): "CC_PASSTHROUGH__API_KEY",
    ("server", "admin_token"): "CC_SERVER__ADMIN_TOKEN",
    ("allow_anthropic_only",): "--allow-anthropic-only",
}


def _listen_address(value: str) -> str:
    parse_listen_address(value)
    return value


_HTTP_URL = TypeAdapter(AnyHttpUrl)


def _http_url(value: str) -> str:
    try:
        url = _HTTP_URL.validate_python(value)
    except ValidationError as exc:
        raise ValueError(f"not an http(s) URL: {exc.errors()[0]['msg']}") from None
    # Kept as text without the trailing slash pydantic adds, so that a base path
    # (http://host/anthropic) and the client's path join without a double slash.
    return str(url).rstrip("/")


HttpUrlText = Annotated[str, AfterValidator(_http_url)]
ListenAddress = Annotated[str, AfterValidator(_listen_address)]


# Everything between "//" and the last "@" of the authority: a URL's user:password part.
_USERINFO = re.compile(r"(?<=//)[^/?#]*@")


def redact_url(url: str | None) -> str | None:
    """A URL fit to show: any user:password@ part removed (malformed URLs included)."""
    return None if url is None else _USERINFO.sub("", url, count=1)


def parse_listen_address(value: str) -> tuple[str, int]:
    """`HOST:PORT`, with IPv6 hosts in brackets (`[::1]:3080`)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:3080), got {value!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    listen_address: ListenAddress = "0.0.0.0:3080"
    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    shutdown_grace_secs: float = Field(default=30.0, ge=0)
    admin_token: SecretStr | None = None
    # A client's request head must arrive within this, and its body never fall silent
    # for longer: a slow or lying client cannot hold a connection for ever.
    client_timeout_secs: float = Field(default=60.0, gt=0)
    # Processes accepting on the listen address; they share the mode, tracing and stats.
    workers: int = Field(default=1, ge=1, le=64)


class TargetSettings(_Section):
    url: HttpUrlText | None = None
    model: str | None = None
    api_key: SecretStr | None = None
    timeout_secs: float = Field(default=300.0, gt=0)
    max_concurrent: int = Field(default=50, gt=0)
    # How long a target-bound request may wait for a free slot before the 529.
    queue_wait_secs: float = Field(default=0.5, ge=0)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    # Target-bound shaping for self-hosted servers (shaping.py).
    strip_billing_header: bool = True
    fold_system_messages: bool = False
    drop_betas: tuple[str, ...] = ()
    drop_fields: tuple[str, ...] = ()
    # How many signatures of the target's thinking blocks are remembered, so that those
    # blocks are taken out of passthrough-bound requests after a mode switch; 0 = off.
    thinking_signatures: int = Field(default=4096, ge=0)
    drop_foreign_thinking: bool = False


class PassthroughSettings(_Section):
    url: HttpUrlText = "https://api.anthropic.com"
    timeout_secs: float = Field(default=300.0, gt=0)
    passthrough_auth: bool = True
    api_key: SecretStr | None = None


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class TracingSettings(_Section):
    service_name: str = "cc-proxy"
    otlp_endpoint: HttpUrlText | None = None
    log_level: Annotated[LogLevel, BeforeValidator(_lower)] = "info"
    # Per-request content logging, switchable at runtime with PUT /api/tracing.
    enabled: bool = False


class CompareSettings(_Section):
    # Compare records (SQLite); a relative path is taken from the working directory.
    db_path: str = Field(default="cc-proxy-compare.db", min_length=1)
    max_records: int = Field(default=100_000, gt=0)
    max_age_days: float = Field(default=30.0, gt=0)
    # Each side's text is kept up to this many bytes (UTF-8).
    max_text_bytes: int = Field(default=16 * 1024, ge=0)
    # How long a finished record may wait before it is written with others in one batch.
    batch_secs: float = Field(default=1.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    default_mode: Mode = Mode.TARGET
    allow_anthropic_only: bool = False
    server: ServerSettings = ServerSettings()
    target: TargetSettings = TargetSettings()
    passthrough: PassthroughSettings = PassthroughSettings()
    tracing: TracingSettings = TracingSettings()
    compare: CompareSettings = CompareSettings()


class ConfigError(Exception):
    """A configuration problem, worded for the person who must fix it."""


@dataclass(frozen=True)
class _Origins:
    """Where each configured key came from, to name it in error messages."""

    file: Path | None
    file_data: dict[str, Any]
    environ: Mapping[str, str]
    cli: dict[str, Any]

    def describe(self, loc: tuple[str | int, ...]) -> str:
        key = tuple(str(part) for part in loc)
        if _lookup(self.cli, key) is not None:
            return f"command line {CLI_FLAGS.get(key, '')}".rstrip()
        env_name = ENV_PREFIX + "__".join(key).upper()
        if any(name.upper() == env_name for name in self.environ):
            return f"environment variable {env_name}"
        if self.file is not None and _lookup(self.file_data, key) is not None:
            return f"file {self.file}"
        return "built-in default"


def _lookup(data: Mapping[str, Any], key: tuple[str, ...]) -> Any:
    node: Any = data
    for part in key:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from exc


def _settings_class(file_data: dict[str, Any]) -> type[Settings]:
    """Settings whose lowest-but-one source is the already-read TOML data."""

    class FileBackedSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return init_settings, env_settings, InitSettingsSource(settings_cls, file_data)

    return FileBackedSettings


def _describe_error(error: Any, origins: _Origins) -> str:
    loc: tuple[str | int, ...] = tuple(error["loc"])
    key = ".".join(str(part) for part in loc)
    where = origins.describe(loc)
    if error["type"] == "extra_forbidden":
        return f"unknown key {key!r} (from {where})"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    if isinstance(value, str):
        value = redact_url(value)  # a URL's user:password part is never echoed
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    return f"{key}{shown} (from {where}): {message}"


def load_settings(config: str | None = None, cli: dict[str, Any] | None = None) -> Settings:
    """Build the settings, or raise ConfigError with one line per problem.

    `config` is the --config value; without it CC_PROXY_CONFIG, then cc-proxy.toml in
    the working directory. Only the default file may be missing.
    """
    environ = os.environ
    cli = cli or {}
    named = config or environ.get(CONFIG_FILE_ENV)
    path = Path(named or DEFAULT_CONFIG_FILE)
    file: Path | None = path
    file_data: dict[str, Any] = {}
    if path.is_file():
        file_data = _read_toml(path)
    elif named:
        raise ConfigError(
            f"config file {path} does not exist (named by --config or {CONFIG_FILE_ENV})"
        )
    else:
        file = None

    for key, instead in LAUNCH_ONLY.items():
        if _lookup(file_data, key) is not None:
            raise ConfigError(
                f"{'.'.join(key)} may not be set in {path}: it is a secret or launch-time "
                f"decision; give it with {instead}"
            )

    origins = _Origins(file=file, file_data=file_data, environ=environ, cli=cli)
    settings_cls = _settings_class(file_data)
    try:
        return settings_cls(**cli)
    except ValidationError as exc:
        lines = [_describe_error(error, origins) for error in exc.errors()]
        raise ConfigError("\n".join(lines)) from None


def check_startup(settings: Settings) -> None:
    """Cross-key rules that decide whether the gateway may start at all."""
    if settings.default_mode is Mode.ANTHROPIC_ONLY and not settings.allow_anthropic_only:
        raise ConfigError(
            "default_mode = 'anthropic-only' needs the launch flag --allow-anthropic-only "
            "(it sends all traffic to the passthrough upstream)"
        )
    if settings.default_mode in (Mode.TARGET, Mode.COMPARE) and settings.target.url is None:
        raise ConfigError(
            f"mode {settings.default_mode.value!r} needs a target URL: give it with "
            "--target-url URL or the environment variable CC_TARGET__URL"
        )
