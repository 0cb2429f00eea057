-- revision: c1d9f0a6b842
-- revises: 8d3e5b1a0c27
-- message: store normalised customer emails
-- created: 2026-11-15T11:00:00Z
-- transactional: true
--
-- A data migration, written on a branch next to the orders index: a nullable column (a
-- catalog-only change) and one UPDATE that fills it for the existing customers. The table is
-- small; for a big one use a plan `backfill` step instead, which works in batches.

-- migrate:up
ALTER TABLE customers ADD COLUMN email_normalized text;
UPDATE customers SET email_normalized = lower(trim(email));

-- migrate:down
ALTER TABLE customers DROP COLUMN email_normalized;
