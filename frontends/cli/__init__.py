"""The admin CLI: click commands driving the core through the Registry (never through HTTP)."""

from userplane.frontends.cli import admin, users  # noqa: F401  (commands register on import)
from userplane.frontends.cli.app import cli, main

__all__ = ["cli", "main"]
