"""Capture (schema/triggers.sql): what every write leaves in `pgtide.sync_log`.

Every test runs against a real PostgreSQL, in a fresh migrated database of its
own (the `db_url` / `conn` fixtures). All writes here are plain SQL, the way
psql, another service or a migration would make them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from cdc import db
from cdc.migrate import migrate
from tests.conftest import with_dbname

Conn = psycopg.Connection[Any]

DOORBELL = "pgtide_doorbell"
DOMAIN_TABLES = (
    "appointments",
    "branches",
    "clients",
    "distributors",
    "orders",
    "products",
    "stock_requests",
)


# --- helpers


def log_rows(conn: Conn, table: str | None = None) -> list[dict[str, Any]]:
    """The pgtide.sync_log rows (optionally of one table) in id order."""
    cur = conn.cursor(row_factory=dict_row)
    if table is None:
        return cur.execute("SELECT * FROM pgtide.sync_log ORDER BY id").fetchall()
    return cur.execute(
        "SELECT * FROM pgtide.sync_log WHERE table_name = %s ORDER BY id", (table,)
    ).fetchall()


def log_count(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM pgtide.sync_log").fetchone()
    assert row is not None
    return int(row[0])


def max_log_id(conn: Conn) -> int:
    row = conn.execute("SELECT coalesce(max(id), 0) FROM pgtide.sync_log").fetchone()
    assert row is not None
    return int(row[0])


def rows_after(conn: Conn, after_id: int) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(
        "SELECT * FROM pgtide.sync_log WHERE id > %s ORDER BY id", (after_id,)
    ).fetchall()


def row_image(conn: Conn, table: str, row_id: Any) -> dict[str, Any]:
    """The row as PostgreSQL renders it with to_jsonb (what the trigger logs)."""
    row = conn.execute(
        sql.SQL("SELECT to_jsonb(t) FROM {} t WHERE id = %s").format(sql.Identifier(table)),
        (row_id,),
    ).fetchone()
    assert row is not None
    image: dict[str, Any] = row[0]
    return image


def scalar(conn: Conn, query: str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def make_branch(conn: Conn, code: str = "B1") -> uuid.UUID:
    return scalar(  # type: ignore[no-any-return]
        conn,
        "INSERT INTO branches (code, name, city) VALUES (%s, %s, 'Porto') RETURNING id",
        (code, f"Branch {code}"),
    )


def make_product(
    conn: Conn, branch: uuid.UUID, sku: str = "SKU-1", price: str = "9.50", stock: int = 3
) -> uuid.UUID:
    return scalar(  # type: ignore[no-any-return]
        conn,
        "INSERT INTO products (branch_id, sku, name, price, stock)"
        " VALUES (%s, %s, 'Aspirin 500', %s, %s) RETURNING id",
        (branch, sku, price, stock),
    )


def make_client(conn: Conn, branch: uuid.UUID) -> uuid.UUID:
    return scalar(  # type: ignore[no-any-return]
        conn,
        "INSERT INTO clients (branch_id, full_name, email) VALUES (%s, 'Ana Lima', 'ana@x.pt')"
        " RETURNING id",
        (branch,),
    )


@pytest.fixture
def listener(db_url: str) -> Iterator[Conn]:
    """A second autocommit connection listening on the doorbell channel."""
    with db.connect(db_url) as c:
        c.execute(sql.SQL("LISTEN {}").format(sql.Identifier(DOORBELL)))
        yield c


@pytest.fixture
def other(db_url: str) -> Iterator[Conn]:
    """A second autocommit connection (another session)."""
    with db.connect(db_url) as c:
        yield c


@pytest.fixture
def user_table(conn: Conn) -> str:
    """A user's own table (not one of the demo tables) with a composite primary key."""
    conn.execute(
        "CREATE TABLE shelf_items (region text, n integer, label text, qty integer,"
        " PRIMARY KEY (region, n))"
    )
    return "shelf_items"


# --- INSERT / UPDATE / DELETE / TRUNCATE


def test_insert_logs_one_row_with_new_image_and_primary_key(conn: Conn) -> None:
    branch = make_branch(conn)
    product = make_product(conn, branch)

    (row,) = log_rows(conn, "products")
    assert row["op"] == "INSERT"
    assert (row["schema_name"], row["table_name"]) == ("public", "products")
    assert row["pk"] == {"id": str(product)}
    assert row["new_row"] == row_image(conn, "products", product)
    assert row["new_row"]["sku"] == "SKU-1"
    assert row["old_row"] is None
    assert row["changed"] is None
    assert row["at"] is not None


