"""psycopg 3 through the proxy: results equal to a direct connection (extended and simple
protocol, prepared statements, pipeline mode, COPY, errors, notices, notifications, cancel)."""

import threading
import time

import psycopg
from psycopg import errors

from queries import DIRECT_URL, ERRORS, NOTICE_FUNCTION, PROXY_URL, QUERIES, check, finish, require


def run(conn, sql, params=None, prepare=None, client_side=False):
    cur = psycopg.ClientCursor(conn) if client_side else conn.cursor()
    try:
        cur.execute(sql, params, prepare=prepare) if not client_side else cur.execute(sql, params)
        desc = [(d.name, d.type_code) for d in cur.description] if cur.description else None
        rows = cur.fetchall() if cur.description else None
        return ("ok", desc, rows)
    except psycopg.Error as e:
        return ("error", e.sqlstate)


direct = psycopg.connect(DIRECT_URL, autocommit=True)
proxy = psycopg.connect(PROXY_URL, autocommit=True)
direct.execute(NOTICE_FUNCTION)

for q in QUERIES:
    check(f"extended {q[:40]}", run(direct, q), run(proxy, q))
    check(f"simple {q[:40]}", run(direct, q, client_side=True), run(proxy, q, client_side=True))
for q, code in ERRORS:
    a, b = run(direct, q), run(proxy, q)
    check(f"error {q}", a, b)
    require(f"sqlstate {q}", b == ("error", code))

# Multi-statement string over the simple protocol: the last result is returned.
check("multi", run(direct, "SELECT 1; SELECT 2 AS two", client_side=True),
      run(proxy, "SELECT 1; SELECT 2 AS two", client_side=True))

# Parameters and server-side prepared statements, executed many times.
params_sql = "SELECT %s::int8 + 1, %s::text || '!', %s::bool, %s::bytea, %s::numeric * 2, %s::text IS NULL"
params = (41, "hi", True, b"\x00\x01\xff", "1.25", None)
for i in range(8):
    check(f"prepared {i}", run(direct, params_sql, params, prepare=True), run(proxy, params_sql, params, prepare=True))

# Pipeline mode.
def pipeline(conn):
    out = []
    with conn.pipeline():
        curs = [conn.execute("SELECT %s::int * 3", (i,)) for i in range(20)]
    for c in curs:
        out.append(c.fetchone())
    return out
check("pipeline", pipeline(direct), pipeline(proxy))

# COPY out and in.
def copy_out(conn):
    with conn.cursor() as cur:
        with cur.copy("COPY (SELECT id, email FROM customers ORDER BY id) TO STDOUT") as cp:
            return b"".join(bytes(b) for b in cp)
check("copy out", copy_out(direct), copy_out(proxy))

def copy_in(conn):
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS t_copy (id int, v text)")
    conn.execute("TRUNCATE t_copy")
    with conn.cursor() as cur:
        with cur.copy("COPY t_copy FROM STDIN") as cp:
            for i in range(5000):
                cp.write_row((i, None if i % 7 == 0 else f"v{i}"))
    return conn.execute("SELECT count(*), count(v), sum(id) FROM t_copy").fetchone()
check("copy in", copy_in(direct), copy_in(proxy))

# Notices.
def notices(conn):
    got = []
    conn.add_notice_handler(lambda d: got.append((d.severity, d.sqlstate, d.message_primary)))
    conn.execute("SELECT portcullis_notice_me(7)")
    return got
check("notices", notices(direct), notices(proxy))
require("notice seen", len(notices(proxy)) == 1)

# Notifications sent from another session reach a listener on the proxy.
proxy.execute("LISTEN portcullis_channel")
direct.execute("NOTIFY portcullis_channel, 'hello'")
got = [(n.channel, n.payload) for n in proxy.notifies(timeout=5, stop_after=1)]
require("notification", got == [("portcullis_channel", "hello")])

# Cancel of pg_sleep.
def cancel_later(conn):
    time.sleep(0.5)
    conn.cancel_safe()
t = threading.Thread(target=cancel_later, args=(proxy,))
t.start()
start = time.time()
try:
    proxy.execute("SELECT pg_sleep(20)")
    require("cancel raised", False)
except errors.QueryCanceled:
    pass
t.join()
require("cancel fast", time.time() - start < 10)
require("usable after cancel", proxy.execute("SELECT 1").fetchone() == (1,))

# A refusal arrives as an ordinary error with SQLSTATE 42501; the session goes on.
try:
    proxy.execute("SELECT pg_read_file('/etc/passwd')")
    require("refused", False)
except errors.InsufficientPrivilege as e:
    require("refusal names the rule", "server-file-access" in str(e))
require("usable after refusal", proxy.execute("SELECT 2").fetchone() == (2,))

# Transactions.
with psycopg.connect(PROXY_URL) as conn:
    conn.execute("CREATE TEMP TABLE t_tx (id int)")
    conn.commit()
    conn.execute("INSERT INTO t_tx VALUES (1)")
    conn.rollback()
    require("rollback", conn.execute("SELECT count(*) FROM t_tx").fetchone() == (0,))

finish("psycopg")
