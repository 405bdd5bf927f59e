"""The README's promises about commands stay true."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in ci if line.startswith("python3 -m venv"))
    assert f"\n{command}\n" in readme


def test_readme_names_every_cli_exit_code() -> None:
    from userplane.frontends.cli.errors import EXIT_CODES

    readme = (ROOT / "README.md").read_text()
    for code in EXIT_CODES.values():
        assert f"| {code} |" in readme or f"/ {code} |" in readme or f"| {code} /" in readme
