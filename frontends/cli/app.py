"""The ``userplane`` command group, its context and its error handling."""

from __future__ import annotations

import contextlib
import getpass
import os
import sys
from typing import TYPE_CHECKING, Any

import attrs
import click
import pluggy

import userplane
from userplane.errors import UserplaneError
from userplane.frontends.cli.errors import (
    CANCELLED,
    INTERNAL,
    USAGE,
    error_object,
    exit_code,
    internal_error,
    json_line,
    mask_line,
    message,
)
from userplane.frontends.cli.output import FORMAT_META
from userplane.plugin_manager import make_plugin_manager
from userplane.settings import (
    Settings,
    SettingsSection,
    disabled_plugins_from_env,
    mask_text,
    secret_values,
)

if TYPE_CHECKING:
    from userplane.registry import Registry


class State:
    """What commands share: settings and a registry, both made on first use."""

    def __init__(self, env_file: str | None) -> None:
        self.env_file = env_file
        self.overrides: dict[str, Any] = {}
        self.plugin_manager: pluggy.PluginManager | None = None
        self._settings: Settings | None = None
        self._registry: Registry | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = attrs.evolve(
                Settings.from_env(env_file=self.env_file), **self.overrides
            )
        return self._settings

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            # Imported here: --help must not pay for the registry, storage and users modules.
            from userplane.registry import Registry

            self._registry = Registry(self.settings, plugin_manager=self.plugin_manager)
        return self._registry

    def secrets(self) -> frozenset[str]:
        """The secrets this command's settings hold (``userplane.settings.secret_values``).

        None while the settings are unread or unreadable: a settings error quotes
        only values that failed to parse as numbers or choices, and URLs are
        masked in any message anyway.
        """
        settings = self._settings
        if settings is None:
            return frozenset()
        pm = self.plugin_manager or (self._registry.pm if self._registry is not None else None)
        sections: list[SettingsSection] = []
        if pm is not None:
            from userplane.hooks import Hooks

            # A plugin that breaks here has its own error reported: masking goes on without it.
            with contextlib.suppress(Exception):
                sections = Hooks(pm).settings_sections()
        return secret_values(settings, sections)

    def mask(self, text: str) -> str:
        """``text`` with URLs and this command's secrets masked: for any message shown."""
        return mask_text(text, self.secrets())

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
            self._registry = None


class MaskedClickError(click.ClickException):
    """One of click's own errors (a bad argument, an unknown option), masked, in one line.

    click quotes what was typed (``'up_…' is not a valid UUID``), which may be
    a credential pasted in the wrong place: it is masked like any other error,
    and shown without the usage lines, with the same exit code.
    """

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.message}", file=file, err=file is None)


class MaskedUsageError(MaskedClickError):
    """A usage error (click's ``UsageError``, ``BadParameter``…), masked: still exit code 2."""

    exit_code = 2


def _masked_click_error(exc: click.ClickException, ctx: click.Context) -> MaskedClickError:
    text = mask_line(exc.format_message(), _secrets(ctx))
    if not isinstance(exc, click.UsageError):
        return MaskedClickError(text)
    where = exc.ctx
    if where is not None and where.command.get_help_option(where) is not None:
        option = max(where.command.get_help_option_names(where), key=len)
        text = f"{text} (try '{where.command_path} {option}' for help)"
    return MaskedUsageError(text)