def test_update_logs_both_images_and_sorted_changed_columns_including_touch_columns(
    conn: Conn,
) -> None:
    branch = make_branch(conn)
    product = make_product(conn, branch)
    before = row_image(conn, "products", product)

    conn.execute("UPDATE products SET stock = 7, name = 'Aspirin 1g' WHERE id = %s", (product,))

    row = log_rows(conn, "products")[-1]
    assert row["op"] == "UPDATE"
    assert row["pk"] == {"id": str(product)}
    assert row["old_row"] == before
    assert row["new_row"] == row_image(conn, "products", product)
    # The touch trigger raised version and moved updated_at: they changed too.
    assert row["changed"] == sorted(["name", "stock", "updated_at", "version"])
    assert row["changed"] == ["name", "stock", "updated_at", "version"]
    assert row["new_row"]["version"] == before["version"] + 1


def test_delete_logs_old_image_only(conn: Conn) -> None:
    branch = make_branch(conn)
    product = make_product(conn, branch)
    before = row_image(conn, "products", product)

    conn.execute("DELETE FROM products WHERE id = %s", (product,))

    row = log_rows(conn, "products")[-1]
    assert row["op"] == "DELETE"
    assert row["pk"] == {"id": str(product)}
    assert row["old_row"] == before
    assert row["new_row"] is None
    assert row["changed"] is None


def test_truncate_logs_one_row_without_images(conn: Conn) -> None:
    branch = make_branch(conn)
    product = make_product(conn, branch)
    for qty in (1, 2, 3):
        conn.execute(
            "INSERT INTO stock_requests (branch_id, product_id, quantity) VALUES (%s, %s, %s)",
            (branch, product, qty),
        )
    start = max_log_id(conn)

    conn.execute("TRUNCATE stock_requests")

    (row,) = rows_after(conn, start)
    assert row["op"] == "TRUNCATE"
    assert (row["schema_name"], row["table_name"]) == ("public", "stock_requests")
    assert row["pk"] is None
    assert row["new_row"] is None
    assert row["old_row"] is None
    assert row["changed"] is None


def test_truncate_cascade_logs_one_truncate_per_truncated_tracked_table(conn: Conn) -> None:
    branch = make_branch(conn)
    make_client(conn, branch)
    start = max_log_id(conn)

    conn.execute("TRUNCATE clients CASCADE")  # cascades to appointments and orders

    rows = rows_after(conn, start)
    assert {r["op"] for r in rows} == {"TRUNCATE"}
    assert sorted(r["table_name"] for r in rows) == ["appointments", "clients", "orders"]


def test_txid_is_the_writing_transactions_xid_and_db_role_is_current_user(conn: Conn) -> None:
    with conn.transaction():
        xid = scalar(conn, "SELECT pg_current_xact_id()")
        branch = make_branch(conn)
        make_product(conn, branch)
    user = scalar(conn, "SELECT current_user")
    other_xid_row = make_branch(conn, "B2")

    rows = log_rows(conn)
    assert [r["txid"] for r in rows[:2]] == [xid, xid]
    assert rows[2]["txid"] != xid and rows[2]["pk"] == {"id": str(other_xid_row)}
    assert {r["db_role"] for r in rows} == {user}


@pytest.fixture
def writer_role(conn: Conn) -> Iterator[str]:
    """A throwaway login-less role allowed to write branches (dropped afterwards)."""
    role = f"pgtide_writer_{uuid.uuid4().hex[:8]}"
    ident = sql.Identifier(role)
    conn.execute(sql.SQL("CREATE ROLE {}").format(ident))
    try:
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON branches TO {}").format(ident))
        # What a writer of tracked tables needs: append to the log, read the doorbell flag.
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA pgtide TO {}").format(ident))
        conn.execute(sql.SQL("GRANT INSERT ON pgtide.sync_log TO {}").format(ident))
        conn.execute(sql.SQL("GRANT SELECT ON pgtide.sync_doorbell TO {}").format(ident))
        yield role
    finally:
        conn.execute("RESET ROLE")
        conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        conn.execute(sql.SQL("DROP ROLE {}").format(ident))


def test_db_role_is_the_role_that_made_the_write(conn: Conn, writer_role: str) -> None:
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(writer_role)))
        branch = make_branch(conn)
        conn.execute("UPDATE branches SET city = 'Braga' WHERE id = %s", (branch,))
    make_branch(conn, "B2")  # back to the connecting role
    me = scalar(conn, "SELECT current_user")

    rows = log_rows(conn, "branches")
    assert [r["db_role"] for r in rows] == [writer_role, writer_role, me]


