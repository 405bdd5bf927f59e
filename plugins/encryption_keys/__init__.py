"""The encryption-keys plugin: the keyring from settings (``USERPLANE_ENCRYPTION_*``).

``USERPLANE_ENCRYPTION_KEYS`` holds the key-encryption keys, the active one
first, and ``USERPLANE_ENCRYPTION_INDEX_KEYS`` the blind-index key; each may
instead be read from a file (``…_FILE``), in the format of
``userplane.keyring``. Unset, encryption is off. A key-management plugin
replaces this one by answering ``userplane_encryption_keys`` first (or with
this plugin blocked: ``USERPLANE_DISABLED_PLUGINS=encryption_keys``).
"""

from __future__ import annotations

from pathlib import Path

import attrs

from userplane.plugin import (
    ConfigurationError,
    Keyring,
    NamedKey,
    Settings,
    SettingsSection,
    hookimpl,
    parse_keys,
    section,
    setting,
)

PREFIX = "ENCRYPTION_"


@attrs.frozen
class EncryptionSettings:
    """This plugin's settings, from ``USERPLANE_ENCRYPTION_*``."""

    #: Key-encryption keys, ``name:base64`` entries, the active one first.
    keys: str | None = setting(default=None, secret=True, repr=False)
    keys_file: str | None = None
    #: The blind-index key; while re-indexing, then the one it replaces (or ``plain``).
    index_keys: str | None = setting(default=None, secret=True, repr=False)
    index_keys_file: str | None = None


SETTINGS = SettingsSection(PREFIX, EncryptionSettings)


def _ring(
    value: str | None, path: str | None, name: str, *, plain: bool = False
) -> tuple[tuple[NamedKey, ...], bool] | None:
    """The keys of one setting (or its file), ``None`` if neither is set.

    With ``plain``, a last entry ``plain`` (no key) is allowed: it says so.
    """
    # An empty variable is unset (``USERPLANE_ENCRYPTION_KEYS=`` in a .env file).
    value = value or None
    path = path or None
    if value and path:
        raise ConfigurationError(f"set one of {name} and {name}_FILE, not both")
    text = value
    where = name
    if path:
        where = f"{name}_FILE"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"{where}: cannot read {path}: {exc.strerror}") from None
    if text is None:
        return None
    after_plain = False
    if plain:
        lines = [line for line in text.splitlines() if not line.strip().startswith("#")]
        entries = [e.strip() for line in lines for e in line.split(",") if e.strip()]
        if len(entries) > 1 and entries[-1] == "plain":
            after_plain = True
            text = ",".join(entries[:-1])
    try:
        return parse_keys(text), after_plain
    except ValueError as exc:
        raise ConfigurationError(f"{exc} ({where})") from None


def keyring(settings: Settings) -> Keyring | None:
    """The keyring ``settings`` configure, or ``None``; ``ConfigurationError`` if it is bad."""
    own = section(EncryptionSettings, settings, PREFIX)
    keys = _ring(own.keys, own.keys_file, "USERPLANE_ENCRYPTION_KEYS")
    index = _ring(
        own.index_keys, own.index_keys_file, "USERPLANE_ENCRYPTION_INDEX_KEYS", plain=True
    )
    if keys is None and index is None:
        return None
    if keys is None or index is None:
        missing = "USERPLANE_ENCRYPTION_KEYS" if keys is None else "USERPLANE_ENCRYPTION_INDEX_KEYS"
        raise ConfigurationError(
            "encryption needs both a key-encryption key and a blind-index key; "
            f"generate the missing one with `userplane encryption new-key` ({missing})"
        )
    (kek, _), (index_keys, plain_before) = keys, index
    try:
        return Keyring(kek, index_keys, plain_before)
    except ValueError as exc:
        raise ConfigurationError(
            f"{exc} (USERPLANE_ENCRYPTION_KEYS, USERPLANE_ENCRYPTION_INDEX_KEYS)"
        ) from None


@hookimpl
def userplane_settings_sections() -> SettingsSection:
    """``USERPLANE_ENCRYPTION_KEYS``, ``…_INDEX_KEYS`` and their ``_FILE`` variants."""
    return SETTINGS


@hookimpl
def userplane_encryption_keys(settings: Settings) -> Keyring | None:
    """The keyring from settings."""
    return keyring(settings)
