-- revision: e5f8a3b0d694
-- revises: b7a2c4e9d315, c1d9f0a6b842
-- message: merge orders index and email normalisation
-- created: 2026-11-16T09:00:00Z
-- transactional: true

-- migrate:up
-- A merge point: nothing to run, it joins the two branches.

-- migrate:down
-- Nothing to undo.
