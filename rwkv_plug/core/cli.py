"""The ``rwkv-plug`` command line.

The core defines the group and the listing commands. Everything else
(``fit``, ``preload``, ``init-model`` ...) is attached by plugins through
``register_commands``, the built-ins included. Any :class:`RwkvPlugError`
becomes one line on stderr and a non-zero exit; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import json
import sys
import traceback

import click

from rwkv_plug import __version__
from rwkv_plug.core import plugins as plugin_api
from rwkv_plug.core.errors import Interrupted, RwkvPlugError
from rwkv_plug.core.interfaces import describe, kernel_availability

_state = {"debug": False}


def _plugins(ctx: click.Context | None) -> plugin_api.Plugins:
    loaded = plugin_api.configured()
    if loaded is not None:
        return loaded
    from rwkv_plug.core.env import settings

    s = settings()
    params = ctx.find_root().params if ctx is not None else {}
    only = params.get("plugins") or s.plugins
    strict = bool(params.get("strict_plugins")) or s.strict_plugins
    return plugin_api.configure(only, strict)


class PluginGroup(click.Group):
    """A click group that asks plugins for their commands on first use."""

    _commands_added = False

    def _ensure(self, ctx: click.Context) -> None:
        if not self._commands_added:
            self._commands_added = True
            _plugins(ctx).add_commands(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._ensure(ctx)
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str):
        self._ensure(ctx)
        command = super().get_command(ctx, cmd_name)
        if command is not None and not any(p.name == "debug" for p in command.params):
            # `rwkv-plug fit cfg.yaml --debug` works as well as `rwkv-plug --debug fit cfg.yaml`
            command.params.append(click.Option(["--debug"], is_flag=True, hidden=True, expose_value=False,
                                               callback=_debug_flag))
        return command


def _debug_flag(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        _state["debug"] = True


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rwkv-plug")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors (also accepted after the command).")
@click.option(
    "--plugins",
    metavar="all|none|NAME[,NAME]",
    default=None,
    help="Third-party plugins to load (default: RWKV_PLUG_PLUGINS or all).",
)
@click.option(
    "--strict-plugins",
    is_flag=True,
    help="Fail when a third-party plugin is broken or a --plugins name is not installed "
    "(also RWKV_PLUG_STRICT_PLUGINS=1).",
)
def cli(debug: bool, plugins: str | None, strict_plugins: bool) -> None:
    """Train RWKV language models on data of any length."""
    _state["debug"] = debug


def _listing(kind: str, extra=None) -> None:
    reg = plugin_api.current().registry(kind)
    rows = []
    for entry in reg:
        note = f" (overrides {', '.join(entry.overrides)})" if entry.overrides else ""
        cells = [entry.name, entry.plugin + note]
        if extra:
            cells.append(extra(entry.cls))
        cells.append(describe(entry.cls))
        rows.append(cells)
    if not rows:
        click.echo(f"no {kind} plugins are registered")
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


@cli.command("list-strategies", short_help="List dataset strategies.")
@click.pass_context
def list_strategies(ctx: click.Context) -> None:
    """List dataset strategies: name, providing plugin, description."""
    _plugins(ctx)
    _listing("strategy")


@cli.command("list-tokenizers", short_help="List tokenizers.")
@click.pass_context
def list_tokenizers(ctx: click.Context) -> None:
    """List tokenizers: name, providing plugin, description."""
    _plugins(ctx)
    _listing("tokenizer")


@cli.command("list-models", short_help="List model architectures.")
@click.pass_context
def list_models(ctx: click.Context) -> None:
    """List model architectures: name, providing plugin, description."""
    _plugins(ctx)
    _listing("model")


def _availability(cls) -> str:
    ok, reason = kernel_availability(cls)
    return "available" if ok else f"unavailable ({reason})"


@cli.command("list-kernels")
@click.pass_context
def list_kernels(ctx: click.Context) -> None:
    """List WKV kernels with their availability on this machine."""
    _plugins(ctx)
    _listing("kernel", extra=_availability)


@cli.command("plugins", short_help="Installed plugins as JSON, with any errors.")
@click.pass_context
def plugins_cmd(ctx: click.Context) -> None:
    """Print the installed plugins as JSON, broken ones with their error."""
    p = _plugins(ctx)
    p.registries()  # run the register hooks so registration errors show up
    out = [
        {
            "name": i.name,
            "distribution": i.distribution,
            "version": i.version,
            "builtin": i.builtin,
            "error": i.error,
        }
        for i in p.info.values()
    ]
    click.echo(json.dumps(out, indent=2))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI, turning user errors into one line."""
    args = sys.argv[1:] if argv is None else argv
    _state["debug"] = "--debug" in args
    try:
        code = cli.main(args=args, prog_name="rwkv-plug", standalone_mode=False)
        if isinstance(code, int) and code:  # a command's ctx.exit(n): click returns n in this mode
            sys.exit(code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        click.echo("interrupted", err=True)
        sys.exit(130)
    except RwkvPlugError as exc:
        if _state["debug"]:
            traceback.print_exc()
        # a stop the user asked for is no error: its line says what was kept
        click.echo(str(exc) if isinstance(exc, Interrupted) else f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if _state["debug"]:
            traceback.print_exc()
        elif _interrupted(exc):
            # e.g. datasets' worker pool turns a Ctrl-C in its workers into a TimeoutError
            click.echo("interrupted", err=True)
            sys.exit(130)
        else:
            click.echo(
                f"error: {type(exc).__name__}: {exc} (this looks like a bug; rerun with --debug "
                "for the traceback)",
                err=True,
            )
        sys.exit(1)


def _interrupted(exc: BaseException) -> bool:
    """Whether a Ctrl-C (KeyboardInterrupt) is in ``exc``'s cause/context chain."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False
