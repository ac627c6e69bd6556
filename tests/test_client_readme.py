"""The README's pgtide_client example, verbatim, against a real server with auth."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from cdc import db, tokens
from pgtide_client import Replica
from tests.live import Server

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def example() -> str:
    found = re.search(
        r"<!-- client-example:start -->\n```python\n(.*?)```\n<!-- client-example:end -->",
        README, re.S,
    )  # fmt: skip
    assert found, "README has no client-example block"
    return found.group(1)


def test_the_readme_client_example_runs_as_written(db_url: str, tmp_path: Path) -> None:
    code = example()
    assert len(code.strip().splitlines()) <= 10
    with db.connect(db_url) as conn:
        token = tokens.create(conn, name="demo-admin", scopes=("read", "write"), branch_id=None,
                              expires_in=None, pepper=None)  # fmt: skip
    srv = Server(db_url, auth=True).start()
    try:
        env = {**os.environ, "PGTIDE_URL": srv.base, "PGTIDE_TOKEN": token}
        run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        srv.stop()
    assert run.returncode == 0, run.stderr
    assert run.stdout == "Porto\n"
    # What the process left on disk: the row, and the cursor a restart resumes from.
    with Replica(tmp_path / "branches.sqlite3") as replica:
        assert replica.cursor is not None
        assert [r["code"] for r in replica.rows("branches")] == ["OPO"]
