"""A statement prepared with SQL PREPARE and run with values bound through the protocol
(libpq's PQexecPrepared, through psycopg's low-level interface) or with SQL EXECUTE.
Prints one JSON object: what PREPARE and the run returned (rows touched, or the error).

Usage: prepared_values.py URL bind|execute LOW HIGH [rollback]"""

import json
import sys

import psycopg


def outcome(res):
    status = res.status
    if status in (psycopg.pq.ExecStatus.COMMAND_OK, psycopg.pq.ExecStatus.TUPLES_OK):
        return {"ok": res.command_status.decode(), "rows": res.command_tuples}
    return {"error": (res.error_message or b"").decode(errors="replace").strip()}


def main(url, mode, low, high, rollback=None):
    out = {}
    with psycopg.connect(url, autocommit=True) as c:
        pg = c.pgconn
        if rollback:
            pg.exec_(b"BEGIN")
        out["prepare"] = outcome(pg.exec_(
            b"PREPARE pv AS UPDATE customers SET full_name = full_name "
            b"WHERE id BETWEEN $1 AND $2"))
        if mode == "bind":
            out["run"] = outcome(pg.exec_prepared(b"pv", [low.encode(), high.encode()]))
        else:
            out["run"] = outcome(pg.exec_(f"EXECUTE pv({int(low)}, {int(high)})".encode()))
        if rollback:
            pg.exec_(b"ROLLBACK")
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