def test_plain_sql_multi_row_update_logs_one_row_per_changed_row(conn: Conn) -> None:
    branch = make_branch(conn)
    a = make_product(conn, branch, "A", stock=1)
    b = make_product(conn, branch, "B", stock=5)  # already 5: this row does not change
    c = make_product(conn, branch, "C", stock=2)
    start = max_log_id(conn)

    cur = conn.execute("UPDATE products SET stock = 5 WHERE branch_id = %s", (branch,))
    assert cur.rowcount == 3

    rows = rows_after(conn, start)
    assert sorted(r["pk"]["id"] for r in rows) == sorted([str(a), str(c)])
    assert all(r["op"] == "UPDATE" for r in rows)
    assert all(r["changed"] == ["stock", "updated_at", "version"] for r in rows)
    assert len({r["txid"] for r in rows}) == 1
    assert scalar(conn, "SELECT version FROM products WHERE id = %s", (b,)) == 1


def test_every_demo_table_is_tracked_with_both_capture_triggers(conn: Conn) -> None:
    tracked = conn.execute(
        "SELECT table_name, pk_columns FROM pgtide.sync_tracked ORDER BY table_name"
    ).fetchall()
    assert tracked == [(t, ["id"]) for t in DOMAIN_TABLES]
    for table in DOMAIN_TABLES:
        triggers = conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname LIKE 'pgtide%%'"
            " ORDER BY tgname",
            (table,),
        ).fetchall()
        assert triggers == [("pgtide_capture",), ("pgtide_capture_truncate",)], table


# --- what is not a change


def test_noop_update_logs_nothing_and_keeps_version(conn: Conn) -> None:
    branch = make_branch(conn)
    product = make_product(conn, branch)
    before = row_image(conn, "products", product)
    start = max_log_id(conn)

    conn.execute("UPDATE products SET name = name, price = 9.50 WHERE id = %s", (product,))
    conn.execute("UPDATE products SET stock = stock WHERE branch_id = %s", (branch,))

    assert rows_after(conn, start) == []
    assert row_image(conn, "products", product) == before  # version and updated_at unchanged


def test_noop_update_on_a_user_table_logs_nothing(conn: Conn, user_table: str) -> None:
    conn.execute("SELECT pgtide.track_v1(%s)", (user_table,))
    conn.execute("INSERT INTO shelf_items VALUES ('eu', 1, 'x', 1)")
    start = max_log_id(conn)

    conn.execute("UPDATE shelf_items SET label = 'x', qty = 1")

    assert rows_after(conn, start) == []


def test_rolled_back_transaction_leaves_nothing(conn: Conn) -> None:
    branch = make_branch(conn)
    start = max_log_id(conn)

    with conn.transaction(force_rollback=True):
        product = make_product(conn, branch)
        conn.execute("UPDATE products SET stock = 9 WHERE id = %s", (product,))
        conn.execute("DELETE FROM products WHERE id = %s", (product,))
        conn.execute("SELECT pgtide.publish('rolled-back', '{}')")

    assert rows_after(conn, start) == []


def test_rolled_back_savepoint_drops_only_its_own_rows(conn: Conn) -> None:
    branch = make_branch(conn)
    start = max_log_id(conn)

    with conn.transaction():
        xid = scalar(conn, "SELECT pg_current_xact_id()")
        kept_before = make_product(conn, branch, "BEFORE")
        with conn.transaction(force_rollback=True):  # SAVEPOINT ... ROLLBACK TO SAVEPOINT
            make_product(conn, branch, "INSIDE")
            conn.execute("UPDATE products SET stock = 99 WHERE id = %s", (kept_before,))
        with conn.transaction():  # a released savepoint keeps its rows
            kept_released = make_product(conn, branch, "RELEASED")
        kept_after = make_product(conn, branch, "AFTER")

    rows = rows_after(conn, start)
    assert [(r["op"], r["pk"]["id"]) for r in rows] == [
        ("INSERT", str(kept_before)),
        ("INSERT", str(kept_released)),
        ("INSERT", str(kept_after)),
    ]
    assert {r["txid"] for r in rows} == {xid}  # the top-level transaction's id
    assert scalar(conn, "SELECT count(*) FROM products WHERE sku = 'INSIDE'") == 0
    assert scalar(conn, "SELECT stock FROM products WHERE id = %s", (kept_before,)) == 3


# --- actor / origin / mutation id


def test_actor_origin_and_mutation_id_are_recorded_when_set_locally(conn: Conn) -> None:
    with conn.transaction():
        conn.execute("SET LOCAL pgtide.actor = 'ana@branch-1'")
        conn.execute("SET LOCAL pgtide.origin = 'pos-terminal-3'")
        conn.execute("SET LOCAL pgtide.mutation_id = 'm-0001'")
        branch = make_branch(conn)
        conn.execute("UPDATE branches SET city = 'Lisboa' WHERE id = %s", (branch,))
        conn.execute("SELECT pgtide.publish('greeting', '{\"hi\": true}')")
        conn.execute("TRUNCATE stock_requests")

    rows = log_rows(conn)
    assert [r["op"] for r in rows] == ["INSERT", "UPDATE", "MESSAGE", "TRUNCATE"]
    for r in rows:
        assert (r["actor"], r["origin"], r["mutation_id"]) == (
            "ana@branch-1",
            "pos-terminal-3",
            "m-0001",
        )


