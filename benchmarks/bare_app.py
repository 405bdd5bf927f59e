"""The bare-stack baseline: Falcon + psycopg + psycopg_pool running userplane's SQL, nothing else.

Served by gunicorn with the same workers, threads and worker class (gthread)
as ``userplane serve``. It answers the benchmarked routes with the same
statements and user columns (read from ``BARE_SQL_FILE``, which the harness
writes from ``benchmarks.sql``), the same pool sizes and connection options,
and the same JSON shapes, status codes, ``ETag`` and cursors, so the same wrk
scripts drive it. It deliberately has no authentication, no validation, no
email normalisation, no logging, no middleware and no connection check on
checkout: what is left is the floor under any app on this stack.

Settings (environment): ``BARE_DATABASE_URL``, ``BARE_SQL_FILE``,
``BARE_POOL_MIN_SIZE`` / ``BARE_POOL_MAX_SIZE`` (2 / 10), ``BARE_POOL_TIMEOUT_S``
(3), ``BARE_POOL_MAX_WAITING`` (64), ``BARE_STATEMENT_TIMEOUT_MS`` (5000).
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import falcon
import orjson
import psycopg
from psycopg_pool import ConnectionPool

PAGE_SIZE = 50


def _product_sql() -> dict[str, Any]:
    """userplane's statements and user columns, as the harness wrote them (or asked directly)."""
    path = os.environ.get("BARE_SQL_FILE")
    if path:
        loaded: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
        return loaded
    from benchmarks.sql import columns, statements  # standalone use: ask userplane directly

    return {"statements": statements(), "columns": columns()}


_PRODUCT = _product_sql()
SQL: dict[str, str] = _PRODUCT["statements"]
COLUMNS: tuple[str, ...] = tuple(_PRODUCT["columns"])


def _pool() -> ConnectionPool[psycopg.Connection[Any]]:
    env = os.environ
    statement_timeout = int(env.get("BARE_STATEMENT_TIMEOUT_MS", "5000"))
    return ConnectionPool(
        env["BARE_DATABASE_URL"],
        min_size=int(env.get("BARE_POOL_MIN_SIZE", "2")),
        max_size=int(env.get("BARE_POOL_MAX_SIZE", "10")),
        timeout=float(env.get("BARE_POOL_TIMEOUT_S", "3")),
        max_waiting=int(env.get("BARE_POOL_MAX_WAITING", "64")),
        kwargs={
            "autocommit": True,
            "options": f"-c statement_timeout={statement_timeout} -c TimeZone=UTC",
        },
        open=True,
    )


#: Made at import, which gunicorn does in each worker after the fork.
POOL = _pool()


def _one(name: str, params: dict[str, Any]) -> Any:
    with POOL.connection() as conn, conn.cursor() as cur:
        cur.execute(SQL[name], params, prepare=True)
        return cur.fetchone()


def _all(name: str, params: dict[str, Any]) -> list[Any]:
    with POOL.connection() as conn, conn.cursor() as cur:
        cur.execute(SQL[name], params, prepare=True)
        return cur.fetchall()


def _send(resp: falcon.Response, row: Any, status: str = falcon.HTTP_200) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.set_header("ETag", f'"{row[6]}"')
    resp.data = orjson.dumps(dict(zip(COLUMNS, row, strict=True)))


def _cursor(row: Any) -> str:
    raw = orjson.dumps(["created_at", row[4].isoformat(), str(row[0])])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class Users:
    """``/api/v1/users``: list (first page, after a cursor, by email) and create."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """A page, as userplane shapes it: ``{"items": [...], "next": cursor}``."""
        email = req.get_param("email")
        cursor = req.get_param("cursor")
        limit = PAGE_SIZE + 1
        if email is not None:
            rows = _all("list_email", {"email_key": email.lower(), "limit": limit})
        elif cursor is not None:
            _, key, after_id = orjson.loads(base64.urlsafe_b64decode(cursor + "==="))
            after = {"after_key": datetime.fromisoformat(key), "after_id": uuid.UUID(after_id)}
            rows = _all("list_after", {**after, "limit": limit})
        else:
            rows = _all("list_first", {"limit": limit})
        items = rows[:PAGE_SIZE]
        nxt = _cursor(items[-1]) if len(rows) > PAGE_SIZE else None
        resp.content_type = falcon.MEDIA_JSON
        resp.data = orjson.dumps(
            {"items": [dict(zip(COLUMNS, r, strict=True)) for r in items], "next": nxt}
        )

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Insert; 201 with ``Location`` and ``ETag``, 409 on a taken email."""
        body = orjson.loads(req.bounded_stream.read())
        now = datetime.now(UTC)
        full_name = body.get("full_name")
        params = {
            "id": uuid.uuid4(),
            "email": body["email"],
            "email_key": body["email"].lower(),
            "email_next": None,
            "full_name": full_name,
            "full_name_folded": (full_name or "").lower(),
            "is_active": body.get("is_active", True),
            "created_at": now,
            "updated_at": now,
            "version": 1,
            "external_source": None,
            "external_id": None,
            "attributes": None,
        }
        try:
            row = _one("insert_user", params)
        except psycopg.errors.UniqueViolation:
            resp.status = falcon.HTTP_409
            return
        resp.set_header("Location", f"/api/v1/users/{row[0]}")
        _send(resp, row, falcon.HTTP_201)


class User:
    """``/api/v1/users/{id}``: read, and update with ``If-Match``."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, user_id: uuid.UUID) -> None:
        """The user with its ``ETag``, or 404."""
        row = _one("get_user", {"id": user_id, "include_deleted": False})
        if row is None:
            resp.status = falcon.HTTP_404
            return
        _send(resp, row)

    def on_patch(self, req: falcon.Request, resp: falcon.Response, user_id: uuid.UUID) -> None:
        """The same conditional ``UPDATE … RETURNING``; on a miss, 412 or 404 as userplane."""
        body = orjson.loads(req.bounded_stream.read())
        if_match = req.get_header("If-Match")
        full_name = body.get("full_name")
        params = {
            "id": user_id,
            "expected_version": int(if_match.strip('"')) if if_match else None,
            "now": datetime.now(UTC),
            "set_email": "email" in body,
            "email": body.get("email"),
            "email_key": (body.get("email") or "").lower() or None,
            "email_next": None,
            "set_full_name": "full_name" in body,
            "full_name": full_name,
            "full_name_folded": (full_name or "").lower(),
            "set_is_active": "is_active" in body,
            "is_active": body.get("is_active"),
            "set_external": False,
            "external_source": None,
            "external_id": None,
            "set_attributes": False,
            "attributes": None,
        }
        row = _one("update_user", params)
        if row is None:
            exists = _one("user_version", {"id": user_id}) is not None
            resp.status = falcon.HTTP_412 if exists else falcon.HTTP_404
            return
        _send(resp, row)


class Ready:
    """``/health/ready``: the database answers."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """200 once a pooled connection runs ``SELECT 1``."""
        with POOL.connection() as conn:
            conn.execute("SELECT 1")
        resp.media = {"status": "ok"}


app = falcon.App()
app.add_route("/api/v1/users", Users())
app.add_route("/api/v1/users/{user_id:uuid}", User())
app.add_route("/health/ready", Ready())
