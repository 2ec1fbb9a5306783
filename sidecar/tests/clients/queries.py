"""Queries shared by the client checks: each must give the same result directly and through
the proxy. DIRECT_URL and PROXY_URL name the two servers."""

import os
import sys

DIRECT_URL = os.environ["DIRECT_URL"]
PROXY_URL = os.environ["PROXY_URL"]

QUERIES = [
    "SELECT 1::int2 AS a, 2::int4 AS b, 3::int8 AS c, 1.5::float4 AS d, 2.25::float8 AS e, 12345.6789::numeric AS f",
    "SELECT 'text'::text AS t, 'x'::char(3) AS c, ''::text AS empty, NULL::text AS n",
    "SELECT true AS t, false AS f, NULL::bool AS n",
    "SELECT '\\xdeadbeef'::bytea AS b, NULL::bytea AS n",
    "SELECT DATE '2024-02-29' AS d, TIMESTAMP '2024-01-01 12:34:56.789' AS ts, TIMESTAMPTZ '2024-01-01 00:00:00+02' AS tz, INTERVAL '1 day 2 hours' AS i",
    "SELECT '{\"a\": [1, 2, null]}'::json AS j, '{\"b\": {\"c\": true}}'::jsonb AS jb",
    "SELECT 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, ARRAY[1, 2, NULL]::int[] AS arr, ARRAY['x', 'y'] AS tarr",
    "SELECT NULL AS a, NULL AS b",
    "SELECT id, full_name, email, ssn, card_number, iban, phone, street, city, country, birth_date, created_at FROM customers ORDER BY id LIMIT 50",
    "SELECT * FROM orders ORDER BY 1 LIMIT 50",
    "SELECT count(*) AS n, min(id) AS lo, max(id) AS hi FROM customers",
    "SELECT g, md5(g::text) AS h FROM generate_series(1, 3000) g",
    "SELECT repeat('x', 2000000) AS big",
    "SELECT 'ünïcødé ✓ 日本語' AS u",
]

ERRORS = [
    ("SELECT 1/0", "22012"),
    ("SELECT * FROM no_such_table", "42P01"),
    ("SELECT no_such_column FROM customers", "42703"),
    ("SELECT 'abc'::int", "22P02"),
]

NOTICE_FUNCTION = """
CREATE OR REPLACE FUNCTION portcullis_notice_me(n int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  RAISE NOTICE 'notice number %', n;
  RETURN n;
END $$
"""

failures = []


def check(label, a, b):
    if a != b:
        failures.append(label)
        print(f"MISMATCH {label}:\n  direct: {a!r:.300}\n  proxy:  {b!r:.300}", file=sys.stderr)


def require(label, cond):
    if not cond:
        failures.append(label)
        print(f"FAILED {label}", file=sys.stderr)


def finish(name):
    if failures:
        print(f"{name}: {len(failures)} failure(s): {failures}", file=sys.stderr)
        sys.exit(1)
    print(f"{name}: ok")