def test_actor_origin_and_mutation_id_are_null_when_not_set(conn: Conn) -> None:
    make_branch(conn)
    (row,) = log_rows(conn)
    assert (row["actor"], row["origin"], row["mutation_id"]) == (None, None, None)


def test_set_local_does_not_leak_into_the_next_transaction(conn: Conn) -> None:
    with conn.transaction():
        conn.execute("SET LOCAL pgtide.actor = 'ana'")
        conn.execute("SET LOCAL pgtide.origin = 'api'")
        conn.execute("SET LOCAL pgtide.mutation_id = 'm-1'")
        make_branch(conn, "B1")
    with conn.transaction():  # same connection, next transaction
        make_branch(conn, "B2")
    make_branch(conn, "B3")  # and an autocommit statement

    rows = log_rows(conn)
    assert [(r["actor"], r["origin"], r["mutation_id"]) for r in rows] == [
        ("ana", "api", "m-1"),
        (None, None, None),
        (None, None, None),
    ]


# --- version / updated_at


def test_version_rises_by_exactly_one_and_updated_at_moves_on_every_real_update(
    conn: Conn,
) -> None:
    branch = make_branch(conn)
    product = make_product(conn, branch)
    seen = [
        conn.execute(
            "SELECT version, updated_at FROM products WHERE id = %s", (product,)
        ).fetchone()
    ]
    for stock in (4, 5, 6):
        conn.execute("UPDATE products SET stock = %s WHERE id = %s", (stock, product))
        seen.append(
            conn.execute(
                "SELECT version, updated_at FROM products WHERE id = %s", (product,)
            ).fetchone()
        )
    versions = [v for v, _ in seen]  # type: ignore[misc]
    stamps = [t for _, t in seen]  # type: ignore[misc]
    assert versions == [1, 2, 3, 4]
    assert stamps == sorted(stamps) and len(set(stamps)) == 4

    updates = [r for r in log_rows(conn, "products") if r["op"] == "UPDATE"]
    assert [(r["old_row"]["version"], r["new_row"]["version"]) for r in updates] == [
        (1, 2),
        (2, 3),
        (3, 4),
    ]


def test_version_cannot_be_set_by_the_writer(conn: Conn) -> None:
    branch = make_branch(conn)
    product = make_product(conn, branch)

    conn.execute("UPDATE products SET version = 42, stock = 8 WHERE id = %s", (product,))

    assert scalar(conn, "SELECT version FROM products WHERE id = %s", (product,)) == 2


# --- tracking user tables


def test_tracked_user_table_with_composite_key_logs_both_key_columns(
    conn: Conn, user_table: str
) -> None:
    cols = scalar(conn, "SELECT pgtide.track_v1(%s)", (user_table,))
    assert cols == ["region", "n"]
    assert conn.execute(
        "SELECT pk_columns FROM pgtide.sync_tracked "
        "WHERE schema_name = 'public' AND table_name = %s",
        (user_table,),
    ).fetchall() == [(["region", "n"],)]

    conn.execute("INSERT INTO shelf_items VALUES ('eu', 7, 'gauze', 10)")
    conn.execute("UPDATE shelf_items SET qty = 11 WHERE region = 'eu' AND n = 7")
    conn.execute("DELETE FROM shelf_items")

    rows = log_rows(conn, user_table)
    assert [r["op"] for r in rows] == ["INSERT", "UPDATE", "DELETE"]
    assert all(r["pk"] == {"region": "eu", "n": 7} for r in rows)
    assert rows[0]["new_row"] == {"region": "eu", "n": 7, "label": "gauze", "qty": 10}
    assert rows[1]["changed"] == ["qty"]  # no touch trigger on a user's table
    assert rows[2]["old_row"] == {"region": "eu", "n": 7, "label": "gauze", "qty": 11}


def test_tracked_table_in_another_schema_with_quoted_names(conn: Conn) -> None:
    conn.execute('CREATE SCHEMA "Shop"')
    conn.execute('CREATE TABLE "Shop"."Line Items" ("Item Id" integer PRIMARY KEY, "Qty" int)')
    assert scalar(conn, "SELECT pgtide.track_v1(%s)", ('"Shop"."Line Items"',)) == ["Item Id"]

    conn.execute('INSERT INTO "Shop"."Line Items" VALUES (1, 2)')

    (row,) = log_rows(conn, "Line Items")
    assert (row["schema_name"], row["table_name"]) == ("Shop", "Line Items")
    assert row["pk"] == {"Item Id": 1}


