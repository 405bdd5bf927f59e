"""``userplane --help`` imports only what listing the commands needs.

Every CLI run pays for what it imports before it does anything, so the command
group, the commands and the plugins' ``userplane_cli_commands`` hooks must
leave the heavy imports to the commands that use them. This is checked by the
modules a fresh interpreter has imported after ``--help``, never by timing it:
performance is measured by benchmarks, not asserted by tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

#: Packages (and their submodules) that --help must not import.
HEAVY = (
    "cryptography",
    "email_validator",
    "falcon",
    "gunicorn",
    "jwt",
    "opentelemetry",
    "psycopg",
    "psycopg_pool",
    "rich",
    "structlog",
    "userplane.registry",
    "userplane.storage",
    "userplane.users",
)

#: The built-in plugins' modules: every process loads them, --help too.
PLUGINS = {
    "userplane.plugins.api_keys",
    "userplane.plugins.bearer_jwt",
    "userplane.plugins.logging",
    "userplane.plugins.postgresql",
    "userplane.plugins.sqlite",
    "userplane.plugins.telemetry",
}

# What the console script does, then the list of imported modules into a file
# (stdout is the help).
PROBE = """
import json, sys
out = sys.argv[1]
sys.argv = ["userplane", "--help"]
from userplane.frontends.cli import main
try:
    main()
except SystemExit as exc:
    if exc.code:
        raise
with open(out, "w", encoding="utf-8") as f:
    json.dump(sorted(sys.modules), f)
"""

#: A safety limit for one CLI run, not a performance expectation.
TIMEOUT = 60


def imported_by_help(tmp_path: Path) -> tuple[str, set[str]]:
    """The help text and the modules imported, in a fresh interpreter with no stray settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("USERPLANE_")}
    env.update(USERPLANE_ENV_FILE=str(tmp_path / "no-such.env"))
    out = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(out)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr == ""
    return proc.stdout, set(json.loads(out.read_text(encoding="utf-8")))


def test_help_imports_nothing_heavy(tmp_path: Path) -> None:
    help_text, modules = imported_by_help(tmp_path)
    # The plugins were loaded and added their commands: their imports were paid for.
    assert "  keys " in help_text
    assert modules >= PLUGINS
    heavy = sorted(m for m in modules if m in HEAVY or m.startswith(tuple(f"{h}." for h in HEAVY)))
    assert heavy == []
