"""The container path, without a Docker daemon: the wheel (not an editable install) in a
fresh virtualenv runs the Dockerfile's command against an empty database, with the first
token given as a secret file, up to a served `/ready` and an authenticated request."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.conftest import drop_database, with_dbname
from tests.live import free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent


def dockerfile_command() -> list[str]:
    found = re.search(r"^CMD \[(.*)\]$", (ROOT / "Dockerfile").read_text(), re.M)
    assert found, "the Dockerfile has no CMD"
    return [part.strip().strip('"') for part in found.group(1).split(",")]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the project's wheel and its dependencies; its bin folder."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(work / "dist"), str(ROOT)], check=True, timeout=300)  # fmt: skip
    wheel = next((work / "dist").glob("pgtide-*.whl"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check", str(wheel)]  # fmt: skip
    done = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"installing the wheel failed: {done.stderr[-2000:]}")
    return venv / "bin"


@pytest.fixture
def empty_db(server_url: str) -> Iterator[str]:
    name = f"pgtide_box_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_dbname(server_url, name)
    finally:
        drop_database(server_url, name)


def test_the_image_command_serves_an_empty_database_with_a_bootstrap_token(
    installed: Path, empty_db: str, tmp_path: Path
) -> None:
    token = "pgt_" + secrets.token_urlsafe(32)
    secret = tmp_path / "admin_token"
    secret.write_text(token + "\n")
    command = dockerfile_command()
    assert command[:2] == ["pgtide", "serve"]
    port = free_port()
    args = [str(installed / "pgtide"), *command[1:]]
    args[args.index("--port") + 1] = str(port)
    args[args.index("--host") + 1] = "127.0.0.1"
    workdir = tmp_path / "home"  # not the checkout: only the installed wheel is importable
    workdir.mkdir()
    env = {"PATH": f"{installed}:/usr/bin:/bin", "HOME": str(workdir), "DATABASE_URL": empty_db,
           "PGTIDE_BOOTSTRAP_TOKEN_FILE": str(secret), "PGTIDE_LOG_LEVEL": "warning"}  # fmt: skip
    proc = subprocess.Popen(args, env=env, cwd=workdir)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, 90)
        auth = {"Authorization": f"Bearer {token}"}
        log = httpx.get(f"http://127.0.0.1:{port}/api/sync-log", headers=auth, timeout=30)
        assert log.status_code == 200, log.text
        anonymous = httpx.get(f"http://127.0.0.1:{port}/api/sync-log", timeout=30)
        assert anonymous.status_code == 401
    finally:
        proc.terminate()
        proc.wait(30)
    site = next((installed.parent / "lib").glob("python3*/site-packages"))
    assert (site / "cdc" / "schema" / "migrations").is_dir()  # the wheel carries the SQL
    assert shutil.which("pgtide", path=str(installed)) is not None
    assert os.path.realpath(site) not in {os.path.realpath(p) for p in sys.path}


def test_the_bootstrap_token_is_created_once_and_replaced_when_the_secret_changes(
    conn: psycopg.Connection[object],
) -> None:
    from cdc import tokens

    first, second = ("pgt_" + secrets.token_urlsafe(32) for _ in range(2))
    assert tokens.ensure_bootstrap(conn, first + "\n", None) is True
    assert tokens.ensure_bootstrap(conn, first, None) is False  # a restart changes nothing

    def stored() -> object:
        return conn.execute("SELECT token_hash, scopes FROM pgtide.sync_tokens"
                            " WHERE name = 'bootstrap'").fetchone()  # fmt: skip

    assert stored() == (tokens.hash_token(first, None), ["admin"])
    tokens.revoke(conn, "bootstrap")
    assert tokens.ensure_bootstrap(conn, second, None) is True  # rotated, and revived
    assert stored() == (tokens.hash_token(second, None), ["admin"])
    for weak in ("", "secret", "pgt_short", "x" * 60):
        with pytest.raises(tokens.TokenError, match="must be pgt_ and 43"):
            tokens.ensure_bootstrap(conn, weak, None)
