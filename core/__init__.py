"""userplane: a pluggable user-management service.

The public API for plugin authors and embedders is what ``__all__`` lists.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from userplane.errors import (
        ConfigurationError,
        Conflict,
        FieldError,
        Forbidden,
        InvalidInput,
        NotFound,
        PreconditionFailed,
        RateLimited,
        Unauthenticated,
        Unavailable,
        UserplaneError,
    )
    from userplane.plugin_manager import hookimpl
    from userplane.registry import Registry
    from userplane.settings import Settings
    from userplane.storage import MigrationState, Storage
    from userplane.users import UNSET, NewUser, User, UserChanges, UserFilter, UserPage, UserQuery

    __version__: str

__all__ = [
    "UNSET",
    "ConfigurationError",
    "Conflict",
    "FieldError",
    "Forbidden",
    "InvalidInput",
    "MigrationState",
    "NewUser",
    "NotFound",
    "PreconditionFailed",
    "RateLimited",
    "Registry",
    "Settings",
    "Storage",
    "Unauthenticated",
    "Unavailable",
    "User",
    "UserChanges",
    "UserFilter",
    "UserPage",
    "UserQuery",
    "UserplaneError",
    "__version__",
    "hookimpl",
]

# The public names are imported on first use (PEP 562), not with the package:
# importing any ``userplane.x`` (a plugin, the CLI for ``--help``) must not pay
# for the registry, storage and users modules and what they pull in. They are
# a subset of ``userplane.plugin``'s, which knows where each lives.


def _version() -> str:
    # importlib.metadata looks the distribution up on sys.path: only when asked.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("userplane")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


if not TYPE_CHECKING:  # mypy sees the imports above, and no catch-all attribute

    def __getattr__(name: str) -> object:
        if name == "__version__":
            value: object = _version()
        elif name in __all__:
            value = getattr(importlib.import_module("userplane.plugin"), name)
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        globals()[name] = value  # once: later lookups do not come here
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
