"""The public plugin API: one surface, complete, and the only one built-in plugins use.

Built-in plugins are written exactly as third parties write theirs: they may
import only the public modules, and only the names those list in ``__all__``.
Every type that appears in a hook or ``Storage`` signature is exported, so a
plugin author never needs an internal module to annotate an implementation.
"""

from __future__ import annotations

import ast
import collections.abc
import datetime
import importlib
import inspect
import pathlib
import typing
import uuid
from pathlib import Path

import pytest

import userplane
from userplane import hookspecs
from userplane.storage import InstrumentableStorage, PooledStorage, Storage

ROOT = Path(__file__).resolve().parent.parent
#: The modules a plugin may import, each with the names it offers.
PUBLIC = (
    "userplane",
    "userplane.plugin",
    "userplane.sql",
    "userplane.testing",
    "userplane.frontends.cli",
    "userplane.frontends.http",
    "userplane.frontends.http.testing",
)


def _exports(module: str) -> set[str]:
    return set(importlib.import_module(module).__all__)


def _plugin_files() -> list[Path]:
    files = sorted((ROOT / "plugins").rglob("*.py"))
    files += sorted(
        p
        for p in (ROOT / "examples").rglob("*.py")
        # Not their tests, nor what pip builds beside an example installed from its folder.
        if not {"tests", "build"} & set(p.relative_to(ROOT).parts)
    )
    return [p for p in files if p.name != "__init__.py" or p.parent != ROOT / "plugins"]


def _own_package(path: Path) -> str | None:
    """The import name of the plugin package ``path`` belongs to (imports of it are its own)."""
    rel = path.relative_to(ROOT)
    if rel.parts[0] == "plugins" and len(rel.parts) > 2:
        return f"userplane.plugins.{rel.parts[1]}"
    if rel.parts[0] == "plugins":
        return f"userplane.plugins.{path.stem}"
    if rel.parts[0] == "examples":
        inner = path.relative_to(ROOT / rel.parts[0] / rel.parts[1]).parts
        return inner[1] if inner[0] == "src" else inner[0]  # flat or src layout
    return None


def _violations(path: Path) -> list[str]:
    own = _own_package(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            module, names = node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            module, names = "", [a.name for a in node.names]
        else:
            continue
        targets = [(module, n) for n in names] if module else [(n, None) for n in names]
        for target, name in targets:
            if not target.startswith("userplane"):
                continue
            if own is not None and (target == own or target.startswith(own + ".")):
                continue
            if target not in PUBLIC:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target}")
            elif (
                name is not None
                and name not in _exports(target)
                and f"{target}.{name}" not in PUBLIC  # ``from userplane import plugin``
            ):
                found.append(
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {target}.{name}, "
                    "which is not in its __all__"
                )
    return found


def test_plugins_and_examples_import_only_the_public_api() -> None:
    files = _plugin_files()
    # The scan sees the built-ins and the examples.
    assert len([f for f in files if f.is_relative_to(ROOT / "plugins")]) >= 12, files
    violations = [v for path in files for v in _violations(path)]
    assert violations == []


def test_the_scan_catches_a_private_import(tmp_path: Path) -> None:
    # The check above must not pass vacuously: a back door is found.
    probe = ROOT / "plugins" / "_probe_private_import.py"
    probe.write_text("from userplane.registry import Registry\nfrom userplane.plugin import Nope\n")
    try:
        assert _violations(probe) == [
            "plugins/_probe_private_import.py:1 imports userplane.registry",
            "plugins/_probe_private_import.py:2 imports userplane.plugin.Nope, "
            "which is not in its __all__",
        ]
    finally:
        probe.unlink()


@pytest.mark.parametrize("module", PUBLIC)
def test_every_exported_name_resolves(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert missing == []
    assert mod.__doc__, f"{module} has no docstring"


def _namespace() -> dict[str, object]:
    """What annotations in hook and protocol signatures may use: the plugin API and the stdlib."""
    import userplane.plugin

    names: dict[str, object] = {
        name: getattr(userplane.plugin, name) for name in userplane.plugin.__all__
    }
    for module in (typing, collections.abc, datetime, pathlib):
        names.update({k: v for k, v in vars(module).items() if not k.startswith("_")})
    names["uuid"] = uuid
    return names


def _signatures() -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = [
        (name, fn) for name, fn in vars(hookspecs).items() if name.startswith("userplane_")
    ]
    for protocol in (Storage, PooledStorage, InstrumentableStorage):
        found += [
            (f"{protocol.__name__}.{name}", fn)
            for name, fn in vars(protocol).items()
            if inspect.isfunction(fn) and not name.startswith("_")
        ]
    return found


@pytest.mark.parametrize(("name", "function"), _signatures(), ids=[n for n, _ in _signatures()])
def test_every_type_in_a_hook_or_storage_signature_is_exported(
    name: str, function: typing.Callable[..., object]
) -> None:
    # Evaluating the annotations with only the public names fails on any other.
    hints = typing.get_type_hints(function, globalns=_namespace(), localns={})
    assert "return" in hints, f"{name} has no return annotation"


def test_storage_attributes_are_exported_types_too() -> None:
    properties = {n: p for n, p in vars(Storage).items() if isinstance(p, property)}
    assert {"name", "embedded", "schema_version"} <= set(properties)
    for prop in properties.values():
        assert prop.fget is not None
        typing.get_type_hints(prop.fget, globalns=_namespace(), localns={})


def test_the_root_package_stays_a_small_embedding_api() -> None:
    # The root is for embedders (Registry, Settings, the domain); plugins use userplane.plugin.
    assert {"Registry", "Settings", "User", "hookimpl"} <= set(userplane.__all__)
    assert set(userplane.__all__) - {"__version__"} <= _exports("userplane.plugin")


def test_the_testing_extra_needs_no_dev_tools() -> None:
    """``userplane[testing]`` is pytest and hypothesis: the suites import nothing else."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    assert sorted(req.split(">")[0] for req in extras["testing"]) == ["hypothesis", "pytest"]
    third_party = set()
    for path in (ROOT / "core" / "testing").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                third_party |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                third_party.add(node.module.split(".")[0])
    import sys

    third_party -= set(sys.stdlib_module_names) | {"userplane", "__future__"}
    # attrs is a dependency of userplane itself.
    assert third_party <= {"pytest", "hypothesis", "attrs"}, third_party
