"""Settings: one attrs object built from ``USERPLANE_*`` variables and an optional ``.env``.

Every value comes from the environment (which wins) or the ``.env`` file named
by ``USERPLANE_ENV_FILE`` (default ``.env`` in the working directory). A bad
value fails at start-up with a message naming the variable.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import unquote, unquote_plus

import attrs
import cattrs

from userplane.errors import ConfigurationError

PREFIX = "USERPLANE_"
MASK = "********"

Env = Literal["dev", "prod"]
LogFormat = Literal["auto", "console", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
AuthMode = Literal["enabled", "disabled"]
ForwardedHeader = Literal["x-forwarded-for", "forwarded"]
PreparedStatements = Literal["auto", "true", "false"]


def _between(minimum: int, maximum: int | None = None) -> Any:
    def check(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum else f"at least {minimum}"
            raise ValueError(f"{PREFIX}{attribute.name.upper()}: must be {bound}, not {value}")

    return check


def _networks(_: Any, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    import ipaddress

    for text in value:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(
                f"{PREFIX}{attribute.name.upper()}: {text!r} is not an IP address or network"
            ) from None


#: At most this many default workers: each holds a pool of database connections.
MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """Two worker processes per CPU this process may run on, from 2 to ``MAX_DEFAULT_WORKERS``."""
    try:
        cpus = len(os.sched_getaffinity(0))  # what a container or taskset allows
    except AttributeError:  # pragma: no cover - platforms without sched_getaffinity
        cpus = os.cpu_count() or 1
    return max(2, min(MAX_DEFAULT_WORKERS, 2 * cpus))


@attrs.frozen
class Settings:
    """The effective configuration of one userplane process."""

    #: ``dev`` (friendly defaults) or ``prod`` (strict defaults, JSON logs).
    env: Env = "dev"
    #: Where users are stored; the scheme picks the storage plugin.
    database_url: str = attrs.field(default="sqlite:///userplane.db", repr=False)
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8000, validator=_between(0, 65535))
    #: gunicorn worker processes and threads per worker. Measured on 2 cores
    #: (benchmarks/RESULTS.md), 2 processes per CPU with 2 threads each served
    #: the most requests: Python work holds the GIL, so processes scale it and
    #: a second thread covers the database round trip.
    workers: int = attrs.field(factory=default_workers, validator=_between(1))
    threads: int = attrs.field(default=2, validator=_between(1))
    #: Seconds a worker may take to finish in-flight requests on shutdown.
    graceful_timeout: int = attrs.field(default=30, validator=_between(1))
    log_level: LogLevel = "info"
    #: ``auto``: console on a terminal in dev, JSON lines otherwise.
    log_format: LogFormat = "auto"
    #: Origins allowed by CORS; ``*`` for any. Empty means: any in dev, none in prod.
    cors_origins: tuple[str, ...] = ()
    #: Plugin names (entry-point names) not to load.
    disabled_plugins: tuple[str, ...] = ()
    #: Largest request body accepted, in bytes.
    max_body_bytes: int = attrs.field(default=65536, validator=_between(1))
    #: How long a SQLite writer waits for the lock before giving up, in ms.
    sqlite_busy_timeout_ms: int = attrs.field(default=5000, validator=_between(0))
    #: Connections a server database's pool keeps open, and at most opens, per process.
    #: By default at most one per thread: a request holds one connection at a
    #: time, so more only pile up on the server (psycopg_pool grows when a
    #: request comes while another's connection is on its way back).
    db_pool_min_size: int = attrs.field(default=2, validator=_between(0))
    db_pool_max_size: int = attrs.field(validator=_between(1))

    @db_pool_max_size.default
    def _one_connection_per_thread(self) -> int:
        return max(self.threads, self.db_pool_min_size, 1)

    #: How long a request waits for a pooled connection before a 503, in ms.
    db_pool_timeout_ms: int = attrs.field(default=3000, validator=_between(1))
    #: Requests that may queue for a connection; more get a 503 at once.
    db_pool_max_waiting: int = attrs.field(default=64, validator=_between(1))
    #: How long an ``Idempotency-Key`` and its response are kept, in seconds.
    idempotency_ttl_s: int = attrs.field(default=86400, validator=_between(1))
    #: The longest one SQL statement may run before it is cancelled (a 503), in ms.
    db_statement_timeout_ms: int = attrs.field(default=5000, validator=_between(1))
    #: Server-side prepared statements: ``auto`` uses them unless a pooler in
    #: transaction mode (PgBouncer) shows itself; ``false`` says there is one.
    db_prepared_statements: PreparedStatements = "auto"
    #: Read replicas of the database (comma-separated URLs): reads that may lag go there.
    database_replica_urls: tuple[str, ...] = attrs.field(default=(), repr=False)
    #: A replica further behind the primary than this is skipped, in ms.
    db_replica_max_lag_ms: int = attrs.field(default=1000, validator=_between(1))
    #: How long after a write its principal's reads go to the primary, in ms.
    db_read_your_writes_ms: int = attrs.field(default=5000, validator=_between(0))
    #: How long a request body may take to arrive, in ms (then a 408).
    body_timeout_ms: int = attrs.field(default=10000, validator=_between(1))
    #: How long a request may wait for a worker thread before a fast 503 instead, in ms.
    #: Two seconds: 256 clients writing at once on 2 cores queue up to about one
    #: (benchmarks/RESULTS.md), and a busy service that keeps up must shed nothing.
    queue_timeout_ms: int = attrs.field(default=2000, validator=_between(1))
    #: How long a client may take to send its request line and headers, in ms: a
    #: connection that has sent nothing, or only part of its headers, by then is closed.
    header_timeout_ms: int = attrs.field(default=5000, validator=_between(1))
    #: How long an idle keep-alive connection is kept open between requests, in ms.
    keepalive_timeout_ms: int = attrs.field(default=5000, validator=_between(1))
    #: ``disabled`` lets every caller act as an administrator: local development only.
    auth: AuthMode = "enabled"
    #: Proxies (addresses or networks) whose ``Forwarded``/``X-Forwarded-For`` is believed.
    trusted_proxies: tuple[str, ...] = attrs.field(default=(), validator=_networks)
    #: The forwarding header those proxies set (``x-forwarded-for`` or ``forwarded``):
    #: only it is read, since a proxy passes the other on as the client sent it.
    forwarded_header: ForwardedHeader = "x-forwarded-for"
    #: ``USERPLANE_*`` variables no field claims: for plugins' own settings.
    extra: Mapping[str, str] = attrs.field(factory=dict, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.auth == "disabled" and self.env == "prod":
            raise ValueError(
                f"{PREFIX}AUTH=disabled is for local development only and is refused "
                f"when {PREFIX}ENV=prod"
            )
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError(
                f"{PREFIX}DB_POOL_MIN_SIZE: must not exceed {PREFIX}DB_POOL_MAX_SIZE "
                f"({self.db_pool_min_size} > {self.db_pool_max_size})"
            )

    @property
    def allowed_origins(self) -> tuple[str, ...]:
        """The CORS origins in force, after the dev/prod default."""
        if self.cors_origins:
            return self.cors_origins
        return ("*",) if self.env == "dev" else ()

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = None
    ) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``) over the ``.env`` file.

        ``env_file`` names the file, and must then exist (``ConfigurationError``);
        without it, ``USERPLANE_ENV_FILE`` or ``.env`` is read when it exists.
        """
        return cls.from_mapping(variables_from_env(environ, env_file))

    @classmethod
    def from_mapping(cls, variables: Mapping[str, str]) -> Settings:
        """Build settings from ``USERPLANE_*`` variable names and string values."""
        names = {
            f"{PREFIX}{a.name.upper()}": a.name for a in attrs.fields(cls) if a.name != "extra"
        }
        data: dict[str, Any] = {}
        extra: dict[str, str] = {}
        for key, value in variables.items():
            if key in names:
                data[names[key]] = value
            elif key != ENV_FILE_VARIABLE:
                extra[key] = value
        data["extra"] = extra
        try:
            return _env_converter.structure(data, cls)
        except cattrs.ClassValidationError as exc:
            raise ConfigurationError(_describe(exc)) from None
        except ValueError as exc:  # an attrs validator, raised after structuring
            raise ConfigurationError(str(exc)) from None

    def redacted(self, sections: Sequence[SettingsSection] = ()) -> dict[str, Any]:
        """Every setting by variable name, secrets masked: safe to print or log.

        ``sections`` are the plugins' declared settings: each of their
        variables is listed (with its default when unset), and those declared
        ``secret`` are masked whatever their name.
        """
        out: dict[str, Any] = {}
        secret = secret_names(sections)
        for a in attrs.fields(type(self)):
            value = getattr(self, a.name)
            if a.name == "extra":
                declared = {n: d for s in sections for n, d in s.defaults().items()}
                for k, v in sorted({**declared, **value}.items()):
                    if v is not None and (k in secret or is_secret_name(k)):
                        v = MASK
                    out[k] = mask_urls_in(v) if isinstance(v, str) else v
                continue
            if isinstance(value, tuple):
                value = ",".join(value)
            # Any setting may hold a URL with credentials (USERPLANE_DATABASE_URL,
            # USERPLANE_OTEL_ENDPOINT, a plugin's webhook): every one is masked.
            out[f"{PREFIX}{a.name.upper()}"] = (
                mask_urls_in(value) if isinstance(value, str) else value
            )
        return out


