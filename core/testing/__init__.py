"""Public test helpers: the contract suites for storage and auth plugins, and strategies.

A plugin's author proves their plugin with the very suites the built-in
plugins pass::

    import pytest
    from userplane.testing import StorageContract

    class TestMyStorage(StorageContract):
        @pytest.fixture
        def storage(self):
            store = MyStorage(...)      # an empty database
            store.migrate()
            yield store
            store.close()

Needs pytest and hypothesis: ``pip install 'userplane[testing]'``. The HTTP
test client for plugin authors is ``userplane.frontends.http.testing``.
"""

from __future__ import annotations

from userplane.testing.auth import AuthPluginContract, StatementCounter, ValidCredentials
from userplane.testing.filtering import FilterContract
from userplane.testing.groups import GroupStorageContract
from userplane.testing.sealed import SealedStorageContract
from userplane.testing.storage import StorageContract, insert, make_user, run_concurrently
from userplane.testing.strategies import emails, new_users
from userplane.testing.users_external import ExternalIdContract

__all__ = [
    "AuthPluginContract",
    "ExternalIdContract",
    "FilterContract",
    "GroupStorageContract",
    "SealedStorageContract",
    "StatementCounter",
    "StorageContract",
    "ValidCredentials",
    "emails",
    "insert",
    "make_user",
    "new_users",
    "run_concurrently",
]
