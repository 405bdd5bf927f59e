"""The console's user pages: list and search, create, read, edit, delete, restore, purge.

Each page calls the same ``UserService`` the API calls, under the principal
the session stands for, so every rule (validation, uniqueness, versions,
who may see deleted users, audit records, webhooks) is the API's own. Each
route declares the action its method needs, as the API's routes do.
"""

from __future__ import annotations

import urllib.parse
import uuid
from typing import Any, ClassVar

import falcon

from userplane.plugin import (
    UNSET,
    USERS_DELETE,
    USERS_PURGE,
    USERS_READ,
    USERS_READ_DELETED,
    USERS_RESTORE,
    USERS_WRITE,
    Conflict,
    InvalidInput,
    NewUser,
    PreconditionFailed,
    User,
    UserChanges,
    UserQuery,
)
from userplane.plugins.console.site import PREFIX, Console, checkbox, choice, errors_by_field

#: Users per page of the list.
PAGE_SIZE = 25
#: The list's sort orders, as the API names them, and what the page calls them.
SORTS = {
    "created_at": "Oldest first",
    "-created_at": "Newest first",
    "email": "Email, A to Z",
    "-email": "Email, Z to A",
}
#: Which users the list shows.
STATUSES = {
    "": "Not deleted",
    "active": "Active",
    "inactive": "Inactive",
    "all": "All, deleted too",
}
_EDITABLE = ("email", "full_name", "is_active")


def user_path(user_id: uuid.UUID) -> str:
    """The console page of one user."""
    return f"{PREFIX}/users/{user_id}"


class UsersPage:
    """``/admin/users``: the list (GET) and creating a user (POST)."""

    actions: ClassVar[dict[str, str]] = {"GET": USERS_READ, "POST": USERS_WRITE}

    def __init__(self, console: Console) -> None:
        self._console = console

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        console = self._console
        q = (req.get_param("q") or "").strip()
        status = choice(req.get_param("status"), list(STATUSES), "")
        sort = choice(req.get_param("sort"), list(SORTS), "created_at")
        after = req.get_param("after") or None
        shown = dict(STATUSES)
        if not console.may(req, USERS_READ_DELETED):
            shown.pop("all")
            if status == "all":
                status = ""
        query = UserQuery(
            limit=PAGE_SIZE,
            cursor=after,
            is_active={"active": True, "inactive": False}.get(status),
            q=q or None,
            sort=sort,
            include_deleted=status == "all",
        )
        errors: dict[str, str] = {}
        users: tuple[User, ...] = ()
        following = None
        try:
            page = console.registry.users.list(query)
        except InvalidInput as exc:
            errors = errors_by_field(exc, {"cursor": "after"})
        else:
            users, following = page.items, page.next
        params = {k: v for k, v in {"q": q, "status": status, "sort": sort}.items() if v}
        next_url = None
        if following is not None:
            next_url = f"{PREFIX}/users?" + urllib.parse.urlencode({**params, "after": following})
        console.render(
            req,
            resp,
            "users.html",
            status=422 if errors else 200,
            users=users,
            q=q,
            status_value=status,
            statuses=shown,
            sort=sort,
            sorts=SORTS,
            errors=errors,
            next_url=next_url,
            first_url=f"{PREFIX}/users?" + urllib.parse.urlencode(params) if after else None,
            may_write=console.may(req, USERS_WRITE),
        )

    on_head = on_get

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        console = self._console
        form = dict(console.form(req))
        new = NewUser(
            email=form.get("email", "").strip(),
            full_name=form.get("full_name", "").strip() or None,
            is_active=checkbox(form, "is_active"),
        )
        try:
            user = console.registry.users.create(new)
        except InvalidInput as exc:
            self._form_again(req, resp, form, errors_by_field(exc), 422)
            return
        except Conflict as exc:
            self._form_again(req, resp, form, {"email": exc.detail}, 409)
            return
        console.redirect(req, resp, user_path(user.id), f"Created {user.email}.")

    def _form_again(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        form: dict[str, str],
        errors: dict[str, str],
        status: int,
    ) -> None:
        self._console.render(req, resp, "user_new.html", status=status, values=form, errors=errors)


class NewUserPage:
    """``/admin/users/new``: the form for a new user."""

    actions: ClassVar[dict[str, str]] = {"GET": USERS_WRITE}

    def __init__(self, console: Console) -> None:
        self._console = console

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        values = {"email": "", "full_name": "", "is_active": "on"}
        self._console.render(req, resp, "user_new.html", values=values, errors={})

    on_head = on_get


