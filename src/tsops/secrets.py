"""Secrets referenced from settings, never stored in them.

A URL in `tsops.yaml` (or a `TSOPS_*` override) names a secret as `${NAME}`, e.g.
`postgresql://tsops:${TSOPS_DB_PASSWORD}@postgres:5432/tsops`. It is resolved only where a
connection is made, from the environment variable `NAME` or, failing that, from the file named
by `NAME_FILE` (a mounted Kubernetes Secret). Settings, logs, `status --json`, MLflow
parameters and error messages keep the placeholder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from tsops.errors import ConfigError

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def secret(name: str, where: str, environ: Mapping[str, str] | None = None) -> str:
    """The value of secret `name`: `$name`, else the content of the file `$name_FILE`."""
    env = os.environ if environ is None else environ
    if name in env:
        return env[name]
    path = env.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as e:
            raise ConfigError(
                f"cannot read the secret {name} from {name}_FILE ({e.strerror})", where
            ) from None
    raise ConfigError(
        f"the secret ${{{name}}} is not set: set {name} or {name}_FILE in the environment", where
    )


def resolve_url(url: str, where: str, environ: Mapping[str, str] | None = None) -> str:
    """`url` with each `${NAME}` replaced by the secret (URL-quoted, so any character works),
    with the PostgreSQL driver tsops installs (`with_installed_driver`)."""
    resolved = PLACEHOLDER.sub(lambda m: quote(secret(m.group(1), where, environ), safe=""), url)
    return with_installed_driver(resolved)


_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def with_installed_driver(url: str) -> str:
    """A `postgresql://` URL with the driver tsops depends on (psycopg2) named: SQLAlchemy 2.1
    picks psycopg 3 for a bare `postgresql://`, which a tsops install does not have, so the
    URL form the docs show failed with `ModuleNotFoundError: psycopg`."""
    for scheme in _POSTGRES_SCHEMES:
        if url.startswith(scheme):
            return "postgresql+psycopg2://" + url[len(scheme) :]
    return url


def resolve_text(text: str, where: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` with each `${NAME}` replaced by the secret as is (not a URL, e.g. Redis'
    `host:port,password=${NAME}`)."""
    return PLACEHOLDER.sub(lambda m: secret(m.group(1), where, environ), text)


def redacted(url: str) -> str:
    """A database URL fit for a message: the password (or its placeholder) hidden."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return PLACEHOLDER.sub("***", url)
