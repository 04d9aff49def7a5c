"""Several dlrd nodes on one PostgreSQL database (`[storage] backend = postgresql`), against a real server.

The receipt contract itself runs on both backends in test_protocol.py;
here is what only several nodes, or a database across a network, bring:
two nodes taking each other's retries, PostgreSQL stopped under load and
started again, migrations raced, journals merged, and the commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import Daemon, PgDatabase
from provider import receipt_envelope
from wire import KeepAliveClient, get, post, receipt_body, soap_report, wait_for

from dlrd.config import load_config
from dlrd.errors import ConfigError


@pytest.fixture
def pg(pg_cluster, tmp_path: Path) -> PgDatabase:
    return PgDatabase(pg_cluster, tmp_path)


@pytest.fixture
def nodes(pg: PgDatabase, tmp_path: Path):
    """Start dlrd nodes named as asked, all on one database; each must stop cleanly."""
    started: list[Daemon] = []

    def start(name: str, extra: str = "", wait: bool = True, **kwargs) -> Daemon:
        node = Daemon(tmp_path / name, pg)
        node.directory.mkdir(exist_ok=True)
        started.append(node)
        return node.start(f"[server]\nnode = {name}\n{extra}", wait=wait, **kwargs)

    yield start
    for node in started:
        if node.process is not None:
            code = node.stop()
            assert code == 0, f"dlrd exited {code} on SIGTERM:\n{node.log()}"


def dlrd(ini: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if key != "DLRD_CONFIG"} | (env or {})
    return subprocess.run([sys.executable, "-m", "dlrd", "--config", str(ini), *args], capture_output=True,
                          text=True, timeout=60, env=environ, cwd=ini.parent)


def write_ini(path: Path, pg: PgDatabase, extra: str = "") -> Path:
    path.write_text(f"{pg.ini()}[journal]\ndirectory = {path.parent / 'journal'}\n{extra}")
    return path


# The backend setting.


def test_a_password_in_the_dsn_is_refused_and_the_ini_names_where_it_goes(tmp_path: Path):
    ini = tmp_path / "dlrd.ini"
    ini.write_text("[storage]\nbackend = postgresql\ndsn = host=db1 dbname=dlrd user=dlrd password=hunter2\n")

    with pytest.raises(ConfigError, match="holds a password; remove it and give it with password_file"):
        load_config(str(ini), environ={})
    ini.write_text("[storage]\nbackend = postgresql\ndsn = postgresql://dlrd@db1/dlrd?password=hunter2\n")
    with pytest.raises(ConfigError, match="holds a password"):
        load_config(str(ini), environ={})


def test_postgresql_without_a_dsn_and_a_dsn_without_postgresql_are_refused(tmp_path: Path):
    ini = tmp_path / "dlrd.ini"
    ini.write_text("[storage]\nbackend = postgresql\n")
    with pytest.raises(ConfigError, match=r"\[storage\] dsn: backend is postgresql"):
        load_config(str(ini), environ={})
    ini.write_text("[storage]\ndsn = host=db1\n")
    with pytest.raises(ConfigError, match=r"\[storage\] dsn: set, but backend is sqlite"):
        load_config(str(ini), environ={})


def test_without_psycopg_serve_is_refused_with_one_line_saying_what_to_install(pg: PgDatabase, tmp_path: Path):
    ini = write_ini(tmp_path / "dlrd.ini", pg, "[server]\nlisten = 127.0.0.1:0\n")
    hide = ("import runpy, sys; sys.modules['psycopg'] = None; sys.argv = ['dlrd', '--config', sys.argv[1], 'serve'];"
            " runpy.run_module('dlrd', run_name='__main__')")

    result = subprocess.run([sys.executable, "-c", hide, str(ini)], capture_output=True, text=True, timeout=60)

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install 'dlrd[postgresql]'" in lines[0]
    assert not (tmp_path / "journal" / "receipts.jsonl").exists()


def test_the_sqlite_path_loads_nothing_of_postgresql(tmp_path: Path):
    ini = tmp_path / "dlrd.ini"
    ini.write_text(f"[server]\nlisten = 127.0.0.1:0\n[storage]\ndatabase = {tmp_path / 'dlrd.db'}\n"
                   f"[journal]\ndirectory = {tmp_path}\n")
    script = ("import sys; from dlrd.config import load_config; from dlrd.daemon import Daemon; "
              "daemon = Daemon(load_config(sys.argv[1])); daemon.start(); "
              "print(sorted(m for m in sys.modules if m.startswith(('psycopg', 'dlrd.pg'))));"
              "daemon.server.close_listeners(); daemon.store.close(); daemon.instance.release()")

    result = subprocess.run([sys.executable, "-c", script, str(ini)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_password_comes_from_a_systemd_credential(nodes, pg: PgDatabase, tmp_path: Path):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "dlrd-db").write_text(pg.password_file.read_text())
    pg.password_file.unlink()

    node = nodes("cred", "[storage]\npassword_file =\npassword_credential = dlrd-db\n",
                 env={"CREDENTIALS_DIRECTORY": str(credentials)})

    assert soap_report(post(node.address, receipt_body("CRED01"))) == 0
    assert pg.rows("SELECT node FROM receipts WHERE message_id = 'CRED01'")[0]["node"] == "cred"


def test_the_command_sql_is_translated_for_psycopg_and_quoted_text_is_left_alone():
    from dlrd.pgsql import translate

    assert translate("SELECT * FROM quarantine WHERE id = ? AND reason LIKE '%?%'", (7,)) == \
        ("SELECT * FROM quarantine WHERE id = %s AND reason LIKE '%%?%%'", [7])
    assert translate("INSERT OR IGNORE INTO t (a, b, c) VALUES (?1, ?2, ?1)", ("x", True)) == \
        ("INSERT INTO t (a, b, c) VALUES (%(p1)s, %(p2)s, %(p1)s) ON CONFLICT DO NOTHING", {"p1": "x", "p2": 1})
    assert translate("BEGIN IMMEDIATE", ()) == ("BEGIN", ())
    assert translate("SELECT 100 % 7", ()) == ("SELECT 100 % 7", ())  # no parameters: psycopg reads no escapes
    assert translate("SELECT ? -- is it? 5%", (1,)) == ("SELECT %s -- is it? 5%%", [1])
    assert translate("PRAGMA wal_checkpoint(PASSIVE)", ()) == (None, ())
    assert translate("SELECT id FROM r WHERE id IN (SELECT value FROM json_each(?))", ("[1]",))[0] == \
        "SELECT id FROM r WHERE id IN (SELECT value::bigint FROM json_array_elements_text(%s::json))"


# Several nodes.


def test_two_nodes_each_taking_the_others_retries_store_every_receipt_once(nodes, pg: PgDatabase):
    a, b = nodes("a"), nodes("b")
    count = 200
    answers: dict[str, list[int | None]] = {}

    def send(first: Daemon, second: Daemon, numbers: range) -> None:
        one, other = KeepAliveClient(first.address), KeepAliveClient(second.address)
        for number in numbers:
            body = receipt_body(f"TWO{number:04d}")
            answers[f"TWO{number:04d}"] = [soap_report(one.post(body)), soap_report(other.post(body))]
        one.close()
        other.close()

    senders = [threading.Thread(target=send, args=(a, b, range(0, count, 2))),
               threading.Thread(target=send, args=(b, a, range(1, count, 2)))]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(60)

    assert len(answers) == count and all(reports == [0, 0] for reports in answers.values())
    rows = pg.rows("SELECT id, message_id, node FROM receipts ORDER BY id")
    assert sorted(row["message_id"] for row in rows) == sorted(answers)
    assert {row["node"] for row in rows if int(row["message_id"][3:]) % 2 == 0} == {"a"}
    assert {row["node"] for row in rows if int(row["message_id"][3:]) % 2 == 1} == {"b"}
    # Each node journals what it stored, with its name; together the journals are the table, once.
    wait_for(lambda: len(a.journal()) + len(b.journal()) == count, 10, "both journals to hold every receipt")
    lines = a.journal() + b.journal()
    assert sorted(line["id"] for line in lines) == [row["id"] for row in rows]
    assert {line["node"] for line in a.journal()} == {"a"} and {line["node"] for line in b.journal()} == {"b"}
    for journal in (a.journal(), b.journal()):
        ids = [line["id"] for line in journal]
        assert ids == sorted(ids)


def test_the_same_retry_at_two_nodes_at_the_same_instant_is_stored_once(nodes, pg: PgDatabase):
    a, b = nodes("a"), nodes("b")
    rounds = 40
    reports: list[list[int | None]] = [[None, None] for _ in range(rounds)]
    start = threading.Barrier(2)

    def send(node: Daemon, side: int) -> None:
        client = KeepAliveClient(node.address)
        for number in range(rounds):
            start.wait(10)
            reports[number][side] = soap_report(client.post(receipt_body(f"RACE{number:03d}")))
        client.close()

    senders = [threading.Thread(target=send, args=(a, 0)), threading.Thread(target=send, args=(b, 1))]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(60)

    assert reports == [[0, 0]] * rounds
    counts = pg.rows("SELECT message_id, count(*) AS n FROM receipts GROUP BY message_id")
    assert len(counts) == rounds and {row["n"] for row in counts} == {1}
    wait_for(lambda: len(a.journal()) + len(b.journal()) == rounds, 10, "one journal line per receipt")


def test_migrations_raced_by_two_nodes_starting_at_once_are_applied_once(nodes, pg: PgDatabase, tmp_path: Path):
    from dlrd import pgsql

    first, second = nodes("a", wait=False), nodes("b", wait=False)
    first.wait_listening()
    second.wait_listening()
    config = load_config(str(first.ini))
    opened, errors = [], []
    start = threading.Barrier(6)

    def open_one() -> None:
        start.wait(10)
        try:
            opened.append(pgsql.open_database(config))
        except Exception as error:
            errors.append(error)

    racers = [threading.Thread(target=open_one) for _ in range(6)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(60)
    for connection in opened:
        connection.close()

    assert errors == [] and len(opened) == 6
    assert [tuple(row) for row in pg.rows("SELECT version, count(*) FROM schema_migrations GROUP BY version")] \
        == [(version, 1) for version, _, _ in pgsql.MIGRATIONS]
    assert "database migrated to schema version 1" in first.log() + second.log()
    assert not ("database migrated" in first.log() and "database migrated" in second.log())


def test_postgresql_stopped_under_load_gets_503s_and_every_200_is_in_the_database(nodes, pg: PgDatabase):
    node = nodes("a", "[storage]\ncommit_timeout = 5\n")
    cluster = pg.cluster
    statuses: dict[str, int] = {}
    retry_after: set[str | None] = set()
    stopping = threading.Event()

    def load(worker: int) -> None:
        client = KeepAliveClient(node.address)
        number = 0
        while not stopping.is_set():
            message_id = f"L{worker}X{number:05d}"
            number += 1
            try:
                answer = client.post(receipt_body(message_id))
            except OSError:
                statuses[message_id] = -1  # no answer: the receipt may or may not be stored; the provider retries
                continue
            statuses[message_id] = answer.status
            if answer.status != 200:
                retry_after.add(answer.header("retry-after"))
        client.close()

    workers = [threading.Thread(target=load, args=(worker,)) for worker in range(8)]
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: sum(status == 200 for status in statuses.values()) >= 200, 30, "200 receipts stored")
        cluster.stop("fast")
        wait_for(lambda: sum(status == 503 for status in statuses.values()) >= 50, 30, "503s while it is down")
        status, health = get(node.urls[0] + "/healthz")
        assert status == 503 and "cannot reach the PostgreSQL database" in health, health
        answered_before = len(statuses)
    finally:
        cluster.start()
    try:
        wait_for(lambda: sum(status == 200 for status in list(statuses.values())[answered_before:]) >= 200, 30,
                 "200s again once PostgreSQL is back")
    finally:
        stopping.set()
        for worker in workers:
            worker.join(30)

    stored = {row["message_id"] for row in pg.rows("SELECT message_id FROM receipts")}
    answered_200 = {message_id for message_id, status in statuses.items() if status == 200}
    assert answered_200 <= stored, sorted(answered_200 - stored)[:10]
    assert set(statuses.values()) <= {200, 503}, sorted(set(statuses.values()))
    assert retry_after and None not in retry_after
    assert "storage cannot commit receipts: cannot reach the PostgreSQL database" in node.log()
    assert "storage commits again after" in node.log()
    print(f"\nPostgreSQL stopped under load: {len(answered_200)} answered 200 (all stored), "
          f"{sum(status == 503 for status in statuses.values())} answered 503, {len(stored)} stored")


# The commands on PostgreSQL.


def test_query_stats_and_quarantine_read_postgresql(nodes, pg: PgDatabase):
    node = nodes("a")
    for number in range(3):
        assert soap_report(post(node.address, receipt_body(f"CMD{number}", report=-4 + number))) == 0
    assert soap_report(post(node.address, receipt_envelope(MessageIdentifier="CMDBAD", SentTo="none"))) == -1

    query = dlrd(node.ini, "query", "--format", "json", "--oldest-first")
    assert query.returncode == 0, query.stderr
    assert [json.loads(line)["message_id"] for line in query.stdout.splitlines()] == ["CMD0", "CMD1", "CMD2"]
    latest = dlrd(node.ini, "query", "--latest", "--message-id", "CMD2", "--format", "json")
    assert json.loads(latest.stdout)["report"] == -2
    stats = json.loads(dlrd(node.ini, "stats", "--format", "json").stdout)
    assert stats["receipts"] == 3 and stats["lag_seconds"]["max"] is not None
    listed = dlrd(node.ini, "quarantine", "list", "--format", "json")
    [kept] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert kept["kind"] == "invalid-field"
    shown = dlrd(node.ini, "quarantine", "show", str(kept["id"]))
    assert shown.returncode == 0 and b"CMDBAD" in shown.stdout.encode()


def test_strict_match_expect_and_replay_quarantine_on_postgresql(nodes, pg: PgDatabase):
    node = nodes("a", "[storage]\nstrict_match = yes\n")
    assert dlrd(node.ini, "expect", "KNOWN1").returncode == 0
    assert soap_report(post(node.address, receipt_body("KNOWN1"))) == 0
    assert soap_report(post(node.address, receipt_body("LATE1"))) == -1

    assert dlrd(node.ini, "expect", "LATE1").returncode == 0
    replay = dlrd(node.ini, "replay", "--quarantine")

    assert replay.returncode == 0, replay.stderr
    assert "1 stored" in replay.stdout
    assert pg.rows("SELECT count(*) FROM quarantine")[0][0] == 0
    # The daemon journals what replay stored as this node's, within a second.
    line = wait_for(lambda: [line for line in node.journal() if line["message_id"] == "LATE1"], 10,
                    "the replayed receipt in the journal")
    assert line[0]["node"] == "a"


def test_replay_journal_merges_several_nodes_journals_once(nodes, pg: PgDatabase, pg_cluster, tmp_path: Path):
    a, b = nodes("a"), nodes("b")
    for number in range(30):
        assert soap_report(post((a if number % 2 else b).address, receipt_body(f"MERGE{number:02d}"))) == 0
    wait_for(lambda: len(a.journal()) + len(b.journal()) == 30, 10, "the journals")
    original = {row["id"]: row["message_id"] for row in pg.rows("SELECT id, message_id FROM receipts")}
    (tmp_path / "fresh").mkdir()
    fresh = PgDatabase(pg_cluster, tmp_path / "fresh")
    ini = write_ini(tmp_path / "fresh" / "dlrd.ini", fresh)
    journals = [str(a.data / "receipts.jsonl"), str(b.data / "receipts.jsonl")]

    first = dlrd(ini, "replay", "--journal", *journals)
    again = dlrd(ini, "replay", "--journal", *reversed(journals))

    assert first.returncode == 0, first.stderr
    assert "30 line(s): 30 stored, 0 already there, 0 conflict(s)" in first.stdout
    assert "30 line(s): 0 stored, 30 already there, 0 conflict(s)" in again.stdout
    assert {row["id"]: row["message_id"] for row in fresh.rows("SELECT id, message_id FROM receipts")} == original
    # Each row is back under the node that journaled it.
    assert {row["message_id"]: row["node"] for row in fresh.rows("SELECT message_id, node FROM receipts")} == \
        {f"MERGE{number:02d}": "a" if number % 2 else "b" for number in range(30)}
    # A node on the rebuilt database gives new receipts ids past every rebuilt one.
    node = Daemon(tmp_path / "fresh" / "node", fresh)
    node.directory.mkdir()
    node.start("[server]\nnode = c\n")
    try:
        assert soap_report(post(node.address, receipt_body("AFTER1"))) == 0
    finally:
        assert node.stop() == 0
    [after] = fresh.rows("SELECT id FROM receipts WHERE message_id = 'AFTER1'")
    assert after["id"] > max(original)


def test_a_second_node_on_the_same_journal_directory_is_refused(nodes, pg: PgDatabase, tmp_path: Path):
    first = nodes("a")
    second = Daemon(tmp_path / "second", pg)
    second.directory.mkdir()

    second.start(f"[server]\nnode = b\n[journal]\ndirectory = {first.data}\n", wait=False)

    assert second.process.wait(30) == 3
    second.process = None
    assert f"another dlrd (pid {first.process.pid}) journals into {first.data}" in second.log()
    assert soap_report(post(first.address, receipt_body("STILL1"))) == 0


def test_ids_put_back_ahead_of_the_sequence_while_a_node_runs_cost_no_receipt(nodes, pg: PgDatabase):
    node = nodes("a")
    assert soap_report(post(node.address, receipt_body("AHEAD0"))) == 0
    [first] = pg.rows("SELECT id FROM receipts")
    for offset in (1, 2, 3):  # what `replay --journal` of another node's journal does meanwhile
        pg.rows("INSERT INTO receipts (id, received_at, message_id, sent_to, report, timestamp, timestamp_raw, "
                "label, state, final, remote_addr) VALUES (?, '2026-12-01T00:00:00.000Z', ?, '447009123456', 0, "
                "'2026-12-01T00:00:00Z', '2026-12-01T00:00:00Z', 'Accepted by phone', 'delivered', 1, '127.0.0.1')",
                first[0] + offset, f"PUTBACK{offset}")

    assert [soap_report(post(node.address, receipt_body(f"AHEAD{n}"))) for n in range(1, 5)] == [0] * 4
    ids = [row["id"] for row in pg.rows("SELECT id FROM receipts WHERE message_id LIKE 'AHEAD%' ORDER BY id")]
    assert len(ids) == 5 and all(receipt_id > first[0] + 3 for receipt_id in ids[1:])
    wait_for(lambda: [line["id"] for line in node.journal()] == ids, 10, "the journal to hold the five")


def test_a_database_whose_ids_went_back_gives_no_id_twice_after_a_reconnect(nodes, pg: PgDatabase):
    node = nodes("a")
    for number in range(5):
        assert soap_report(post(node.address, receipt_body(f"BACK{number}"))) == 0
    journaled = wait_for(lambda: len(node.journal()) == 5 and node.journal(), 10, "five journal lines")
    # A replica that lagged is promoted: the last rows and the sequence go back; the node's connection drops.
    pg.cluster.psql("DELETE FROM receipts WHERE message_id IN ('BACK3', 'BACK4')", pg.name)
    pg.cluster.psql(f"SELECT setval('receipts_id_seq', {journaled[2]['id']})", pg.name)
    pg.cluster.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'dlrd a'")

    assert soap_report(post(node.address, receipt_body("BACK5"))) == 0

    [row] = pg.rows("SELECT id FROM receipts WHERE message_id = 'BACK5'")
    assert row["id"] > journaled[-1]["id"]
    assert "new receipts get ids from" in node.log()


def test_healthz_tells_the_latest_reason_and_the_node_recovers_from_each(nodes, pg: PgDatabase):
    node = nodes("a", "[storage]\ncommit_timeout = 5\n")
    health = node.urls[0] + "/healthz"
    pg.cluster.stop("fast")
    try:
        assert post(node.address, receipt_body("DOWN1")).status == 503
        reason = wait_for(lambda: (answer := get(health))[0] == 503 and answer[1], 10, "/healthz to answer 503")
        assert "cannot reach the PostgreSQL database" in reason
        hidden = pg.password_file.with_name("moved-away")
        pg.password_file.rename(hidden)
    finally:
        pg.cluster.start()
    try:
        wait_for(lambda: post(node.address, receipt_body("DOWN2")).status == 503
                 and "cannot read" in get(health)[1], 15, "/healthz to name the password file")
    finally:
        hidden.rename(pg.password_file)
    wait_for(lambda: soap_report(post(node.address, receipt_body("DOWN3"))) == 0, 15, "a 200 once it can connect")
    assert get(health)[0] == 200
    assert "storage commits again after" in node.log()


def test_a_second_node_with_the_same_name_is_warned_of(nodes, pg: PgDatabase, tmp_path: Path):
    nodes("a")
    twin = Daemon(tmp_path / "twin", pg)
    twin.directory.mkdir()
    twin.start("[server]\nnode = a\n")
    try:
        assert "holds node name a" in twin.log()
    finally:
        assert twin.stop() == 0


def test_a_commit_held_up_past_commit_timeout_is_503_and_the_next_one_commits(nodes, pg: PgDatabase):
    """Something holds the node's writer lock (a stuck `dlrd replay`): the statement times out, the
    transaction is rolled back, and once the lock is let go the node commits again."""
    from dlrd.pgsql import node_lock

    node = nodes("a", "[storage]\ncommit_timeout = 2\n")
    with pg.connect() as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s, %s)", node_lock("a"))
        started = time.monotonic()
        answer = post(node.address, receipt_body("HELD1"))
        waited = time.monotonic() - started
        holder.execute("ROLLBACK")

    assert answer.status == 503 and answer.header("retry-after")
    assert waited < 5
    wait_for(lambda: soap_report(post(node.address, receipt_body("HELD2"))) == 0, 15, "a commit once it is let go")
    stored = {row["message_id"] for row in pg.rows("SELECT message_id FROM receipts")}
    assert "HELD2" in stored
    wait_for(lambda: "HELD2" in {line["message_id"] for line in node.journal()}, 10, "HELD2 journaled")


def test_a_reader_role_of_its_own_runs_query_and_stats_with_its_pgpass(nodes, pg: PgDatabase, tmp_path: Path):
    """README "Secrets and readers": a role with SELECT only, and no dlrd password anywhere it can read."""
    node = nodes("a")
    assert soap_report(post(node.address, receipt_body("READ01"))) == 0
    reader = f"alice_{pg.name}"
    pg.cluster.psql(f"CREATE ROLE {reader} LOGIN PASSWORD 'alice-password'")
    pg.cluster.psql(f"GRANT SELECT ON receipts, latest_state, quarantine TO {reader}", pg.name)
    home = tmp_path / "alice"
    home.mkdir()
    (home / ".pgpass").write_text(f"127.0.0.1:{pg.cluster.port}:{pg.name}:{reader}:alice-password\n")
    (home / ".pgpass").chmod(0o600)
    ini = home / "dlrd.ini"
    ini.write_text(f"[storage]\nbackend = postgresql\ndsn = {pg.dsn.replace('user=dlrd', f'user={reader}')}\n"
                   f"[journal]\ndirectory = {home}\n")

    query = dlrd(ini, "query", "--format", "json", env={"HOME": str(home)})
    stats = dlrd(ini, "stats", "--format", "json", env={"HOME": str(home)})

    assert query.returncode == 0, query.stderr
    assert [json.loads(line)["message_id"] for line in query.stdout.splitlines()] == ["READ01"]
    assert stats.returncode == 0 and json.loads(stats.stdout)["receipts"] == 1
