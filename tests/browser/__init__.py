"""The browser tests (``-m browser``): a package, so its conftest is ``browser.conftest``.

Without this file the folder's conftest would be imported as ``conftest`` and
replace ``tests/conftest.py`` under that name, which other tests import from.
"""
