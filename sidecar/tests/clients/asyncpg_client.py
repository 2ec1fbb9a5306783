"""asyncpg through the proxy: named prepared statements, binary types, COPY, errors,
notifications, cancel by timeout, transactions; results equal to a direct connection."""

import asyncio

import asyncpg

from queries import DIRECT_URL, ERRORS, PROXY_URL, QUERIES, check, finish, require


async def fetch(conn, sql, *args):
    try:
        rows = await conn.fetch(sql, *args)
        return ("ok", [tuple(r.items()) for r in rows])
    except asyncpg.PostgresError as e:
        return ("error", e.sqlstate)


async def main():
    direct = await asyncpg.connect(DIRECT_URL)
    proxy = await asyncpg.connect(PROXY_URL)

    for q in QUERIES:
        check(f"fetch {q[:40]}", await fetch(direct, q), await fetch(proxy, q))
    for q, code in ERRORS:
        a, b = await fetch(direct, q), await fetch(proxy, q)
        check(f"error {q}", a, b)
        require(f"sqlstate {q}", b == ("error", code))

    # Parameters in binary format, many executions of a prepared statement.
    stmt_d = await direct.prepare("SELECT $1::int8 + 1, $2::text || '!', $3::bytea, $4::numeric, $5::timestamptz")
    stmt_p = await proxy.prepare("SELECT $1::int8 + 1, $2::text || '!', $3::bytea, $4::numeric, $5::timestamptz")
    import datetime
    import decimal
    args = (41, "hi", b"\x00\xff", decimal.Decimal("1.25"), datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc))
    for _ in range(10):
        check("prepared", await stmt_d.fetchrow(*args), await stmt_p.fetchrow(*args))

    # executemany (pipelined Bind/Execute) and a multi-statement execute (simple protocol).
    await proxy.execute("CREATE TEMP TABLE t_many (id int, v text); CREATE TEMP TABLE t_copy (id int, v text)")
    await proxy.executemany("INSERT INTO t_many VALUES ($1, $2)", [(i, f"v{i}") for i in range(500)])
    require("executemany", await proxy.fetchval("SELECT count(*) FROM t_many") == 500)

    # COPY in both directions.
    await proxy.copy_records_to_table("t_copy", records=[(i, None if i % 3 else "x") for i in range(2000)])
    require("copy in", await proxy.fetchval("SELECT count(*) FROM t_copy") == 2000)
    import io
    out_d, out_p = io.BytesIO(), io.BytesIO()
    await direct.copy_from_query("SELECT id, email FROM customers ORDER BY id", output=out_d)
    await proxy.copy_from_query("SELECT id, email FROM customers ORDER BY id", output=out_p)
    check("copy out", out_d.getvalue(), out_p.getvalue())

    # Cursors in a transaction (named portals, fetched in pieces).
    async with proxy.transaction():
        cur = await proxy.cursor("SELECT g FROM generate_series(1, 250) g")
        total = 0
        while True:
            rows = await cur.fetch(40)
            total += len(rows)
            if len(rows) < 40:
                break
    require("cursor", total == 250)

    # Notifications.
    got = asyncio.get_running_loop().create_future()
    await proxy.add_listener("portcullis_async", lambda *a: got.done() or got.set_result(a[3]))
    await direct.execute("NOTIFY portcullis_async, 'ping'")
    require("notification", await asyncio.wait_for(got, 5) == "ping")

    # A timeout makes asyncpg send a CancelRequest.
    try:
        await proxy.fetch("SELECT pg_sleep(20)", timeout=0.5)
        require("timeout", False)
    except asyncio.TimeoutError:
        pass
    require("usable after cancel", await proxy.fetchval("SELECT 3") == 3)

    # Refusal.
    try:
        await proxy.fetch("SELECT lo_import('/etc/passwd')")
        require("refused", False)
    except asyncpg.InsufficientPrivilegeError as e:
        require("refusal names the rule", "server-file-access" in str(e))
    require("usable after refusal", await proxy.fetchval("SELECT 4") == 4)

    # Transaction rollback.
    try:
        async with proxy.transaction():
            await proxy.execute("INSERT INTO t_many VALUES (9999, 'gone')")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    require("rollback", await proxy.fetchval("SELECT count(*) FROM t_many WHERE id = 9999") == 0)

    await direct.close()
    await proxy.close()


asyncio.run(main())
finish("asyncpg")