def test_table_without_primary_key_is_refused_with_a_clear_message(conn: Conn) -> None:
    conn.execute("CREATE TABLE notes (body text)")

    with pytest.raises(psycopg.errors.InvalidTableDefinition, match="no primary key"):
        conn.execute("SELECT pgtide.track_v1('notes')")

    assert scalar(conn, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'notes'::regclass") == 0
    assert scalar(conn, "SELECT count(*) FROM pgtide.sync_tracked WHERE table_name = 'notes'") == 0


def test_tracking_a_nonexistent_table_errors(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.UndefinedTable, match="no_such_table"):
        conn.execute("SELECT pgtide.track_v1('no_such_table')")


def test_tracking_a_view_is_refused(conn: Conn) -> None:
    conn.execute("CREATE VIEW branch_names AS SELECT id, name FROM branches")
    with pytest.raises(psycopg.errors.WrongObjectType, match="not a table"):
        conn.execute("SELECT pgtide.track_v1('branch_names')")


def test_tracking_pgtides_own_tables_is_refused(conn: Conn) -> None:
    engine = ("sync_log", "sync_order", "sync_sequencer", "sync_tracked", "sync_tokens",
              "sync_seal", "sync_apps", "sync_mutations", "_yoyo_migration")  # fmt: skip
    for table in (f"pgtide.{t}" for t in engine):
        with pytest.raises(psycopg.errors.WrongObjectType, match="belongs to pgtide"):
            conn.execute("SELECT pgtide.track_v1(%s)", (table,))
        triggers = scalar(
            conn,
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass"
            " AND tgname LIKE 'pgtide_capture%%'",
            (table,),
        )
        assert triggers == 0, table


def test_track_is_idempotent(conn: Conn, user_table: str) -> None:
    conn.execute("SELECT pgtide.track_v1(%s)", (user_table,))
    conn.execute("SELECT pgtide.track_v1(%s)", (user_table,))

    triggers = conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass ORDER BY tgname", (user_table,)
    ).fetchall()
    assert triggers == [("pgtide_capture",), ("pgtide_capture_truncate",)]
    assert (
        scalar(
            conn, "SELECT count(*) FROM pgtide.sync_tracked WHERE table_name = %s", (user_table,)
        )
        == 1
    )

    conn.execute("INSERT INTO shelf_items VALUES ('eu', 1, 'x', 1)")
    conn.execute("TRUNCATE shelf_items")
    assert [r["op"] for r in log_rows(conn, user_table)] == ["INSERT", "TRUNCATE"]


def test_tracking_a_demo_table_again_keeps_one_row_per_change(conn: Conn) -> None:
    conn.execute("SELECT pgtide.track_v1('public.branches')")
    make_branch(conn)
    assert len(log_rows(conn, "branches")) == 1


def test_untrack_stops_capture(conn: Conn, user_table: str) -> None:
    conn.execute("SELECT pgtide.track_v1(%s)", (user_table,))
    conn.execute("INSERT INTO shelf_items VALUES ('eu', 1, 'x', 1)")

    assert scalar(conn, "SELECT pgtide.untrack_v1(%s)", (user_table,)) is True
    conn.execute("INSERT INTO shelf_items VALUES ('eu', 2, 'y', 1)")
    conn.execute("UPDATE shelf_items SET qty = 5")
    conn.execute("DELETE FROM shelf_items WHERE n = 1")
    conn.execute("TRUNCATE shelf_items")

    assert [r["op"] for r in log_rows(conn, user_table)] == ["INSERT"]
    assert (
        scalar(
            conn, "SELECT count(*) FROM pgtide.sync_tracked WHERE table_name = %s", (user_table,)
        )
        == 0
    )
    assert (
        scalar(conn, "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass", (user_table,))
        == 0
    )
    assert scalar(conn, "SELECT pgtide.untrack_v1(%s)", (user_table,)) is False


def test_untracking_a_demo_table_stops_its_capture_only(conn: Conn) -> None:
    conn.execute("SELECT pgtide.untrack_v1('products')")
    branch = make_branch(conn)
    make_product(conn, branch)
    assert [r["table_name"] for r in log_rows(conn)] == ["branches"]


# --- append-only guard


