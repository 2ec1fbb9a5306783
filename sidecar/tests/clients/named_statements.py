"""Prepared statement names shared by SQL and the extended protocol (libpq through psycopg's
low-level interface). Prints one JSON object: each variant and what the client saw."""

import json
import sys

import psycopg
from psycopg import pq


def value(res):
    if res.status == pq.ExecStatus.TUPLES_OK and res.ntuples > 0:
        v = res.get_value(0, 0)
        return None if v is None else v.decode()
    if res.status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
        return "ok"
    return "error: " + (res.error_message or b"").decode(errors="replace").strip()


def main(url):
    out = {}

    def session():
        return psycopg.connect(url, autocommit=True)

    with session() as c:
        pg = c.pgconn
        pg.exec_(b"PREPARE b13a AS SELECT ssn FROM customers WHERE id = 1")
        out["sql PREPARE, protocol Bind/Execute"] = value(pg.exec_prepared(b"b13a", []))

    with session() as c:
        pg = c.pgconn
        pg.prepare(b"b13c", b"SELECT ssn FROM customers WHERE id = 1")
        out["protocol Parse, SQL EXECUTE"] = value(pg.exec_(b"EXECUTE b13c"))

    with session() as c:
        pg = c.pgconn
        pg.exec_(b"PREPARE b13b AS SELECT ssn FROM customers WHERE id = 1")
        # The server refuses the second definition and keeps the first.
        pg.exec_(b"PREPARE b13b AS SELECT 'none'::text AS ssn")
        out["PREPARE again over a live name"] = value(pg.exec_prepared(b"b13b", []))

    with session() as c:
        pg = c.pgconn
        pg.exec_(b"PREPARE b13d AS SELECT ssn FROM customers WHERE id = 1")
        pg.exec_(b"BEGIN")
        pg.exec_(b"SELECT 1/0")
        # Fails in the aborted transaction: the definition stays.
        pg.exec_(b"DEALLOCATE b13d")
        pg.exec_(b"ROLLBACK")
        pg.exec_(b"PREPARE b13d AS SELECT 'none'::text AS ssn")
        out["DEALLOCATE that failed, then PREPARE"] = value(pg.exec_prepared(b"b13d", []))

    with session() as c:
        pg = c.pgconn
        # Server code prepares a statement the client then runs.
        pg.exec_(b"SELECT public.b13_prepare()")
        out["prepared by server code, protocol Execute"] = value(pg.exec_prepared(b"b13f", []))
        out["prepared by server code, SQL EXECUTE"] = value(pg.exec_(b"EXECUTE b13f"))

    with session() as c:
        pg = c.pgconn
        pg.exec_(b"PREPARE b13e AS INSERT INTO b13_log VALUES ('x')")
        for _ in range(5):
            pg.exec_prepared(b"b13e", [])
        out["SQL PREPARE of an INSERT, five protocol Executes"] = value(
            pg.exec_(b"SELECT count(*)::text FROM b13_log")
        )
        pg.exec_(b"DELETE FROM b13_log WHERE true")

    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