class UserplaneGroup(click.Group):
    """A group that turns domain errors into one line on stderr and an exit code."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        # The group's own options are parsed here, before ``invoke``.
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.ClickException as exc:
            raise _masked_click_error(exc, click.Context(self)) from None

    def invoke(self, ctx: click.Context) -> Any:
        # Every prompt, a plugin command's click.confirm too, is refused at once
        # when no one can answer it (see ``_guard_prompt``).
        prompt, hidden = click.termui.visible_prompt_func, click.termui.hidden_prompt_func
        click.termui.visible_prompt_func = _guard_prompt(prompt)
        click.termui.hidden_prompt_func = _guard_prompt(hidden)
        try:
            return super().invoke(ctx)
        except UserplaneError as exc:
            if _wants_json(ctx):
                click.echo(json_line(error_object(exc, _secrets(ctx))), err=True)
            else:
                click.echo(message(exc, _secrets(ctx)), err=True)
            ctx.exit(exit_code(exc))
        except ConfirmationError as exc:
            _fail(ctx, exc.kind, exc.message, exc.exit_code)
        except click.Abort:
            # A plugin's click.confirm(abort=True) answered no, or Ctrl-C / Ctrl-D at a prompt.
            if not stdin_is_terminal():  # a prompt the guard did not see
                refused = ConfirmationRefused("go on")
                _fail(ctx, refused.kind, refused.message, refused.exit_code)
            cancelled = Cancelled()
            _fail(ctx, cancelled.kind, cancelled.message, cancelled.exit_code)
        except (click.exceptions.NoArgsIsHelpError, MaskedClickError):
            raise  # the help a group without a command shows; one already masked
        except click.ClickException as exc:
            raise _masked_click_error(exc, ctx) from None
        except click.exceptions.Exit:
            raise
        except BrokenPipeError:
            # The reader went away (`| head`): it has what it wanted. stdout goes to
            # /dev/null, so that the interpreter's last flush does not fail again.
            with contextlib.suppress(OSError, ValueError):  # a stdout with no descriptor
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except Exception as exc:  # a bug: say so in one line, never a traceback
            # Masked: a library's message may quote a setting, or the piece of a
            # password its URL parser cut off ("Port could not be cast … 'pa'").
            if _wants_json(ctx):
                detail = mask_line(f"{type(exc).__name__}: {exc}", _secrets(ctx))
                _fail(ctx, "internal", detail, INTERNAL)
            click.echo(internal_error(exc, _secrets(ctx)), err=True)
            ctx.exit(INTERNAL)
        finally:
            click.termui.visible_prompt_func = prompt
            click.termui.hidden_prompt_func = hidden


def _wants_json(ctx: click.Context) -> bool:
    """Whether the command was given ``--format json`` (``format_option`` notes it)."""
    return ctx.meta.get(FORMAT_META) == "json"


def _fail(ctx: click.Context, kind: str, detail: str, code: int) -> None:
    """Print a CLI error (``userplane: detail``, or JSON) on stderr and exit with ``code``."""
    if _wants_json(ctx):
        click.echo(json_line({"error": kind, "detail": detail, "exit_code": code}), err=True)
    else:
        click.echo(f"userplane: {detail}", err=True)
    ctx.exit(code)


def stdin_is_terminal() -> bool:
    """Whether someone can answer a prompt: stdin is open and is a terminal."""
    stream = sys.stdin
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # closed, or an odd replacement
        return False


def _action() -> str:
    """The running command's name (``purge``), for messages about it."""
    ctx = click.get_current_context(silent=True)
    return (ctx.info_name if ctx is not None else None) or "go on"


class ConfirmationError(click.ClickException):
    """A confirmation that was refused or answered no: one line, an exit code of its own."""

    kind = "confirmation"

    def show(self, file: Any = None) -> None:
        click.echo(f"userplane: {self.message}", file=file, err=file is None)


class ConfirmationRefused(ConfirmationError):
    """A confirmation no one can answer: stdin is not a terminal and ``--yes`` was not given.

    A usage error (exit code 2): the command does nothing, at once, rather
    than read an answer from a pipe or a closed stdin.
    """

    kind = "confirmation-refused"
    exit_code = USAGE

    def __init__(self, action: str) -> None:
        super().__init__(
            f"refusing to {action} without confirmation: stdin is not a terminal; pass --yes"
        )


class Cancelled(ConfirmationError):
    """A confirmation answered no (or interrupted): nothing was changed (exit code 14)."""

    kind = "cancelled"
    exit_code = CANCELLED

    def __init__(self) -> None:
        super().__init__("cancelled: nothing was changed")


def _guard_prompt(prompt: Any) -> Any:
    """``prompt`` (click's reader of answers), refusing at once when stdin is not a terminal."""

    def guarded(text: str) -> str:
        if not stdin_is_terminal():
            raise ConfirmationRefused(_action())
        return str(prompt(text))

    return guarded


def confirm(question: str, *, yes: bool = False) -> None:
    """Ask ``question`` on stderr unless ``yes``; ``Cancelled`` unless answered yes.

    ``ConfirmationRefused`` at once when stdin is not a terminal: a script
    must say ``--yes``, and a closed or empty stdin is never taken for an
    answer.
    """
    if yes:
        return
    if not stdin_is_terminal():
        raise ConfirmationRefused(_action())
    try:
        answer = click.confirm(question, default=False, err=True)
    except click.Abort:  # Ctrl-C or end of input at the prompt: end its line first
        click.echo(err=True)
        answer = False
    if not answer:
        raise Cancelled()