def test_update_delete_truncate_on_sync_log_are_rejected(conn: Conn) -> None:
    make_branch(conn)
    before = log_rows(conn)

    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute("UPDATE pgtide.sync_log SET actor = 'mallory'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute("DELETE FROM pgtide.sync_log")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute("TRUNCATE pgtide.sync_log CASCADE")
    # Plain TRUNCATE is stopped earlier by pgtide.sync_order's foreign key; either way, refused.
    with pytest.raises(psycopg.errors.Error):
        conn.execute("TRUNCATE pgtide.sync_log")

    assert log_rows(conn) == before


def test_update_delete_truncate_on_sync_order_are_rejected(conn: Conn) -> None:
    make_branch(conn)
    conn.execute(
        "INSERT INTO pgtide.sync_order (seq, log_id) SELECT 1, min(id) FROM pgtide.sync_log"
    )

    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute("UPDATE pgtide.sync_order SET seq = 2")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute("DELETE FROM pgtide.sync_order")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute("TRUNCATE pgtide.sync_order")

    assert conn.execute("SELECT seq FROM pgtide.sync_order").fetchall() == [(1,)]


def test_retention_may_delete_but_still_not_update(conn: Conn) -> None:
    make_branch(conn, "B1")
    make_branch(conn, "B2")
    first, second = (r["id"] for r in log_rows(conn))
    conn.execute("INSERT INTO pgtide.sync_order (seq, log_id) VALUES (1, %s)", (first,))

    with conn.transaction():
        conn.execute("SET LOCAL pgtide.retention = 'on'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("UPDATE pgtide.sync_log SET actor = 'retention'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("UPDATE pgtide.sync_order SET seq = 5")
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("TRUNCATE pgtide.sync_order")
        assert (
            conn.execute("DELETE FROM pgtide.sync_order WHERE log_id = %s", (first,)).rowcount == 1
        )
        assert conn.execute("DELETE FROM pgtide.sync_log WHERE id = %s", (first,)).rowcount == 1

    assert [r["id"] for r in log_rows(conn)] == [second]
    assert scalar(conn, "SELECT count(*) FROM pgtide.sync_order") == 0
    # The door closes with the transaction.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM pgtide.sync_log")


def test_retention_door_opens_only_for_on(conn: Conn) -> None:
    make_branch(conn)
    for value in ("off", "true", "1", "ON", ""):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("SELECT set_config('pgtide.retention', %s, true)", (value,))
            conn.execute("DELETE FROM pgtide.sync_log")
    assert log_count(conn) == 1


# --- pgtide.publish


def test_publish_logs_a_message_row(conn: Conn) -> None:
    with conn.transaction():
        xid = scalar(conn, "SELECT pg_current_xact_id()")
        log_id = scalar(conn, "SELECT pgtide.publish('topic', '{\"a\":1}')")

    (row,) = log_rows(conn)
    assert row["id"] == log_id
    assert row["op"] == "MESSAGE"
    assert (row["schema_name"], row["table_name"]) == ("pgtide", "topic")
    assert row["new_row"] == {"a": 1}
    assert (row["pk"], row["old_row"], row["changed"]) == (None, None, None)
    assert row["txid"] == xid


def test_publish_is_ordered_with_the_transactions_row_changes(conn: Conn) -> None:
    with conn.transaction():
        make_branch(conn, "B1")
        conn.execute("SELECT pgtide.publish('branch-opened', '{\"code\": \"B1\"}')")
        make_branch(conn, "B2")
    assert [r["op"] for r in log_rows(conn)] == ["INSERT", "MESSAGE", "INSERT"]


def test_publish_only_logs_if_its_transaction_commits(conn: Conn) -> None:
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT pgtide.publish('topic', '{\"a\":1}')")
    assert log_count(conn) == 0


def test_publish_rejects_an_empty_topic(conn: Conn) -> None:
    for topic in ("", None):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="topic"):
            conn.execute("SELECT pgtide.publish(%s::text, '{}'::jsonb)", (topic,))
    assert log_count(conn) == 0


# --- doorbell


def test_write_rings_the_doorbell_while_the_sequencer_sleeps(conn: Conn, listener: Conn) -> None:
    conn.execute("SELECT setval('pgtide.sync_doorbell', 1)")
    make_branch(conn)

    notes = list(listener.notifies(timeout=10, stop_after=1))
    assert [n.channel for n in notes] == [DOORBELL]


def test_publish_rings_the_doorbell(conn: Conn, listener: Conn) -> None:
    conn.execute("SELECT setval('pgtide.sync_doorbell', 1)")
    conn.execute("SELECT pgtide.publish('t', '{}')")
    assert len(list(listener.notifies(timeout=10, stop_after=1))) == 1


def test_truncate_rings_the_doorbell(conn: Conn, listener: Conn) -> None:
    conn.execute("SELECT setval('pgtide.sync_doorbell', 1)")
    conn.execute("TRUNCATE stock_requests")
    assert len(list(listener.notifies(timeout=10, stop_after=1))) == 1


def test_a_transaction_rings_once_however_many_rows_it_writes(conn: Conn, listener: Conn) -> None:
    conn.execute("SELECT setval('pgtide.sync_doorbell', 1)")
    with conn.transaction():
        branch = make_branch(conn)
        for sku in ("A", "B", "C"):
            make_product(conn, branch, sku)
    assert len(list(listener.notifies(timeout=10, stop_after=1))) == 1
    assert list(listener.notifies(timeout=0)) == []  # delivered together, at commit


def test_write_is_silent_while_the_sequencer_polls(conn: Conn, listener: Conn) -> None:
    conn.execute("SELECT setval('pgtide.sync_doorbell', 0)")
    branch = make_branch(conn)
    conn.execute("UPDATE branches SET city = 'Faro' WHERE id = %s", (branch,))
    assert log_count(conn) == 2  # committed and captured...

    assert list(listener.notifies(timeout=0.3)) == []  # ...but no NOTIFY

    # The listener does work: raise the flag and the next write rings.
    conn.execute("SELECT setval('pgtide.sync_doorbell', 1)")
    make_branch(conn, "B2")
    assert len(list(listener.notifies(timeout=10, stop_after=1))) == 1


def test_doorbell_sees_a_flag_raised_after_a_repeatable_read_snapshot(
    db_url: str, other: Conn, listener: Conn
) -> None:
    other.execute("SELECT setval('pgtide.sync_doorbell', 0)")
    with db.connect(db_url) as writer:
        writer.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with writer.transaction():
            assert scalar(writer, "SHOW transaction_isolation") == "repeatable read"
            scalar(writer, "SELECT count(*) FROM branches")  # the snapshot is taken here
            # Another session raises the flag.
            other.execute("SELECT setval('pgtide.sync_doorbell', 1)")
            make_branch(writer)
            assert list(listener.notifies(timeout=0)) == []  # nothing before commit
    notes = list(listener.notifies(timeout=10, stop_after=1))
    assert [n.channel for n in notes] == [DOORBELL]


def test_doorbell_sees_a_flag_lowered_after_a_repeatable_read_snapshot(
    db_url: str, other: Conn, listener: Conn
) -> None:
    other.execute("SELECT setval('pgtide.sync_doorbell', 1)")
    with db.connect(db_url) as writer:
        writer.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with writer.transaction():
            scalar(writer, "SELECT count(*) FROM branches")
            other.execute("SELECT setval('pgtide.sync_doorbell', 0)")
            make_branch(writer)
    assert log_count(other) == 1
    assert list(listener.notifies(timeout=0.3)) == []


def test_rolled_back_write_does_not_ring(conn: Conn, listener: Conn) -> None:
    conn.execute("SELECT setval('pgtide.sync_doorbell', 1)")
    with conn.transaction(force_rollback=True):
        make_branch(conn)
    make_branch(conn, "B2")  # a committed write afterwards rings exactly once
    assert len(list(listener.notifies(timeout=10, stop_after=1))) == 1
    assert list(listener.notifies(timeout=0)) == []


# --- traps (docs/design.md)


def test_sync_log_identity_keeps_cache_1(conn: Conn) -> None:
    seq = scalar(conn, "SELECT pg_get_serial_sequence('pgtide.sync_log', 'id')")
    assert seq is not None
    cache = scalar(
        conn,
        "SELECT cache_size FROM pg_sequences WHERE format('%%I.%%I', schemaname, sequencename)"
        " = %s",
        (seq,),
    )
    assert cache == 1


def test_log_ids_follow_commit_time_across_sessions(conn: Conn, other: Conn) -> None:
    # With a per-session cache, the second session would take ids from its own block.
    make_branch(conn, "B1")
    make_branch(other, "B2")
    make_branch(conn, "B3")
    make_branch(other, "B4")
    ids = [r["id"] for r in log_rows(conn)]
    assert ids == list(range(ids[0], ids[0] + 4))


def test_xid8_compares_numerically_not_as_text(conn: Conn) -> None:
    assert scalar(conn, "SELECT '999'::xid8 < '1000'::xid8") is True
    assert scalar(conn, "SELECT '999'::text < '1000'::text COLLATE \"C\"") is False  # the trap
    assert (
        scalar(
            conn,
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'pgtide.sync_log'::regclass AND attname = 'txid'",
        )
        == "xid8"
    )


def test_txid_index_serves_a_range_from_a_bound_xid8(conn: Conn) -> None:
    # Enough rows (with synthetic txids crossing powers of ten) for the planner to
    # prefer the index on its own.
    conn.execute(
        "INSERT INTO pgtide.sync_log (txid, schema_name, table_name, op)"
        " SELECT (990 + i)::text::xid8, 'public', 'x', 'MESSAGE' FROM generate_series(1, 20000) i"
    )
    conn.execute("ANALYZE pgtide.sync_log")
    assert (
        scalar(conn, "SELECT count(*) FROM pgtide.sync_log WHERE txid >= %s::xid8", ("20985",)) == 6
    )
    assert [
        r[0]
        for r in conn.execute(
            "SELECT txid FROM pgtide.sync_log WHERE txid >= '999'::xid8 ORDER BY txid LIMIT 2"
        )
    ] == [999, 1000]

    with conn.transaction():
        conn.execute("PREPARE since(xid8) AS SELECT * FROM pgtide.sync_log WHERE txid >= $1")
        conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN EXECUTE since('20985')"))
        conn.execute("DEALLOCATE since")
    assert "sync_log_txid_idx" in plan, plan

    # Compared as text, the index is useless (and the answer is wrong).
    text_plan = "\n".join(
        r[0]
        for r in conn.execute("EXPLAIN SELECT * FROM pgtide.sync_log WHERE txid::text >= '20985'")
    )
    assert "sync_log_txid_idx" not in text_plan


# --- changed columns: locale-independent


@pytest.fixture
def icu_db_url(server_url: str, server_version: int) -> Iterator[str]:
    """A freshly migrated database whose default collation is ICU English (not C)."""
    if server_version < 150000:
        pytest.skip("database-level ICU collations need PostgreSQL 15")
    name = f"pgtide_icu_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        try:
            admin.execute(
                sql.SQL(
                    "CREATE DATABASE {} TEMPLATE template0 LOCALE_PROVIDER icu"
                    " ICU_LOCALE 'en' LOCALE 'C'"
                ).format(sql.Identifier(name))
            )
        except psycopg.Error as exc:  # a server built without ICU
            pytest.skip(f"no ICU on this server: {exc}")
    try:
        url = with_dbname(server_url, name)
        migrate(url)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def test_changed_columns_are_in_code_point_order_whatever_the_database_collation(
    icu_db_url: str,
) -> None:
    with db.connect(icu_db_url) as c:
        c.execute('CREATE TABLE mixed (id int PRIMARY KEY, "B" int, a int, a_b int, ab int)')
        c.execute("SELECT pgtide.track_v1('mixed')")
        c.execute("INSERT INTO mixed VALUES (1, 0, 0, 0, 0)")
        c.execute('UPDATE mixed SET "B" = 1, a = 1, a_b = 1, ab = 1')
        changed = log_rows(c, "mixed")[-1]["changed"]
    assert changed == sorted(["B", "a", "a_b", "ab"]) == ["B", "a", "a_b", "ab"]


# --- demo table constraints


def test_stock_request_quantity_must_be_positive(conn: Conn) -> None:
    branch = make_branch(conn)
    product = make_product(conn, branch)
    for qty in (-1, 0):
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO stock_requests (branch_id, product_id, quantity) VALUES (%s, %s, %s)",
                (branch, product, qty),
            )
    assert log_rows(conn, "stock_requests") == []


