"""The README's way into the console, as a newcomer takes it, in a real browser.

The shell block after ``<!-- console-walkthrough -->`` runs as written (its
port aside) against a real server; then the browser goes from the home page
to the console, signs in with the key the block printed, and finds the user
it made. The screenshots of each step are the README's pictures.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from serving import SCRIPT, Server

from browser.browsing import PHONE, Browser, row_ids

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- console-walkthrough -->"


def walkthrough() -> str:
    """The shell block right after the marker in README.md."""
    after = (ROOT / "README.md").read_text(encoding="utf-8").split(MARKER, 1)[1]
    match = re.search(r"```sh\n(.*?)```", after, re.DOTALL)
    assert match is not None, "no sh block after the console walkthrough marker"
    return match.group(1)


def test_the_readme_leads_from_the_home_page_into_the_console(
    browser: Browser, server: Server
) -> None:
    script = walkthrough()
    assert "8000" in script
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace("8000", str(server.port))],
        cwd=server.directory,
        env={**server.env, "PATH": f"{SCRIPT.parent}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    key = done.stdout.strip().splitlines()[-1]
    assert key.startswith("up_"), done.stdout

    browser.open("/")
    browser.wait_for("h1")
    browser.shot("home")
    browser.follow('a[href="/admin"]')
    browser.wait_path("/admin/sign-in")
    browser.shot("sign-in")
    browser.fill("input#credential", key)
    browser.submit("form#sign-in")
    browser.wait_path("/admin/users")

    browser.fill("form#user-search input[name=q]", "ann@example.org")
    browser.submit("form#user-search")
    browser.wait_for("table#users")
    (ann,) = row_ids(browser)
    assert "Ann" in browser.text(f'tr[data-user-id="{ann}"]')
    browser.shot("users")
    browser.follow(f'tr[data-user-id="{ann}"] a')
    browser.wait_path(f"/admin/users/{ann}")
    assert "ann@example.org" in browser.text("dl#user-details")
    browser.shot("user")
    browser.resize(PHONE)
    browser.shot("user-390")
