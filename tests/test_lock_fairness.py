"""A writer waiting for the warehouse's lock is not starved by readers: readers that arrive after it wait."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from resources.warehouse import WRITER_WAITING_SUFFIX, WarehouseResource

PROJECT_DIR = Path(__file__).resolve().parent.parent

HOLD_A_READ_LOCK = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print("holding", flush=True)
sys.stdin.readline()  # until the test says so
"""


def test_a_reader_arriving_while_a_writer_waits_goes_after_the_writer(tmp_path: Path):
    path = str(tmp_path / "warehouse.duckdb")
    with duckdb.connect(path) as con:
        con.execute("CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1)")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_A_READ_LOCK, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"  # another process's read lock: the writer must wait

    def write() -> None:
        with WarehouseResource(path=path, lock_timeout_s=60).connect() as con:
            con.execute("UPDATE t SET v = 2")

    writer = threading.Thread(target=write)
    writer.start()
    intent = Path(path + WRITER_WAITING_SUFFIX)
    while not intent.exists():  # the writer has tried the lock once and announced itself
        assert writer.is_alive()
    # A reader as the API server has them; it would share the read lock with the holder at once.
    reader = subprocess.Popen([sys.executable, "-c", READ, path], stdout=subprocess.PIPE, text=True,
                              cwd=PROJECT_DIR, env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)})
    assert reader.stdout.readline().strip() == "connecting"
    time.sleep(1)  # time to attach, if it does not hold off
    holder.stdin.write("release\n")
    holder.stdin.close()
    holder.wait(timeout=30)
    writer.join(timeout=60)
    assert reader.communicate(timeout=60)[0].strip() == "2"  # the reader went after the writer
    assert not intent.exists()


READ = """
import sys
import sqlalchemy as sa
from resources.warehouse import attached_engine

engine = attached_engine(sys.argv[1])
print("connecting", flush=True)
with engine.connect() as conn:
    print(conn.execute(sa.text("SELECT v FROM t")).scalar())
"""


def test_a_reader_locked_out_for_too_long_is_told_to_retry(tmp_path: Path):
    """The API answers 503 TEMPORARILY_UNAVAILABLE (retry), not 500, when a writer keeps the file past its wait."""
    from orchestration.api import api_error
    from resources.warehouse import attached_engine

    path = str(tmp_path / "warehouse.duckdb")
    duckdb.connect(path).close()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_A_READ_LOCK.replace("read_only=True", "read_only=False"),
                               path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    try:
        with pytest.raises(Exception) as locked_out, attached_engine(path, lock_timeout_s=0.3).connect():
            pass
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    error = api_error(locked_out.value)
    assert (error.status, error.error_code) == (503, "TEMPORARILY_UNAVAILABLE")


WRITE = """
import sys
from resources.warehouse import WarehouseResource

with WarehouseResource(path=sys.argv[1], lock_timeout_s=float(sys.argv[2])).connect() as con:
    con.execute("UPDATE t SET v = v + 1")
print("written", flush=True)
"""


@pytest.mark.parametrize("requests", ["a steady stream of requests", "one request, then none"])
def test_a_writer_gets_the_file_the_server_keeps_attached(requests: str, tmp_path: Path):
    """The API server keeps the file attached between requests; a writer that announces itself gets it within its
    lock timeout, whether the requests go on (the server detaches before the next one) or stop (it detaches
    when idle)."""
    from resources.warehouse import attached_engine

    path = str(tmp_path / "warehouse.duckdb")
    with duckdb.connect(path) as con:
        con.execute("CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1)")
    engine = attached_engine(path, lock_timeout_s=60)
    seen, done = [], threading.Event()

    def serve() -> None:
        while True:
            with engine.connect() as conn:
                seen.append(conn.execute(sa.text("SELECT v FROM t")).scalar())
            if requests == "one request, then none" or done.is_set():
                return

    server = threading.Thread(target=serve)
    server.start()
    while not seen:  # the file is attached
        time.sleep(0.001)
    writer = subprocess.run([sys.executable, "-c", WRITE, path, "5"], capture_output=True, text=True, timeout=60,
                            cwd=PROJECT_DIR, env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)})
    done.set()
    server.join(timeout=60)
    assert writer.stdout.strip() == "written", writer.stderr
    with engine.connect() as conn:  # attached again, the server reads what the writer wrote
        assert conn.execute(sa.text("SELECT v FROM t")).scalar() == 2