#: The variable naming the env file: read by ``from_env``, not a setting of its own.
ENV_FILE_VARIABLE = f"{PREFIX}ENV_FILE"
#: Variables the test suites read (``USERPLANE_TEST_POSTGRESQL_URL``): never settings,
#: and never reported as unknown.
TEST_PREFIX = f"{PREFIX}TEST_"


def env_file_path(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = None
) -> Path:
    """The env file ``from_env`` reads: ``env_file``, else ``USERPLANE_ENV_FILE``, else ``.env``."""
    environ = os.environ if environ is None else environ
    return Path(env_file or environ.get(ENV_FILE_VARIABLE, ".env"))


def read_env_file(path: str | Path) -> dict[str, str]:
    """The ``USERPLANE_*`` variables an env file sets (none when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return {}
    # Imported here: most runs have no .env file, and python-dotenv
    # (with the logging and tempfile modules it loads) takes milliseconds.
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None and k.startswith(PREFIX)}


def variables_from_env(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = None
) -> dict[str, str]:
    """Every ``USERPLANE_*`` variable: the env file's, with the environment's over them.

    An ``env_file`` given explicitly must exist (``ConfigurationError``): a
    mistyped ``--env-file`` must not leave every setting at its default
    unnoticed. ``USERPLANE_ENV_FILE`` or the default ``.env`` may be missing.
    """
    environ = os.environ if environ is None else environ
    path = env_file_path(environ, env_file)
    if env_file and not path.is_file():
        raise ConfigurationError(f"the env file {str(path)!r} does not exist or is not a file")
    values = read_env_file(path)
    values.update({k: v for k, v in environ.items() if k.startswith(PREFIX)})
    return values


def disabled_plugins_from_env(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = None
) -> tuple[str, ...]:
    """``USERPLANE_DISABLED_PLUGINS`` alone, read leniently: never an error.

    For building the plugin manager before the settings are known to be valid
    (the CLI adds plugins' commands first): a bad value elsewhere, or a
    missing or unreadable env file, is reported by the command that reads the
    settings, not here.
    """
    environ = os.environ if environ is None else environ
    try:
        values = read_env_file(env_file_path(environ, env_file))
    except Exception:  # an unreadable file: the command reading the settings says so
        values = {}
    value = environ.get(f"{PREFIX}DISABLED_PLUGINS", values.get(f"{PREFIX}DISABLED_PLUGINS", ""))
    return _env_list(value, tuple)


def known_names(sections: Sequence[SettingsSection] = ()) -> frozenset[str]:
    """Every variable a setting reads: the core's, ``USERPLANE_ENV_FILE`` and the sections'."""
    core = {f"{PREFIX}{a.name.upper()}" for a in attrs.fields(Settings) if a.name != "extra"}
    return frozenset({*core, ENV_FILE_VARIABLE, *(n for s in sections for n in s.names())})


def unknown_names(
    names: Iterable[str], sections: Sequence[SettingsSection] = ()
) -> list[tuple[str, str | None]]:
    """The ``USERPLANE_*`` names no setting reads, each with the known name it may be a typo of.

    Compared without the ``USERPLANE_`` prefix every name shares (which would
    make any two names look alike). ``USERPLANE_TEST_*`` are the test suites'.
    """
    import difflib

    known = known_names(sections)
    bare = {n.removeprefix(PREFIX): n for n in known}
    out: list[tuple[str, str | None]] = []
    for name in sorted(set(names)):
        if not name.startswith(PREFIX) or name in known or name.startswith(TEST_PREFIX):
            continue
        close = difflib.get_close_matches(name.removeprefix(PREFIX), list(bare), n=1, cutoff=0.75)
        out.append((name, bare[close[0]] if close else None))
    return out


def check_sections(settings: Settings, sections: Sequence[SettingsSection]) -> None:
    """Parse every section's variables: ``ConfigurationError`` naming each bad one."""
    errors = []
    for s in sections:
        try:
            section(s.cls, settings, s.prefix)
        except ConfigurationError as exc:
            errors.append(exc.detail)
    if errors:
        raise ConfigurationError("; ".join(errors))


#: Words that say a name holds a secret even inside a longer part of it
#: (``SSLPASSWORD``, ``CLIENTSECRET``): none is part of an ordinary word.
_SECRET_WORDS = (
    "PASSWORD",
    "PASSWD",
    "PASSPHRASE",
    "SECRET",
    "CREDENTIAL",
    "AUTHORIZATION",
    "COOKIE",
)
#: Words that do only as a whole part of the name: inside other words they mean
#: nothing (``MONKEY``, ``PASSAGE``, ``SIGNAL``), and ``TOKENS`` (``MAX_TOKENS``)
#: counts, not a credential.
_SECRET_PARTS = frozenset(
    {"KEY", "KEYS", "TOKEN", "PWD", "PASS", "SIG", "APIKEY", "PRIVATEKEY", "SIGNINGKEY"}
)
#: A last part that says the value is a duration, a size, a count, a switch or
#: where something is (``USERPLANE_API_KEYS_CACHE_SECONDS``, ``USERPLANE_JWT_KEY_FILE``):
#: never a secret, and masked it would only garble every message quoting its value.
_NOT_SECRET_LAST = frozenset(
    {
        *("SECONDS", "SECS", "S", "MS", "MINUTES", "HOURS", "DAYS", "TTL", "TIMEOUT"),
        *("FILE", "PATH", "DIR", "SIZE", "COUNT", "BYTES", "LENGTH", "ID", "ENABLED"),
        *("MAX", "MIN", "LIMIT"),
    }
)
_NAME_PARTS = re.compile(r"[^A-Z0-9]+")
#: A lower-case letter or digit then a capital: where ``apiKey`` splits in two.
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def is_secret_name(name: str) -> bool:
    """Whether a variable's (or a URL parameter's) name says it holds a secret.

    Matched on whole parts of the name (split at ``_``, ``-``, ``.`` and
    camel case), so that ``USERPLANE_JWT_KEY`` is secret and
    ``USERPLANE_MONKEY`` is not; a name whose last part says duration, size,
    count or location (``_SECONDS``, ``_FILE``…) never is.
    """
    parts = [p for p in _NAME_PARTS.split(_CAMEL.sub("_", name).upper()) if p]
    if not parts or parts[-1] in _NOT_SECRET_LAST:
        return False
    return any(
        p in _SECRET_PARTS or p.endswith("TOKEN") or any(w in p for w in _SECRET_WORDS)
        for p in parts
    )


#: ``scheme://`` and the rest of a URL up to the next whitespace, in any text.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
#: What no URL parser cuts at (RFC 3986's unreserved characters). A password
#: holding anything else unencoded (``#``, ``?``, ``/``, ``@``, ``&``, ``=``…)
#: may be cut there, and error messages quote the pieces: urllib's ``Port could
#: not be cast to integer value as 'pa'``, libpq's ``invalid URI query parameter``.
_UNCUT = frozenset(string.ascii_letters + string.digits + "-._~")
#: Pieces shorter than this are not worth masking: they would only mask letters.
_MIN_PIECE = 3


def _userinfo(rest: str) -> tuple[str, str] | None:
    """``(user info, the rest)`` of what follows ``scheme://``; ``None`` without an ``@``.

    The user info runs to the *last* ``@``: a password may hold ``@``, ``/``,
    ``?`` or ``#`` unencoded, which ``urlsplit`` would take for the end of the
    authority, leaving the rest of the password in the path, query or fragment.
    Reading it this way masks too much, never too little, when an ``@`` is in
    the path or query of a URL without user info.
    """
    user_info, at, after = rest.rpartition("@")
    return (user_info, after) if at else None


def _mask_parameters(text: str) -> str:
    """``name=value`` pairs of a query or fragment with the secret ones' values masked."""
    if "=" not in text:
        return text
    out = []
    for pair in re.split(r"([&;])", text):
        name, eq, _ = pair.partition("=")
        out.append(f"{name}={MASK}" if eq and is_secret_name(unquote_plus(name)) else pair)
    return "".join(out)


def mask_url(url: str) -> str:
    """``url`` with its password masked, in the user info or as a query parameter.

    Everything between ``scheme://`` and the last ``@`` is the user info, and
    everything in it after the first ``:`` the password, however malformed
    (a password with an unencoded ``#``, ``?``, ``/`` or ``@``). Query and
    fragment parameters with a secret's name (``password``, ``token``, …)
    are masked too. The rest is kept as written, so the URL stays useful.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    found = _userinfo(rest)
    if found is None:
        prefix = f"{scheme}://"
    else:
        user_info, rest = found
        user, colon, _ = user_info.partition(":")
        prefix = f"{scheme}://{user}:{MASK}@" if colon else f"{scheme}://{user_info}@"
    # The host (an IPv6 literal too) and path stay as written; only parameters change.
    before_fragment, hash_, fragment = rest.partition("#")
    location, question, query = before_fragment.partition("?")
    masked = f"{prefix}{location}{question}{_mask_parameters(query)}{hash_}"
    return masked + _mask_parameters(fragment)


def mask_urls_in(text: str) -> str:
    """``text`` with every URL in it masked as ``mask_url`` masks one (error messages, logs)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(_mask_url_in_text, text)


#: What ends a sentence or a bracket after a URL, not part of it (``see http://h/?token=x.``).
_TRAILING = re.compile(r"[.,;:!?)\]}'\"]+$")


def _mask_url_in_text(match: re.Match[str]) -> str:
    url = match.group(0)
    # A password always ends in "@host": what trails the URL is never part of it.
    trailing = _TRAILING.search(url)
    if trailing is None or "@" in trailing.group(0):
        return mask_url(url)
    return mask_url(url[: trailing.start()]) + trailing.group(0)


def _password(rest: str) -> str | None:
    found = _userinfo(rest)
    if found is None:
        return None
    _, colon, password = found[0].partition(":")
    return password if colon and password else None


def _user(rest: str) -> set[str]:
    """The user name after ``scheme://``, as written and decoded: ``mask_url`` shows it."""
    found = _userinfo(rest)
    user = found[0].partition(":")[0] if found is not None else ""
    return {user, unquote(user)} if user else set()


def url_secrets(url: str, *, min_length: int = _MIN_PIECE) -> frozenset[str]:
    """What of ``url`` must never be shown, to mask wherever it turns up.

    Its password (as written and percent-decoded) and the values of its
    secret parameters (``?password=…``), from ``min_length`` characters. A
    value equal to the user name (which ``mask_url`` shows) is left out:
    masking it would garble every mention of the user, which gives it away
    anyway. Nothing else is: a password that merely occurs in the visible
    parts (``postgres`` in ``postgres#Xy9@postgres/db``) is still masked.
    """
    _, sep, rest = url.partition("://")
    if not sep:
        return frozenset()
    found: set[str] = set()
    password = _password(rest)
    if password is not None:
        found.update({password, unquote(password)})
    after = _userinfo(rest)
    for part in re.split(r"[?#&;]", after[1] if after else rest)[1:]:
        name, eq, value = part.partition("=")
        if eq and value and is_secret_name(unquote_plus(name)):
            found.update({value, unquote_plus(value)})
    user = _user(rest)
    return frozenset(v for v in found if len(v) >= min_length and v not in user)


def password_pieces(url: str) -> frozenset[str]:
    """The pieces a URL parser may cut ``url``'s password into, from 3 characters.

    A parser cuts at a character it takes for a delimiter, keeping it on one
    side or the other (``pa#ss``: ``pa`` is reported as a port, ``ss@h/db``
    becomes the fragment), so every run of the password from one such point to
    another is a piece an error message may quote: every cut point counts,
    however long the password, or the tail of a long generated one would be
    shown. None for a password of unreserved characters only; a piece equal
    to the user name (which ``mask_url`` shows) is left out.

    At most one piece per pair of cut points: ``(2c + 1)²/2`` for ``c``
    special characters, no more than the password's distinct substrings.
    """
    _, sep, rest = url.partition("://")
    password = _password(rest) if sep else None
    if password is None:
        return frozenset()
    pieces: set[str] = set()
    for text in {password, unquote(password)}:
        cuts = [i for i, c in enumerate(text) if c not in _UNCUT]
        if not cuts:
            continue
        starts = sorted({0, *cuts, *(i + 1 for i in cuts)})
        ends = sorted({len(text), *cuts, *(i + 1 for i in cuts)})
        pieces.update(text[i:j] for i in starts for j in ends if j - i >= _MIN_PIECE)
    return frozenset(pieces - _user(rest))


#: Variables with these endings hold where a secret is, not the secret: their
#: values are paths, which error messages must be able to name.
_LOCATION_SUFFIXES = ("_FILE", "_PATH", "_DIR")


def secret_values(
    settings: Settings,
    sections: Sequence[SettingsSection] = (),
    *,
    min_length: int = _MIN_PIECE,
    pieces: bool = True,
) -> frozenset[str]:
    """Every secret the settings hold, to mask wherever it turns up (messages, log lines).

    The values of variables secret by name or declared so by a plugin (not
    those naming a file, ``USERPLANE_JWT_KEY_FILE``), and what ``url_secrets``
    finds in every URL-valued setting, from ``min_length`` characters; with
    ``pieces``, what ``password_pieces`` finds too.
    """
    secret = secret_names(sections)
    values: set[str] = set()
    texts = [v for v in (getattr(settings, a.name) for a in attrs.fields(type(settings))) if v]
    texts = [t for v in texts for t in (v if isinstance(v, tuple) else (v,)) if isinstance(t, str)]
    for name, value in settings.extra.items():
        texts.append(value)
        named = name in secret or is_secret_name(name)
        if named and not name.upper().endswith(_LOCATION_SUFFIXES) and len(value) >= min_length:
            values.add(value)
    for text in texts:
        if "://" in text:
            values.update(url_secrets(text, min_length=min_length))
            if pieces:
                values.update(password_pieces(text))
    return frozenset(values)


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with its URLs masked (``mask_urls_in``) and every one of ``secrets`` masked.

    For messages that may quote settings: an error about a URL, a library's
    exception. ``secrets`` usually comes from ``secret_values``.
    """
    text = mask_urls_in(text)
    # Longest first, so that a secret containing another is masked whole.
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret and secret in text:
            text = text.replace(secret, MASK)
    return text


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _env_bool(value: Any, _: type) -> bool:
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("must be one of true/false, yes/no, on/off, 1/0")


def _env_int(value: Any, _: type) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"must be a whole number, not {value!r}") from None


def _env_list(value: Any, _: type) -> tuple[str, ...]:
    if isinstance(value, tuple):
        return value
    return tuple(part.strip() for part in str(value).split(",") if part.strip())


def _env_literal(value: Any, type_: Any) -> Any:
    allowed = type_.__args__
    text = str(value).strip().lower()
    if text not in allowed:
        raise ValueError(f"must be one of {', '.join(allowed)}, not {value!r}")
    return text


def _env_float(value: Any, _: type) -> float:
    try:
        return float(str(value).strip())
    except ValueError:
        raise ValueError(f"must be a number, not {value!r}") from None


def _make_env_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(bool, _env_bool)
    conv.register_structure_hook(int, _env_int)
    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], _env_list)
    conv.register_structure_hook(float, _env_float)
    conv.register_structure_hook_func(
        lambda t: getattr(t, "__origin__", None) is Literal, _env_literal
    )
    conv.register_structure_hook_func(lambda t: t == Mapping[str, str], lambda v, _: dict(v))
    return conv


_env_converter = _make_env_converter()


T = TypeVar("T")


#: The metadata key that marks a plugin setting as secret (see ``setting``).
SECRET = "userplane_secret"  # noqa: S105 (a metadata key, not a password)


def setting(default: Any = attrs.NOTHING, *, secret: bool = False, **kwargs: Any) -> Any:
    """An attrs field for a plugin's settings class; ``secret=True`` masks it everywhere.

    A secret setting is masked by ``userplane config`` and its value is
    masked in log lines, whatever the variable is called.
    """
    metadata = {**kwargs.pop("metadata", {}), SECRET: secret}
    return attrs.field(default=default, metadata=metadata, **kwargs)


@attrs.frozen
class SettingsSection:
    """A plugin's settings: ``USERPLANE_<prefix><FIELD>`` variables into the attrs ``cls``.

    Return one from ``userplane_settings_sections`` so that ``config`` lists
    them and masks the secret ones; read them with ``section``.
    """

    prefix: str
    cls: type

    def names(self) -> dict[str, str]:
        """Variable name -> field name."""
        return {f"{PREFIX}{self.prefix}{a.name.upper()}": a.name for a in attrs.fields(self.cls)}

    def secrets(self) -> frozenset[str]:
        """The variable names declared secret."""
        return frozenset(
            f"{PREFIX}{self.prefix}{a.name.upper()}"
            for a in attrs.fields(self.cls)
            if a.metadata.get(SECRET)
        )

    def defaults(self) -> dict[str, Any]:
        """Variable name -> default (``None`` when the field has none or a factory)."""
        out: dict[str, Any] = {}
        for a in attrs.fields(self.cls):
            default = a.default
            if default is attrs.NOTHING or isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = None
            out[f"{PREFIX}{self.prefix}{a.name.upper()}"] = default
        return out


def secret_names(sections: Sequence[SettingsSection]) -> frozenset[str]:
    """Every variable the sections declare secret."""
    return frozenset(name for s in sections for name in s.secrets())


def section(cls: type[T], settings: Settings, prefix: str) -> T:
    """A plugin's own settings: ``USERPLANE_<prefix><FIELD>`` variables into attrs ``cls``.

    Read from ``settings.extra`` with the same parsing and error messages as
    the core's settings, so ``USERPLANE_OTEL_SAMPLE_RATIO=lots`` fails at
    start-up naming the variable.
    """
    names = {f"{PREFIX}{prefix}{a.name.upper()}": a.name for a in attrs.fields(cls)}  # type: ignore[arg-type]
    data = {names[k]: v for k, v in settings.extra.items() if k in names}
    try:
        return _env_converter.structure(data, cls)
    except cattrs.ClassValidationError as exc:
        raise ConfigurationError(_describe(exc, PREFIX + prefix)) from None
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def _describe(exc: cattrs.ClassValidationError, prefix: str = PREFIX) -> str:
    messages = []
    for line in cattrs.transform_error(exc, path="", format_exception=lambda e, _: str(e)):
        message, _, where = line.rpartition(" @ ")
        name = where.lstrip(".").upper()
        # attrs validators name their variable themselves; they fail at the root.
        messages.append(f"{prefix}{name}: {message}" if name else message)
    return "; ".join(messages)
