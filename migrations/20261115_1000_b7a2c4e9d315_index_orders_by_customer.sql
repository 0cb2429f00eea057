-- revision: b7a2c4e9d315
-- revises: 8d3e5b1a0c27
-- message: index orders by customer
-- created: 2026-11-15T10:00:00Z
-- transactional: false
--
-- By now orders is big and busy: on PostgreSQL the index is built CONCURRENTLY (SHARE UPDATE
-- EXCLUSIVE: reads and writes go on), which cannot run inside a transaction, hence
-- `transactional: false`. SQLite has no CONCURRENTLY; its section builds the index plainly.

-- migrate:up postgres
-- A concurrent build that failed half-way leaves an INVALID index behind: drop it first so a
-- re-run starts clean (this script is not recorded until it has finished).
DROP INDEX CONCURRENTLY IF EXISTS orders_customer_id_idx;
CREATE INDEX CONCURRENTLY orders_customer_id_idx ON orders (customer_id);

-- migrate:up sqlite
CREATE INDEX IF NOT EXISTS orders_customer_id_idx ON orders (customer_id);

-- migrate:down postgres
DROP INDEX CONCURRENTLY IF EXISTS orders_customer_id_idx;

-- migrate:down sqlite
DROP INDEX IF EXISTS orders_customer_id_idx;