class UserPage:
    """``/admin/users/{id}``: one user (GET), and saving an edit (POST, with its version)."""

    actions: ClassVar[dict[str, str]] = {"GET": USERS_READ, "POST": USERS_WRITE}

    def __init__(self, console: Console) -> None:
        self._console = console

    def on_get(self, req: falcon.Request, resp: falcon.Response, user_id: uuid.UUID) -> None:
        user = self._load(req, user_id)
        self.show(req, resp, user, _values(user), {}, None, 200)

    on_head = on_get

    def on_post(self, req: falcon.Request, resp: falcon.Response, user_id: uuid.UUID) -> None:
        console = self._console
        form = dict(console.form(req))
        version = None
        try:
            version = Console.version(form)
            if version is None:
                raise InvalidInput.for_field("version", "is missing: reload the page")
            changes = _changes(form, self._load(req, user_id))
            user = console.registry.users.update(user_id, changes, expected_version=version)
        except PreconditionFailed:
            # Someone saved this user after the form was loaded: show what is stored
            # now, keep what was typed, and let the editor decide.
            current = self._load(req, user_id)
            message = (
                "Someone else changed this user after you opened it. The stored values "
                "are shown above; your changes are kept in the form. Save again to "
                "overwrite them."
            )
            self.show(req, resp, current, form, {}, message, 409)
            return
        except InvalidInput as exc:
            current = self._load(req, user_id)
            self.show(req, resp, current, form, errors_by_field(exc), None, 422, version)
            return
        except Conflict as exc:
            current = self._load(req, user_id)
            errors = {"email": exc.detail}
            self.show(req, resp, current, form, errors, None, 409, version)
            return
        console.redirect(req, resp, user_path(user.id), f"Saved {user.email}.")

    def _load(self, req: falcon.Request, user_id: uuid.UUID) -> User:
        console = self._console
        return console.registry.users.get(
            user_id, include_deleted=console.may(req, USERS_READ_DELETED, user_id)
        )

    def show(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        user: User,
        values: dict[str, str],
        errors: dict[str, str],
        conflict: str | None,
        status: int,
        version: int | None = None,
    ) -> None:
        """The user's page: its record, the forms this principal may use, the plugins' panels."""
        console = self._console
        principal = console.principal(req)
        panels = []
        for panel in console.user_panels:
            if console.may(req, panel.action):
                context = panel.load(user, principal)
                if context is not None:
                    panels.append((panel.template, context))
        console.render(
            req,
            resp,
            "user.html",
            status=status,
            user=user,
            values=values,
            errors=errors,
            conflict=conflict,
            version=user.version if version is None else version,
            may_write=console.may(req, USERS_WRITE, user.id),
            may_delete=console.may(req, USERS_DELETE, user.id),
            may_restore=console.may(req, USERS_RESTORE, user.id),
            may_purge=console.may(req, USERS_PURGE, user.id),
            panels=panels,
        )


def _changes(form: dict[str, str], stored: User) -> UserChanges:
    """What the form changes of ``stored``: only the fields whose value differs.

    As a client's PATCH names only what it changes: a field sent unchanged
    could still be judged as a change (an address "changed" to itself needs
    the roles of the user's groups), which an edit of the name alone must not be.
    """
    email = form.get("email", "").strip()
    full_name = form.get("full_name", "").strip() or None
    is_active = checkbox(form, "is_active")
    return UserChanges(
        email=email if email != stored.email else UNSET,
        full_name=full_name if full_name != stored.full_name else UNSET,
        is_active=is_active if is_active != stored.is_active else UNSET,
    )


def _values(user: User) -> dict[str, str]:
    values = {"email": user.email, "full_name": user.full_name or ""}
    if user.is_active:
        values["is_active"] = "on"
    return values


class DeleteUser:
    """``/admin/users/{id}/delete``: a soft delete, at the version the page showed."""

    actions: ClassVar[dict[str, str]] = {"POST": USERS_DELETE}

    def __init__(self, console: Console, pages: UserPage) -> None:
        self._console = console
        self._pages = pages

    def on_post(self, req: falcon.Request, resp: falcon.Response, user_id: uuid.UUID) -> None:
        console = self._console
        form = dict(console.form(req))
        try:
            user = console.registry.users.delete(user_id, expected_version=Console.version(form))
        except PreconditionFailed:
            current = console.registry.users.get(user_id)
            message = (
                "Someone else changed this user after you opened it, so it was not deleted. "
                "Review the stored values, then delete again."
            )
            self._pages.show(req, resp, current, _values(current), {}, message, 409)
            return
        console.redirect(req, resp, user_path(user.id), f"Deleted {user.email}.")


class RestoreUser:
    """``/admin/users/{id}/restore``: bring a deleted user back."""

    actions: ClassVar[dict[str, str]] = {"POST": USERS_RESTORE}

    def __init__(self, console: Console) -> None:
        self._console = console

    def on_post(self, req: falcon.Request, resp: falcon.Response, user_id: uuid.UUID) -> None:
        user = self._console.registry.users.restore(user_id)
        self._console.redirect(req, resp, user_path(user.id), f"Restored {user.email}.")


class PurgeUser:
    """``/admin/users/{id}/purge``: remove a deleted user for good."""

    actions: ClassVar[dict[str, str]] = {"POST": USERS_PURGE}

    def __init__(self, console: Console) -> None:
        self._console = console

    def on_post(self, req: falcon.Request, resp: falcon.Response, user_id: uuid.UUID) -> None:
        console = self._console
        # Only a deleted user is purged, and only one this principal may see, as
        # restoring needs: a hidden user is not confirmed, let alone erased.
        console.require(req, USERS_READ_DELETED, user_id)
        if console.form(req).get("confirm") != "yes":
            raise InvalidInput.for_field(
                "confirm", "tick the box to confirm: a purge cannot be undone"
            )
        console.registry.users.purge_user(user_id)
        console.redirect(req, resp, f"{PREFIX}/users", f"Purged user {user_id} for good.")


def routes(console: Console) -> dict[str, Any]:
    """The user pages, by URI template."""
    page = UserPage(console)
    return {
        f"{PREFIX}/users": UsersPage(console),
        f"{PREFIX}/users/new": NewUserPage(console),
        f"{PREFIX}/users/{{user_id:uuid}}": page,
        f"{PREFIX}/users/{{user_id:uuid}}/delete": DeleteUser(console, page),
        f"{PREFIX}/users/{{user_id:uuid}}/restore": RestoreUser(console),
        f"{PREFIX}/users/{{user_id:uuid}}/purge": PurgeUser(console),
    }
