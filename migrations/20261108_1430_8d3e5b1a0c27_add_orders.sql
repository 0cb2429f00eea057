-- revision: 8d3e5b1a0c27
-- revises: 4f1c2a9b7e10
-- message: add orders
-- created: 2026-11-08T14:30:00Z
-- transactional: true

-- migrate:up
-- The foreign key takes a SHARE ROW EXCLUSIVE lock on customers (on PostgreSQL) for an
-- instant: it only has to check the new, empty table.
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    total_cents bigint NOT NULL CHECK (total_cents >= 0),
    placed_at timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- migrate:down
DROP TABLE orders;
