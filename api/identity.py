"""Who a request writes as, and which branch's rows it may touch.

The actor recorded in pgtide.sync_log is the token's name when the request came with
one (api/auth.py resolved it); only with auth off (`serve --insecure-no-auth`)
is it taken from the `X-Pgtide-Actor` header. The origin (branch app, device)
comes from `X-Pgtide-Origin`. A token pinned to a branch reads and writes only
rows whose `branch_id` is that branch: other rows answer 404, a body naming
another branch 403, and tables without `branch_id` are readable only when
listed in `PGTIDE_PINNED_SHARED_TABLES` and never writable. `branch_id` stands for
the resource's declared tenant column (api/models.py). A resource whose tenant column
is its key holds the branches themselves: a pinned token reads its own branch's row
there, and writes none (a tablet does not rename or delete its branch).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from api.auth import Principal
from api.errors import ApiError
from api.models import Resource
from api.writes import Author

ACTOR_HEADER = "x-pgtide-actor"
ORIGIN_HEADER = "x-pgtide-origin"
MAX_LENGTH = 200


def _header(request: Request, name: str) -> str | None:
    value = request.headers.get(name)
    if value is not None and len(value) > MAX_LENGTH:
        raise ApiError(400, f"{name} is longer than {MAX_LENGTH} characters")
    return value or None


def _principal(request: Request) -> Principal | None:
    principal = getattr(request.state, "principal", None)
    return principal if isinstance(principal, Principal) else None


def author_of(
    request: Request, *, mutation_id: str | None = None, origin: str | None = None
) -> Author:
    """The author of the request's writes; `origin` is the fallback when no header names one."""
    principal = _principal(request)
    header_actor = _header(request, ACTOR_HEADER)
    actor = principal.name if principal and principal.token_id is not None else header_actor
    return Author(
        actor=actor,
        origin=_header(request, ORIGIN_HEADER) or origin,
        mutation_id=mutation_id,
    )


def branch_pin(request: Request, res: Resource, *, writing: bool) -> Any:
    """The tenant value this request is confined to (None: any); 403 where it may not go.

    The pin is read as the resource's tenant column's type (uuid, integer, text).
    """
    principal = _principal(request)
    if principal is None or principal.branch_id is None:
        return None
    state: Any = request.state
    # Shared first, as the stream does (cdc/filters.py): every row, also of `branches`.
    if not writing and res.name in state.settings.pinned_shared_tables:
        return None
    if res.tenant is not None and not (writing and res.tenant == res.key):
        try:
            return res.parse_tenant(principal.branch_id)
        except ValueError:
            raise ApiError(403, f"this token's branch pin is no {res.tenant} of "
                                f"{res.name}") from None  # fmt: skip
    what = "written" if writing else "read"
    raise ApiError(403, f"{res.name} cannot be {what} with a branch-pinned token")


def confine(res: Resource, values: dict[str, Any], pin: Any) -> None:
    """Fill the tenant column from the pin, or 403 when a body names another tenant."""
    if pin is None or res.tenant is None:
        return
    value = values.setdefault(res.tenant, pin)
    if value != pin:
        raise ApiError(403, f"this token writes only rows of {res.tenant} {pin}; "
                            f"{res.tenant} {value} is another")  # fmt: skip
