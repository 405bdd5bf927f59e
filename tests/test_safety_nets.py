"""Safety nets for plugin authors, as an operator meets them: real processes, real entry points.

Each test installs throw-away plugins the way a distribution does (a
``*.dist-info`` with ``entry_points.txt`` on ``PYTHONPATH``), then runs the
``userplane`` console script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "userplane"
#: A safety limit for one CLI run, not a performance expectation.
TIMEOUT = 60

MISSPELT = '''
from userplane.plugin import hookimpl

@hookimpl
def userplane_user_creatd(user):
    """A typo: no such hook."""
'''

UNIMPORTABLE = """
import no_such_module_anywhere  # noqa: F401
"""

SECRETIVE = """
import logging

import attrs

from userplane.plugin import SettingsSection, hookimpl, section, setting


@attrs.frozen
class ProbeSettings:
    word: str | None = setting(default=None, secret=True)
    colour: str = "blue"


@hookimpl
def userplane_settings_sections():
    return SettingsSection("PROBE_", ProbeSettings)


@hookimpl
def userplane_register_services(registry):
    word = section(ProbeSettings, registry.settings, "PROBE_").word
    logging.getLogger("probe").warning("the word is %s, as told", word)
"""

SECOND_SQLITE = '''
from userplane.plugin import hookimpl


@hookimpl
def userplane_open_storage(settings):
    """Claims sqlite: URLs too, as the built-in plugin does."""
    from userplane.plugins.sqlite import SQLiteStorage, sqlite_path

    if settings.database_url.startswith("sqlite:"):
        return SQLiteStorage(settings.database_url, sqlite_path(settings.database_url))
    return None
'''


def install(site: Path, name: str, source: str) -> None:
    """Install module ``name`` as a distribution with one ``userplane`` entry point."""
    (site / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[userplane]\n{name} = {name}\n")


class Cli:
    def __init__(self, tmp_path: Path) -> None:
        self.site = tmp_path / "site"
        self.site.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("USERPLANE_")}
        self.env.update(
            PYTHONPATH=str(self.site),
            USERPLANE_DATABASE_URL=f"sqlite:///{tmp_path}/nets.db",
            USERPLANE_LOG_FORMAT="json",
            USERPLANE_ENV_FILE=str(tmp_path / "no-such.env"),
        )
        self.cwd = tmp_path

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), *args],
            env={**self.env, **env},
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def plugins(cli: Cli) -> dict[str, dict[str, object]]:
    proc = cli("plugins", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return {row["name"]: row for row in map(json.loads, proc.stdout.splitlines())}


@pytest.mark.e2e
def test_a_misspelt_hook_is_named_and_help_version_and_plugins_still_work(cli: Cli) -> None:
    install(cli.site, "misspelt_probe", MISSPELT)

    helped = cli("--help")
    assert helped.returncode == 0, helped.stderr
    assert "users" in helped.stdout
    assert cli("--version").returncode == 0
    listed = plugins(cli)["misspelt_probe"]
    assert listed["distribution"] == "misspelt_probe 0.1"
    assert "userplane_user_creatd" in str(listed["broken"])
    assert plugins(cli)["sqlite"]["broken"] is None  # the healthy ones stay

    refused = cli("users", "list")
    assert refused.returncode == 11, (refused.stdout, refused.stderr)
    assert refused.stdout == ""
    [line] = refused.stderr.splitlines()
    assert line.startswith("userplane: configuration: plugin 'misspelt_probe' is broken: ")
    assert "userplane_user_creatd is not a userplane hook" in line
    assert "Traceback" not in refused.stderr


@pytest.mark.e2e
def test_a_plugin_that_cannot_be_imported_is_listed_as_broken(cli: Cli) -> None:
    install(cli.site, "unimportable_probe", UNIMPORTABLE)
    listed = plugins(cli)["unimportable_probe"]
    assert "cannot be imported: ModuleNotFoundError" in str(listed["broken"])
    refused = cli("migrate")
    assert refused.returncode == 11
    assert "unimportable_probe" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1


@pytest.mark.e2e
def test_a_blocked_broken_plugin_is_not_loaded_at_all(cli: Cli) -> None:
    install(cli.site, "misspelt_probe", MISSPELT)
    env = {"USERPLANE_DISABLED_PLUGINS": "misspelt_probe"}
    proc = cli("migrate", **env)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.e2e
def test_two_plugins_serving_one_scheme_is_a_start_up_error_naming_both(cli: Cli) -> None:
    install(cli.site, "second_sqlite", SECOND_SQLITE)
    proc = cli("migrate")
    assert proc.returncode == 11, (proc.stdout, proc.stderr)
    [line] = proc.stderr.splitlines()
    assert "'second_sqlite'" in line
    assert "'sqlite'" in line
    assert "USERPLANE_DISABLED_PLUGINS" in line
    assert cli("migrate", USERPLANE_DISABLED_PLUGINS="second_sqlite").returncode == 0


@pytest.mark.e2e
def test_a_declared_secret_setting_is_masked_by_config_and_in_logs(cli: Cli) -> None:
    install(cli.site, "secretive_probe", SECRETIVE)
    secret = "correct-horse-battery"  # a name no heuristic would call secret: WORD
    env = {"USERPLANE_PROBE_WORD": secret}

    shown = cli("config", "--format", "json", **env)
    assert shown.returncode == 0, shown.stderr
    [values] = [json.loads(line) for line in shown.stdout.splitlines()]
    assert values["USERPLANE_PROBE_WORD"] == "********"
    assert values["USERPLANE_PROBE_COLOUR"] == "blue"  # declared settings are listed with defaults
    assert secret not in shown.stdout

    migrated = cli("migrate", **env)
    assert migrated.returncode == 0, migrated.stderr
    assert "the word is" in migrated.stderr  # the line was written…
    assert secret not in migrated.stderr  # …with the value masked
    assert "********" in migrated.stderr
