-- revision: 4f1c2a9b7e10
-- revises: none
-- message: initial schema
-- created: 2026-11-01T09:00:00Z
-- transactional: true

-- migrate:up
CREATE TABLE customers (
    id bigint PRIMARY KEY,
    email text NOT NULL,
    name text NOT NULL,
    created_at timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP
);
-- A new, empty table: a plain (locking) index build costs nothing here.
CREATE UNIQUE INDEX customers_email_key ON customers (email);

-- migrate:down
DROP TABLE customers;
