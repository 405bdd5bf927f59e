"""The documentation cannot drift from the code (as datasette checks its own hooks).

- every hook in ``userplane.hookspecs`` has a ``### <hook>`` entry in
  ``docs/hooks.md`` whose kind, arguments and example match the spec, no entry
  names a hook that does not exist, and every hook has a ``test_hook_<name>``;
- every public name of the plugin API and its kits appears in ``docs/plugins.md``;
- ``docs/schema.md`` lists every column of ``SCHEMA``, every named query and
  the schema version, and nothing else;
- ``docs/architecture.md`` exists and the README links the docs;
- relative links in the docs lead to files that exist.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import tomllib
import types
from pathlib import Path

import pytest

from userplane import hookspecs
from userplane.plugin_manager import make_plugin_manager
from userplane.sql import NAMED_QUERIES, SCHEMA, SCHEMA_VERSION

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TESTS = ROOT / "tests"

#: The public plugin API and its kits: every name in their ``__all__`` is documented.
PUBLIC_MODULES = (
    "userplane.plugin",
    "userplane.sql",
    "userplane.testing",
    "userplane.frontends.cli",
    "userplane.frontends.http",
    "userplane.frontends.http.testing",
)


def _public_names(module: types.ModuleType) -> list[str]:
    """``__all__``, or else the public names the module itself defines."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and getattr(value, "__module__", None) == module.__name__
        and (inspect.isclass(value) or inspect.isfunction(value))
    )


def _read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _specs() -> dict[str, types.FunctionType]:
    return {
        name: fn
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("userplane_") and hasattr(fn, "userplane_spec")
    }


def _hook_sections() -> dict[str, str]:
    """``docs/hooks.md`` split at its ``### <hook>`` headings: name -> text up to the next."""
    text = _read("hooks.md")
    parts = re.split(r"^#{2,3} (.+?)\s*$", text, flags=re.MULTILINE)
    sections: dict[str, str] = {}
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        name = heading.strip("` ")
        if heading.startswith("#") or not name.startswith("userplane_"):
            continue
        assert name not in sections, f"docs/hooks.md documents {name} twice"
        sections[name] = body
    return sections


def _level3_headings() -> list[str]:
    return [
        h.strip("` ") for h in re.findall(r"^### (.+?)\s*$", _read("hooks.md"), flags=re.MULTILINE)
    ]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


# -- hooks ------------------------------------------------------------------------------------


def test_every_hook_is_documented_and_nothing_else() -> None:
    documented = _level3_headings()
    assert sorted(documented) == sorted(set(documented)), "a hook is documented twice"
    missing = sorted(set(_specs()) - set(documented))
    unknown = sorted(set(documented) - set(_specs()))
    assert missing == [], f"hooks without a `### <hook>` entry in docs/hooks.md: {missing}"
    assert unknown == [], f"docs/hooks.md documents hooks that do not exist: {unknown}"


