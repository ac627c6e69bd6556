"""`next` in every listing: the URL of the next page, relative to the server, or null.

`GET /api/<resource>` and `GET /api/sync-log` both answer `"next": "/api/…?…&after=…"`
(null on the last page) and the same URL in a `Link: <url>; rel="next"` header
(RFC 8288), so a client pages any listing the same way: fetch `next` until it is
null (docs/decisions.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlencode


def next_page(
    path: str, params: Iterable[tuple[str, str]] | None
) -> tuple[str | None, dict[str, str]]:
    """`next` for a page (`path` with `params`; None: the last page) and its Link header."""
    if params is None:
        return None, {}
    url = f"{path}?{urlencode(list(params))}"
    return url, {"Link": f'<{url}>; rel="next"'}
