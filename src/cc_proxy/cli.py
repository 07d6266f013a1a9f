"""`cc-proxy`: the gateway (default), `cc-proxy demo`, `cc-proxy standin`, and
`cc-proxy compare-report`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

import orjson
import uvloop

from cc_proxy.config import (
    ConfigError,
    Settings,
    check_startup,
    load_settings,
    parse_listen_address,
)
from cc_proxy.demo import run_demo
from cc_proxy.records import RecordStore
from cc_proxy.report import parse_since, render_table, report_of
from cc_proxy.server import configure_logging, serve
from cc_proxy.standin import start_standin
from cc_proxy.workers import serve_workers

EPILOG = """\
commands:
  (none)    run the gateway
  demo      run the gateway on its embedded stand-in target and send it a streamed request;
            then serve on, with a minute of demo traffic for the dashboard at /ui
  standin   run only the stand-in target (a small Messages API server)
  compare-report
            how the target's answers compare with the passthrough's (compare mode's records)

Configuration: defaults < TOML file < CC_* environment (CC_SERVER__LISTEN_ADDRESS,
CC_TARGET__API_KEY, ...) < these flags. See cc-proxy.toml for every key.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cc-proxy",
        description="A gateway between Claude Code and self-hosted models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        help="TOML config file (default: cc-proxy.toml, or $CC_PROXY_CONFIG)",
    )
    parser.add_argument("--target-url", help="target endpoint (never stored in the file)")
    parser.add_argument("--model", help="model name forced on every target-bound request")
    parser.add_argument(
        "--allow-anthropic-only",
        action="store_true",
        default=None,
        help="permit the anthropic-only mode (at start or at runtime)",
    )
    commands = parser.add_subparsers(dest="command", metavar="")
    demo = commands.add_parser("demo", help="gateway + stand-in target + one streamed request")
    demo.add_argument("--listen", default="127.0.0.1:3080", help="gateway address (HOST:PORT)")
    demo.add_argument("--once", action="store_true", help="exit after the demo request")
    standin = commands.add_parser("standin", help="run the stand-in target alone")
    standin.add_argument("--listen", default="127.0.0.1:8000", help="HOST:PORT")
    standin.add_argument(
        "--event-delay", type=float, default=0.0, help="seconds between streamed events"
    )
    report = commands.add_parser(
        "compare-report", help="agreement, errors and speed of the compare records"
    )
    report.add_argument(
        "--since", help="only records since: a duration (30m, 24h, 7d) or an ISO 8601 time"
    )
    report.add_argument("--format", choices=("table", "json"), default="table")
    return parser


def _cli_values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    target = {k: v for k, v in (("url", args.target_url), ("model", args.model)) if v}
    if target:
        values["target"] = target
    if args.allow_anthropic_only:
        values["allow_anthropic_only"] = True
    return values


def _settings(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Settings:
    values = _cli_values(args)
    for section, keys in (extra or {}).items():
        values[section] = {**values.get(section, {}), **keys}
    settings = load_settings(args.config, values)
    check_startup(settings)
    return settings


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "standin":
            return _standin(args.listen, args.event_delay)
        if args.command == "demo":
            return _demo(args)
        if args.command == "compare-report":
            return _compare_report(args)
        settings = _settings(args)
        configure_logging(settings.tracing.log_level)
        return serve_workers(settings) if settings.server.workers > 1 else serve(settings)
    except ConfigError as error:
        for line in str(error).splitlines():
            print(f"cc-proxy: configuration error: {line}", file=sys.stderr)
        return 2


def _demo(args: argparse.Namespace) -> int:
    def settings_for(standin_url: str) -> Settings:
        # The demo shows the --model rewrite too, unless another model was asked for.
        target = {"url": standin_url, "model": args.model or "standin-1"}
        extra = {"target": target, "server": {"listen_address": args.listen}}
        settings = _settings(args, extra)
        configure_logging(settings.tracing.log_level)
        return settings

    # Ctrl-C ends the demo: uvicorn drains, then hands the signal on to the runner.
    with contextlib.suppress(KeyboardInterrupt):
        return uvloop.run(run_demo(settings_for, once=args.once))
    return 0


def _compare_report(args: argparse.Namespace) -> int:
    # The database path is all it needs: no target URL, unlike the gateway.
    settings = load_settings(args.config, _cli_values(args))
    try:
        since = None if args.since is None else parse_since(args.since)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    report = report_of(RecordStore(settings.compare.db_path), since)
    if args.format == "json":
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_table(report))
    return 0


def _standin(listen: str, event_delay: float) -> int:
    host, port = parse_listen_address(listen)

    async def run() -> None:
        runner, url = await start_standin(host, port, event_delay)
        print(f"stand-in target on {url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
