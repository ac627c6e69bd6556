"""CSV import: `POST /api/<resource>` with text/csv and `pgtide import`, against a real
`pgtide serve` and a real PostgreSQL with the demo resources migrated."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cdc import db, tokens
from tests.commands import assert_one_line_error, pgtide
from tests.live import Server, problem_of
from tests.writing import Api, new_id

# The log table, named once: the engine's tables may move to their own schema.
LOG = "pgtide.sync_log"
CSV = {"Content-Type": "text/csv"}
SMALL_LIMIT = 4096


@pytest.fixture(scope="module")
def small(live: tuple[Server, str]) -> Iterator[Server]:
    """A second server on the same database: a small import limit and one pooled connection."""
    env = {"PGTIDE_IMPORT_MAX_BYTES": str(SMALL_LIMIT), "PGTIDE_POOL_SIZE": "1"}
    srv = Server(live[1], env=env).start()
    yield srv
    srv.stop()


def clients_csv(branch: str, n: int, *, bad_line: int | None = None) -> bytes:
    """`n` clients of `branch`; the record on `bad_line` (header = 1) has a bad email."""
    lines = ["branch_id,full_name,email"]
    for k in range(n):
        email = "not-an-email" if k + 2 == bad_line else f"c{k}@example.com"
        lines.append(f"{branch},Client {k},{email}")
    return ("\n".join(lines) + "\n").encode()


def logged_inserts(api: Api, txid: str) -> int:
    query = f"SELECT count(*) FROM {LOG} WHERE txid = %s::xid8 AND op = 'INSERT'"
    return int(api.scalar(query, txid))


def post_csv(api: Api, resource: str, body: bytes | str, **headers: str) -> httpx.Response:
    data = body.encode() if isinstance(body, str) else body
    return api.http.post(f"/api/{resource}", content=data, headers={**CSV, **headers})


# --- the contract


def test_ten_thousand_clients_in_one_request(api: Api) -> None:
    b = api.branch()["id"]
    r = post_csv(api, "clients", clients_csv(b, 10_000), **{"X-Pgtide-Actor": "importer"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["data"] == {"count": 10_000} and body["txid"].isdigit()
    assert api.scalar("SELECT count(*) FROM clients WHERE branch_id = %s", b) == 10_000
    assert api.scalar("SELECT count(DISTINCT email) FROM clients WHERE branch_id = %s", b) == 10_000
    assert logged_inserts(api, body["txid"]) == 10_000
    actors = api.scalar(f"SELECT array_agg(DISTINCT actor) FROM {LOG} WHERE txid = %s::xid8",
                        body["txid"])  # fmt: skip
    assert actors == ["importer"]
    # Server defaults apply to the columns the header leaves out.
    row = api.scalar("SELECT to_jsonb(c) FROM clients c WHERE branch_id = %s LIMIT 1", b)
    assert row["version"] == 1 and row["created_at"] and row["id"]


def test_a_bad_record_on_line_5001_writes_nothing_and_is_named(api: Api) -> None:
    b = api.branch()["id"]
    before = api.checksum()
    r = post_csv(api, "clients", clients_csv(b, 10_000, bad_line=5001))
    assert r.status_code == 422
    problem = problem_of(r)
    assert problem["detail"].startswith("line 5001, column email: ")
    assert problem["line"] == 5001
    assert problem["errors"] == [{"line": 5001, "field": "email",
                                  "message": problem["errors"][0]["message"]}]  # fmt: skip
    assert api.checksum() == before


@pytest.mark.parametrize(
    ("header", "column", "message"),
    [
        ("branch_id,full_name,nickname", "nickname", "unknown column"),
        ("branch_id,full_name,full_name", "full_name", "named twice"),
        ("branch_id,full_name,version", "version", "unknown column"),
        ("branch_id,full_name,created_at", "created_at", "unknown column"),
        ("full_name,email", "branch_id", "required column is missing"),
    ],
)
def test_the_header_names_writable_fields_once(
    api: Api, header: str, column: str, message: str
) -> None:
    before = api.checksum()
    r = post_csv(api, "clients", f"{header}\n{new_id()},A,B\n")
    problem = problem_of(r)
    assert r.status_code == 422
    assert problem["detail"].startswith(f"line 1, column {column}: {message}")
    assert {"line": 1, "field": column} in [
        {k: e[k] for k in ("line", "field")} for e in problem["errors"]
    ]
    assert api.checksum() == before


def test_empty_cells_are_null(api: Api) -> None:
    b = api.branch()["id"]
    c = api.client(b)["id"]
    r = post_csv(api, "clients", f"branch_id,full_name,email,phone\n{b},Ann,,\n")
    assert r.status_code == 201, r.text
    row = api.scalar("SELECT to_jsonb(c) FROM clients c WHERE branch_id = %s AND full_name = 'Ann'",
                     b)  # fmt: skip
    assert row["email"] is None and row["phone"] is None

    before = api.checksum()
    # A required field: null is refused, naming line and column.
    r = post_csv(api, "clients", f"branch_id,full_name\n{b},Bob\n{b},\n")
    assert r.status_code == 422
    assert problem_of(r)["detail"] == (
        "line 3, column full_name: an empty cell is null, and this field takes no null"
    )
    # A field with a default is null too when its cell is empty (leave the column out instead).
    r = post_csv(api, "orders", f"branch_id,client_id,status\n{b},{c},\n")
    assert r.status_code == 422 and problem_of(r)["errors"][0]["field"] == "status"
    assert api.checksum() == before
    r = post_csv(api, "orders", f"branch_id,client_id\n{b},{c}\n")
    assert r.status_code == 201, r.text
    order = api.scalar("SELECT to_jsonb(o) FROM orders o WHERE client_id = %s", c)
    assert (order["status"], order["items"], order["total"], order["currency"]) == (
        "new", [], 0, "EUR",
    )  # fmt: skip


def test_quoted_cells_keep_commas_quotes_and_newlines(api: Api) -> None:
    b = api.branch()["id"]
    notes = ["a, b", 'say "hi"', "two\nlines", "crlf\r\ninside", "tab\tand \\ backslash"]
    cells = ['"' + n.replace('"', '""') + '"' for n in notes]
    text = "\ufeffbranch_id,full_name,notes\r\n" + "".join(
        f"{b},N{k},{cell}\r\n" for k, cell in enumerate(cells)
    )
    r = post_csv(api, "clients", text)
    assert r.status_code == 201, r.text
    got = api.sql.execute(
        "SELECT notes FROM clients WHERE branch_id = %s ORDER BY full_name", (b,)
    ).fetchall()
    assert [g[0] for g in got] == notes
    # Lines are counted as the file has them: a record after multi-line cells is named by
    # the line it starts on.
    bad = f'branch_id,full_name,notes\n{b},A,"1\n2\n3"\n\n{b},B,x\n{b},C,"\x00"\n'
    r = post_csv(api, "clients", bad)
    assert r.status_code == 422 and problem_of(r)["detail"].startswith("line 7, column notes:")


def test_cells_are_coerced_by_the_field_types(api: Api) -> None:
    b = api.branch()["id"]
    c = api.client(b)["id"]
    p = api.product(b)["id"]
    orders = (
        "branch_id,client_id,status,items,total,currency\n"
        f'{b},{c},paid,"[{{""sku"": ""A"", ""qty"": 2}}]",19.90,USD\n'
    )
    r = post_csv(api, "orders", orders)
    assert r.status_code == 201, r.text
    order = api.scalar("SELECT to_jsonb(o) FROM orders o WHERE client_id = %s", c)
    assert order["items"] == [{"sku": "A", "qty": 2}] and float(order["total"]) == 19.9
    appointments = (
        "branch_id,client_id,starts_at,duration_minutes\n"
        f"{b},{c},2030-01-02T10:00:00+01:00,45\n{b},{c},2030-01-03 09:30:00Z,30\n"
    )
    r = post_csv(api, "appointments", appointments)
    assert r.status_code == 201, r.text
    starts = api.sql.execute(
        "SELECT starts_at AT TIME ZONE 'UTC', duration_minutes FROM appointments"
        " WHERE client_id = %s ORDER BY starts_at", (c,),
    ).fetchall()  # fmt: skip
    assert [(s.isoformat(), d) for s, d in starts] == [
        ("2030-01-02T09:00:00", 45), ("2030-01-03T09:30:00", 30),
    ]  # fmt: skip
    r = post_csv(api, "stock_requests", f"branch_id,product_id,quantity\n{b},{p},12\n")
    assert r.status_code == 201, r.text

    before = api.checksum()
    refused = {
        "appointments": (f"branch_id,client_id,starts_at\n{b},{c},2030-01-02T10:00:00\n",
                         "starts_at"),  # no offset: the model wants an aware datetime
        "stock_requests": (f"branch_id,product_id,quantity\n{b},{p},1.5\n", "quantity"),
        "products": (f"branch_id,sku,name,price\n{b},S,N,9.999\n", "price"),
        "orders": (f"branch_id,client_id,items\n{b},{c},\"[1,\"\n", "items"),
        "distributors": (f"branch_id,name,agreement\n{b},D,[1]\n", "agreement"),
        "clients": ("branch_id,full_name\nnot-a-uuid,A\n", "branch_id"),
    }  # fmt: skip
    for resource, (text, column) in refused.items():
        r = post_csv(api, resource, text)
        assert r.status_code == 422, (resource, r.text)
        assert problem_of(r)["detail"].startswith(f"line 2, column {column}: "), r.text
    assert api.checksum() == before


def test_content_types_and_malformed_bodies(api: Api) -> None:
    b = api.branch()["id"]
    good = f"branch_id,full_name\n{b},Ann\n".encode()
    for content_type in ("text/csv; charset=utf-8", "TEXT/CSV; Charset=UTF-8", "text/csv"):
        r = api.http.post("/api/clients", content=good, headers={"Content-Type": content_type})
        assert r.status_code == 201, (content_type, r.text)
    before = api.checksum()
    cases = [
        ("text/csv; charset=latin-1", good, 415),
        ("text/plain", good, 415),
        ("text/csv", b"branch_id,full_name\n" + f"{b},Ren\xe9e\n".encode("latin-1"), 400),
        ("text/csv", f'branch_id,full_name\n{b},"unterminated\n'.encode(), 400),
        ("text/csv", f"branch_id,full_name\n{b},A,extra\n".encode(), 422),
        ("text/csv", b"", 400),
        ("text/csv", b"branch_id,full_name\n", 422),
    ]
    for content_type, body, status in cases:
        r = api.http.post("/api/clients", content=body, headers={"Content-Type": content_type})
        assert r.status_code == status, (content_type, body, r.text)
        problem_of(r)
    assert api.checksum() == before


def test_database_refusals_write_nothing_and_name_the_line(api: Api) -> None:
    b = api.branch()["id"]
    before = api.checksum()
    dup = new_id()
    r = post_csv(api, "clients", f"id,branch_id,full_name\n{new_id()},{b},A\n{dup},{b},B\n"
                                 f"{dup},{b},C\n")  # fmt: skip
    assert r.status_code == 409 and problem_of(r)["detail"].startswith("line 4: ")
    assert r.json()["line"] == 4
    missing = new_id()
    r = post_csv(api, "clients", f"branch_id,full_name\n{b},A\n{b},B\n{missing},C\n")
    assert r.status_code == 422
    assert problem_of(r)["detail"].startswith("line 4: invalid branch_id: references a row")
    taken = api.scalar("SELECT code FROM branches WHERE id = %s", b)
    r = post_csv(api, "branches", f"code,name\nFRESH{uuid.uuid4().hex[:6]},F\n{taken},T\n")
    assert r.status_code == 409 and problem_of(r)["detail"].startswith("line 3: ")
    assert api.checksum() == before


def test_an_idempotency_key_replays_the_import(api: Api) -> None:
    b = api.branch()["id"]
    body = clients_csv(b, 50)
    key = {"Idempotency-Key": new_id()}
    first = post_csv(api, "clients", body, **key)
    again = post_csv(api, "clients", body, **key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert api.scalar("SELECT count(*) FROM clients WHERE branch_id = %s", b) == 50
    other = post_csv(api, "clients", clients_csv(b, 51), **key)
    assert other.status_code == 422


# --- limits: size, and no connection held while uploading


def test_a_body_over_the_limit_is_413_and_writes_nothing(api: Api, small: Server) -> None:
    b = api.branch()["id"]
    big = clients_csv(b, 200)
    assert len(big) > SMALL_LIMIT
    before = api.checksum()
    with httpx.Client(base_url=small.base, timeout=30) as http:
        r = http.post("/api/clients", content=big, headers=CSV)  # Content-Length says so
        assert r.status_code == 413 and "PGTIDE_IMPORT_MAX_BYTES" in problem_of(r)["detail"]
        chunks = (big[k : k + 1000] for k in range(0, len(big), 1000))
        r = http.post("/api/clients", content=chunks, headers=CSV)  # chunked: counted
        assert r.status_code == 413
        assert api.checksum() == before
        r = http.post("/api/clients", content=clients_csv(b, 20), headers=CSV)
        assert r.status_code == 201, r.text


def test_a_slow_upload_holds_no_database_connection(api: Api, small: Server) -> None:
    b = api.branch()["id"]
    body = clients_csv(b, 40)
    half = len(body) // 2
    with socket.create_connection(("127.0.0.1", small.port), timeout=30) as upload:
        upload.sendall(
            f"POST /api/clients HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:half]
        )
        time.sleep(1.0)  # the server has the headers and half the body, and waits for more
        in_transaction = api.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state LIKE 'idle in transaction%%'"
        )
        assert in_transaction == 0
        # The server's only pooled connection is free: another write goes through at once.
        t0 = time.monotonic()
        with httpx.Client(base_url=small.base, timeout=10) as http:
            r = http.post("/api/clients", json={"branch_id": b, "full_name": "Meanwhile"})
        assert r.status_code == 201 and time.monotonic() - t0 < 5
        assert api.scalar("SELECT count(*) FROM clients WHERE branch_id = %s", b) == 1
        upload.sendall(body[half:])
        answer = upload.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 201"), answer
    assert api.scalar("SELECT count(*) FROM clients WHERE branch_id = %s", b) == 41


# --- auth: write scope and branch pins


def test_a_branch_pinned_token_imports_only_rows_of_its_branch(
    api: Api, live: tuple[Server, str]
) -> None:
    a, other = api.branch()["id"], api.branch()["id"]
    with db.connect(live[1]) as conn:

        def token(name: str, scopes: str, branch: str | None = None) -> dict[str, str]:
            t = tokens.create(conn, name=name, scopes=tokens.parse_scopes(scopes),
                              branch_id=branch, expires_in=None, pepper=None)  # fmt: skip
            return {"Authorization": f"Bearer {t}"}

        pin = token(f"csv-pin-{new_id()[:8]}", "read,write", a)
        reader = token(f"csv-reader-{new_id()[:8]}", "read")
    srv = Server(live[1], auth=True).start()
    try:
        with httpx.Client(base_url=srv.base, timeout=30) as http:
            before = api.checksum()
            mixed = f"branch_id,full_name\n{a},Mine\n{other},Theirs\n".encode()
            r = http.post("/api/clients", content=mixed, headers={**CSV, **pin})
            assert r.status_code == 403 and problem_of(r)["detail"].startswith("line 3: ")
            r = http.post("/api/clients", content=mixed, headers={**CSV, **reader})
            assert r.status_code == 403
            r = http.post("/api/branches", content=b"code,name\nX,Y\n", headers={**CSV, **pin})
            assert r.status_code == 403
            assert api.checksum() == before
            mine = f"branch_id,full_name\n{a},Mine\n{a},Also mine\n".encode()
            r = http.post("/api/clients", content=mine, headers={**CSV, **pin})
            assert r.status_code == 201 and r.json()["data"] == {"count": 2}
    finally:
        srv.stop()


# --- pgtide import


def test_pgtide_import_writes_a_good_file_and_refuses_a_bad_one(
    api: Api, live: tuple[Server, str], tmp_path: Path
) -> None:
    b = api.branch()["id"]
    good = tmp_path / "clients.csv"
    good.write_bytes(clients_csv(b, 1000))
    result = pgtide("import", "clients", str(good), "--actor", "ops", database_url=live[1])
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert words[:3] == ["imported", "1000", "clients"] and words[-1].isdigit()
    assert api.scalar("SELECT count(*) FROM clients WHERE branch_id = %s", b) == 1000
    assert logged_inserts(api, words[-1]) == 1000
    assert api.scalar(f"SELECT array_agg(DISTINCT actor || '/' || origin) FROM {LOG}"
                      " WHERE txid = %s::xid8", words[-1]) == ["ops/pgtide import"]  # fmt: skip

    before = api.checksum()
    bad = tmp_path / "bad.csv"
    bad.write_bytes(clients_csv(b, 1000, bad_line=501))
    result = pgtide("import", "clients", str(bad), database_url=live[1])
    assert_one_line_error(result, "line 501, column email:")
    dup = tmp_path / "dup.csv"
    dup.write_text(f"id,branch_id,full_name\n{new_id()},{b},A\n{b},{b},B\n{b},{b},C\n")
    result = pgtide("import", "clients", str(dup), database_url=live[1])
    assert_one_line_error(result, "line 4: a clients row with this id already exists")
    result = pgtide("import", "nothing", str(good), database_url=live[1])
    assert_one_line_error(result, "no resource 'nothing'")
    assert api.checksum() == before
    assert pgtide("import", "--help", database_url=None).returncode == 0
