\pset pager off
SELECT 1 AS one, NULL AS nothing, 'x'::text AS t;
SELECT id, full_name, email, birth_date FROM customers ORDER BY id LIMIT 5;
SELECT 1 AS a \; SELECT 2 AS two \; SELECT 3 AS three;
CREATE TEMP TABLE t (id int, v text);
COPY t FROM STDIN;
1	one
2	\N
\.
SELECT * FROM t ORDER BY id;
COPY t TO STDOUT;
COPY (SELECT * FROM t ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER);
SELECT 1/0;
SELECT * FROM no_such_table;
SELECT portcullis_notice_me(3);
LISTEN psql_channel;
NOTIFY psql_channel, 'payload';
BEGIN;
INSERT INTO t VALUES (3, 'three');
SELECT 1/0;
SELECT 1;
ROLLBACK;
SELECT count(*) FROM t;
SELECT length(repeat('ab', 500000)), md5(repeat('ab', 500000));
\x on
SELECT * FROM customers WHERE id = 1;
\x off
PREPARE q(int) AS SELECT $1 + 1;
EXECUTE q(41);
DEALLOCATE q;