def _refuse_without_a_terminal(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if not value and not ctx.resilient_parsing and not stdin_is_terminal():
        raise ConfirmationRefused(ctx.info_name or "go on")
    return value


#: ``--yes``: do not ask. Without it, a command run with no terminal on stdin is
#: refused while its options are read, before it opens anything.
yes_option = click.option(
    "--yes",
    is_flag=True,
    callback=_refuse_without_a_terminal,
    help="Do not ask for confirmation (required when stdin is not a terminal).",
)


def _secrets(ctx: click.Context) -> frozenset[str]:
    state = ctx.obj if isinstance(ctx.obj, State) else None
    return state.secrets() if state is not None else frozenset()


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    # Not click.version_option(userplane.__version__): that would look the
    # distribution up on every run, --help included, not only for --version.
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"userplane, version {userplane.__version__}", color=ctx.color)
    ctx.exit()


@click.group(cls=UserplaneGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the version and exit.",
)
@click.option(
    "--env-file",
    # Named, it must exist: a mistyped name must not leave every setting at its default.
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Read settings from this file (which must exist) as well as USERPLANE_* "
    "variables [default: USERPLANE_ENV_FILE, or .env if there is one].",
)
@click.pass_context
def cli(ctx: click.Context, env_file: str | None) -> None:
    """userplane: a pluggable user-management service.

    Every command drives the same core as the HTTP API, configured by
    USERPLANE_* variables (see `userplane config`).
    """
    state = State(env_file)
    # main() passes the plugin manager it built for plugin commands: reuse it.
    if isinstance(ctx.obj, pluggy.PluginManager):
        state.plugin_manager = ctx.obj
    ctx.obj = state
    ctx.call_on_close(state.close)


pass_state = click.make_pass_decorator(State)


class OperationCommand(click.Command):
    """A command that runs as one operation, ``"cli users create"``, of the registry.

    It goes through the ``userplane_operation`` hook like a service operation,
    so a tracing plugin gives each command a root span with the service
    operations it ran beneath it. It acts as the local administrator
    (``local:<login>``), the principal the user-event hooks receive.
    """

    def invoke(self, ctx: click.Context) -> Any:
        state = ctx.find_object(State)
        if state is None:  # invoked outside the userplane group (embedding)
            return super().invoke(ctx)
        import uuid

        from userplane.auth import acting_as, local_principal
        from userplane.changes import request_context

        name = "cli " + " ".join(ctx.command_path.split()[1:])
        registry = state.registry
        # Records of what the command changed name the command's run, as a request's do.
        with acting_as(local_principal(_login())), request_context(request_id=uuid.uuid4().hex):
            return registry.hooks.operation(
                name, lambda: super(OperationCommand, self).invoke(ctx), registry
            )


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers) and no LOGNAME
        return str(os.getuid())


class OperationGroup(click.Group):
    """A group whose commands are ``OperationCommand``s."""

    command_class = OperationCommand


def _env_file_in(args: list[str]) -> str | None:
    # Commands are added before click parses anything, so find --env-file by hand.
    for i, arg in enumerate(args):
        if arg == "--env-file" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--env-file="):
            return arg.partition("=")[2]
        if not arg.startswith("-"):
            break  # the subcommand: group options end here
    return None


def add_plugin_commands(group: click.Group, env_file: str | None = None) -> pluggy.PluginManager:
    """Let plugins add commands; the plugin manager they were added from.

    Built from ``USERPLANE_DISABLED_PLUGINS`` alone, read leniently: a bad
    value in another setting must not make plugins' command groups vanish
    ("No such command 'keys'"); the command reports it when it reads the
    settings. A plugin whose commands fail to load is recorded as broken
    (``userplane plugins`` shows why) rather than taking the whole CLI down.
    """
    from userplane.hooks import Hooks

    pm = make_plugin_manager(disabled_plugins_from_env(env_file=env_file))
    pm.broken.extend(Hooks(pm).cli_commands(group))
    return pm


def main() -> None:
    """Console-script entry point."""
    pm = add_plugin_commands(cli, _env_file_in(sys.argv[1:]))
    cli.main(prog_name="userplane", obj=pm)