def test_product_price_and_stock_must_not_be_negative(conn: Conn) -> None:
    branch = make_branch(conn)
    with pytest.raises(psycopg.errors.CheckViolation):
        make_product(conn, branch, price="-0.01")
    product = make_product(conn, branch, price="0")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE products SET stock = -1 WHERE id = %s", (product,))


def test_unknown_status_is_rejected(conn: Conn) -> None:
    branch = make_branch(conn)
    client = make_client(conn, branch)
    product = make_product(conn, branch)
    inserts = {  # table: (insert with the status last, other values, a valid status)
        "orders": (
            "INSERT INTO orders (branch_id, client_id, status) VALUES (%s, %s, %s)",
            (branch, client),
            "paid",
        ),
        "appointments": (
            "INSERT INTO appointments (branch_id, client_id, starts_at, status)"
            " VALUES (%s, %s, now(), %s)",
            (branch, client),
            "confirmed",
        ),
        "stock_requests": (
            "INSERT INTO stock_requests (branch_id, product_id, quantity, status)"
            " VALUES (%s, %s, 1, %s)",
            (branch, product),
            "approved",
        ),
    }
    for table, (query, params, valid) in inserts.items():
        with pytest.raises(psycopg.errors.CheckViolation, match=f"{table}_status_check"):
            conn.execute(query, (*params, "teleported"))
        conn.execute(query, (*params, valid))
        assert [r["op"] for r in log_rows(conn, table)] == ["INSERT"], table


def test_a_partitioned_table_is_logged_under_the_parent_name(conn: Conn) -> None:
    conn.execute(
        b"""CREATE TABLE ev (id int, day date, v text, PRIMARY KEY (id, day))
              PARTITION BY RANGE (day);
            CREATE TABLE ev_2024 PARTITION OF ev FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
            SELECT pgtide.track_v1('ev');"""
    )
    conn.execute("INSERT INTO ev VALUES (1, '2024-03-01', 'a')")
    conn.execute("UPDATE ev SET v = 'b'")
    conn.execute("TRUNCATE ev")
    rows = conn.execute(
        "SELECT schema_name, table_name, op, pk FROM pgtide.sync_log ORDER BY id"
    ).fetchall()
    assert rows == [
        ("public", "ev", "INSERT", {"id": 1, "day": "2024-03-01"}),
        ("public", "ev", "UPDATE", {"id": 1, "day": "2024-03-01"}),
        ("public", "ev", "TRUNCATE", None),
    ]