def _test_names() -> set[str]:
    names: set[str] = set()
    for path in TESTS.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names |= {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
    return names


def test_every_hook_has_a_test() -> None:
    tests = _test_names()
    untested = sorted(
        name for name in _specs() if f"test_hook_{name.removeprefix('userplane_')}" not in tests
    )
    assert untested == [], f"hooks without a test_hook_<name> test under tests/: {untested}"


@pytest.mark.parametrize("name", sorted(_specs()))
def test_a_hook_entry_says_how_it_is_called(name: str) -> None:
    section = _hook_sections()[name]
    for field in ("Called", "Arguments", "Returns", "Kind", "Exceptions", "Order"):
        assert f"- **{field}**:" in section, f"{name}: no **{field}** line in docs/hooks.md"
    kind = re.search(r"- \*\*Kind\*\*:(.*?)(?=\n- \*\*|\n\n)", section, flags=re.DOTALL)
    assert kind is not None
    opts = _specs()[name].userplane_spec  # type: ignore[attr-defined]
    for flag in ("firstresult", "historic"):
        said = flag in kind.group(1)
        assert said == bool(opts.get(flag)), f"{name}: the **Kind** line is wrong about {flag}"
    arguments = re.search(r"- \*\*Arguments\*\*:(.*?)(?=\n- \*\*)", section, flags=re.DOTALL)
    assert arguments is not None
    argnames = inspect.signature(_specs()[name]).parameters
    for arg in argnames:
        assert f"`{arg}`" in arguments.group(1), f"{name}: argument {arg} is not documented"
    if not argnames:
        assert "none" in arguments.group(1), f"{name}: say that it takes no arguments"


@pytest.mark.parametrize("name", sorted(_specs()))
def test_a_hook_example_is_a_valid_plugin(name: str) -> None:
    """Each entry's example registers as a plugin: the right hook, arguments that exist."""
    blocks = _python_blocks(_hook_sections()[name])
    assert blocks, f"{name}: no example in docs/hooks.md"
    for source in blocks:
        module = types.ModuleType(f"docs_example_{name}")
        module.__file__ = str(DOCS / "hooks.md")  # a plugin module has one
        exec(compile(source, f"docs/hooks.md ({name})", "exec"), module.__dict__)
        assert callable(getattr(module, name, None)), f"{name}: the example does not implement it"
        pm = make_plugin_manager(extra_plugins=[module])
        assert pm.broken == [], f"{name}: the example is a broken plugin: {pm.broken}"
        assert pm.is_registered(module)


# -- the plugin guide ---------------------------------------------------------------------


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_is_in_the_plugin_guide(module_name: str) -> None:
    guide = _read("plugins.md")
    module = importlib.import_module(module_name)
    missing = [
        name
        for name in _public_names(module)
        if not re.search(rf"`(?:[\w.]+\.)?{re.escape(name)}(?:\(\))?`", guide)
    ]
    assert missing == [], f"{module_name} names not in docs/plugins.md: {missing}"


def test_python_and_toml_in_the_guides_parse() -> None:
    for name in ("plugins.md", "architecture.md", "schema.md"):
        text = _read(name)
        for i, source in enumerate(_python_blocks(text)):
            compile(source, f"docs/{name} (python block {i + 1})", "exec")
        for block in re.findall(r"^```toml\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
            tomllib.loads(block)


# -- the schema -----------------------------------------------------------------------------


def _schema_sections() -> dict[str, str]:
    """``docs/schema.md`` split at ``### `<table>` `` headings."""
    parts = re.split(r"^### `(\w+)`.*$", _read("schema.md"), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _rows(text: str) -> dict[str, str]:
    """Table rows whose first cell is a code name: name -> the whole row."""
    return {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \|.*$", text, re.MULTILINE)}


def test_the_schema_doc_lists_every_column() -> None:
    sections = _schema_sections()
    tables = sorted({c.table for c in SCHEMA})
    assert sorted(set(sections) & set(tables)) == tables, "a table has no ### `<table>` section"
    for table in tables:
        rows = _rows(sections[table].split("\n#### ")[0])
        columns = [c for c in SCHEMA if c.table == table]
        assert sorted(rows) == sorted(c.name for c in columns), f"{table}: columns differ"
        for column in columns:
            cells = [cell.strip() for cell in rows[column.name].strip("|").split("|")]
            assert cells[1] == column.kind, f"{table}.{column.name}: kind"
            assert cells[2] == ("yes" if column.nullable else "no"), f"{table}.{column.name}: null"
            length = "" if column.max_length is None else str(column.max_length)
            assert cells[3] == length, f"{table}.{column.name}: max length"


def test_the_schema_doc_lists_every_named_query() -> None:
    text = _read("schema.md")
    rows = _rows(text.split("## Named queries", 1)[1])
    assert sorted(rows) == sorted(q.name for q in NAMED_QUERIES), "named queries differ"
    for query in NAMED_QUERIES:
        params = re.findall(r"`:(\w+)`", rows[query.name])
        assert params == list(query.params), f"{query.name}: parameters differ"


def test_the_schema_doc_states_the_schema_version() -> None:
    assert f"`SCHEMA_VERSION` is **{SCHEMA_VERSION}**" in _read("schema.md")


# -- architecture, README, links ---------------------------------------------------------------


def test_the_architecture_is_in_the_repository_and_the_readme_links_the_docs() -> None:
    assert (DOCS / "architecture.md").is_file()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for doc in ("architecture.md", "plugins.md", "hooks.md", "schema.md"):
        assert f"](docs/{doc})" in readme, f"README.md does not link docs/{doc}"
    assert "shared ARCHITECTURE" not in readme


def test_relative_links_in_the_docs_exist() -> None:
    broken = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (path.parent / target.split("#")[0]).exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert broken == []


def test_code_fences_are_closed() -> None:
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        fences = re.findall(r"^```", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
        assert len(fences) % 2 == 0, f"{path.relative_to(ROOT)}: a code block is not closed"
