"""Apps: Python modules that bring their own tables, migrations and resources.

An app is an `App` object. It is named, in `pgtide migrate --app NAME`,
`PGTIDE_APPS` and the database's record of installed apps, by

- a short name of a shipped app (`dynapharm`),
- the name of an entry point in group `pgtide.apps` of an installed package, or
- a `module:attr` path importable from the current directory (as uvicorn names apps).

`pgtide migrate` applies the engine's migrations, then each app's (cdc/migrate.py),
tracks the app's tables and records the app in `pgtide.sync_apps`; `serve` exposes
the resources of every recorded app, so an upgraded database keeps serving what it
served. Nothing here is imported by the engine (`cdc`), and no app module is
imported but by name, at run time.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from api.models import _NAME, DeclarationError, Resource
from cdc.errors import ConfigError
from cdc.migrate import AppInstall

ENTRY_POINT_GROUP = "pgtide.apps"
SHIPPED: Mapping[str, str] = {"dynapharm": "apps.dynapharm:app"}

DemoLoader = Callable[[psycopg.Connection[Any]], bool]
BranchLookup = Callable[[psycopg.Connection[Any], str], str | None]


@dataclass(frozen=True)
class App:
    """An app: a name, its resources, its migrations folder and the tables to track.

    `track` defaults to the resources' tables. `demo` loads demo data once (True if it
    did); `branch` turns what a user calls a branch (a code, say) into the tenant value
    that `pgtide token create --branch` pins a token to.
    """

    name: str
    resources: Sequence[Resource] = ()
    migrations: Path | None = None
    track: Sequence[str] | None = None
    demo: DemoLoader | None = None
    branch: BranchLookup | None = None
    ref: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise DeclarationError(f"app name {self.name!r}: lower-case letters, digits and _")
        names = [r.name for r in self.resources]
        if len(set(names)) != len(names):
            raise DeclarationError(f"app {self.name} declares a resource twice")

    @property
    def tables(self) -> tuple[str, ...]:
        """The tables this app tracks, schema-qualified."""
        if self.track is not None:
            return tuple(t if "." in t else f"public.{t}" for t in self.track)
        return tuple(dict.fromkeys(r.qualified for r in self.resources))

    def install(self) -> AppInstall:
        """What `cdc.migrate` needs to install this app."""
        return AppInstall(self.name, self.ref or self.name, self.migrations, self.tables)


def load_app(ref: str) -> App:
    """The app `ref` names (a shipped name, an entry point, or `module:attr`)."""
    target = SHIPPED.get(ref)
    if target is None and ":" not in ref:
        found = [e for e in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
                 if e.name == ref]  # fmt: skip
        if not found:
            known = ", ".join(sorted(SHIPPED))
            raise ConfigError(
                f"no app named {ref!r}: use a shipped app ({known}), an entry point of group "
                f"{ENTRY_POINT_GROUP}, or module:attribute"
            )
        obj = _guarded(ref, found[0].load)
    else:
        module_name, _, attr = (target or ref).partition(":")
        if "" not in sys.path and "." not in sys.path:
            sys.path.insert(0, "")  # the current directory, as uvicorn does
        module = _guarded(ref, lambda: importlib.import_module(module_name))
        obj = getattr(module, attr or "app", None)
    if not isinstance(obj, App):
        raise ConfigError(f"{ref!r} is not a pgtide App (got {type(obj).__name__})")
    return obj if obj.ref == ref else _with_ref(obj, ref)


def _guarded(ref: str, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except DeclarationError as exc:
        raise ConfigError(f"app {ref!r}: {exc}") from exc
    except ImportError as exc:
        raise ConfigError(f"cannot import app {ref!r}: {exc}") from exc


def _with_ref(app: App, ref: str) -> App:
    from dataclasses import replace

    return replace(app, ref=ref)


def load_apps(refs: Iterable[str]) -> list[App]:
    """Each app once, in order; two apps may not declare the same resource."""
    apps: dict[str, App] = {}
    for ref in refs:
        app = load_app(ref)
        apps.setdefault(app.name, app)
    Registry(apps.values())  # refuses clashing resource names
    return list(apps.values())


class Registry:
    """The resources the server exposes, by URL name, with the app each belongs to."""

    def __init__(self, apps: Iterable[App] = ()) -> None:
        self.apps = list(apps)
        self.resources: dict[str, Resource] = {}
        for app in self.apps:
            for res in app.resources:
                if res.name in self.resources:
                    raise ConfigError(f"two apps declare the resource {res.name!r}")
                self.resources[res.name] = res
        # Read on every write and every stream open: worked out once.
        self._tenants = {r.qualified: r.tenant for r in self.resources.values()
                         if r.tenant is not None}  # fmt: skip

    def get(self, name: str) -> Resource | None:
        """The resource of that URL name, or None."""
        return self.resources.get(name)

    def tenants(self) -> dict[str, str]:
        """`schema.table` -> its tenant column, for the tables whose resources declare one."""
        return self._tenants

    def branch_lookup(self, conn: psycopg.Connection[Any], value: str) -> str | None:
        """The tenant value an app recognises in `value` (a branch code, say), else None."""
        for app in self.apps:
            if app.branch is not None:
                found = app.branch(conn, value)
                if found is not None:
                    return found
        return None


def served_apps(url: str, extra: Iterable[str] = ()) -> list[App]:
    """The apps the database records as installed, then `extra` (PGTIDE_APPS, --app)."""
    from cdc.migrate import installed_apps

    return load_apps([*(ref for _, ref in installed_apps(url)), *extra])


def refs_from_setting(value: str) -> list[str]:
    """`PGTIDE_APPS`: comma-separated app names, blanks ignored."""
    return [part.strip() for part in value.split(",") if part.strip()]
