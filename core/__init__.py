"""userplane: a pluggable user-management service.

The public API for plugin authors and embedders is what ``__all__`` lists.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

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

try:
    __version__ = version("userplane")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0+unknown"

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
