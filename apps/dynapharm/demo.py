"""Dynapharm's demo data set, loaded by `pgtide demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg


def load_data(conn: psycopg.Connection[Any]) -> bool:
    """Load the demo data set once; False if branches already hold data."""
    row = conn.execute("SELECT count(*) FROM public.branches").fetchone()
    if row and row[0] > 0:
        return False
    text = (Path(__file__).with_name("demo.sql")).read_text(encoding="utf-8")
    with conn.transaction():
        conn.execute(text.encode())  # bytes: several statements, no placeholders
    return True
