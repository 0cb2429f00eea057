//! The state tables, per dialect, as numbered schema versions so later releases can evolve them.
//!
//! Version N's statements run once, in order, in one transaction, and record N in the meta table.

/// PostgreSQL: schema `phased`.
pub const POSTGRES: &[&[&str]] = &[
    // 1: steps, flags, backups, migration versions.
    &[
        "CREATE TABLE phased.steps (
            plan text NOT NULL,
            phase text NOT NULL,
            step_index integer NOT NULL,
            kind text NOT NULL,
            label text NOT NULL,
            checksum text NOT NULL,
            status text NOT NULL DEFAULT 'pending',
            attempts integer NOT NULL DEFAULT 0,
            started_at timestamptz,
            finished_at timestamptz,
            last_error text,
            checkpoint text,
            rows_done bigint NOT NULL DEFAULT 0,
            rows_total bigint,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (plan, phase, step_index)
        )",
        "CREATE TABLE phased.flags (
            name text PRIMARY KEY,
            value text NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            plan text
        )",
        "CREATE TABLE phased.backups (
            id bigserial PRIMARY KEY,
            plan text NOT NULL,
            phase text NOT NULL,
            path text NOT NULL,
            size_bytes bigint NOT NULL,
            sha256 text NOT NULL,
            duration_ms bigint NOT NULL,
            verified boolean NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )",
        "CREATE TABLE phased.migrations (
            revision text PRIMARY KEY,
            checksum text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
        "CREATE TABLE phased.version_heads (
            revision text PRIMARY KEY
        )",
    ],
    // 2: a backfill's rate, saved with its checkpoint.
    &["ALTER TABLE phased.steps ADD COLUMN IF NOT EXISTS rows_per_second double precision"],
    // 3: where a concurrent index build stands (JSON), written from a second session while it
    // runs. Not the checkpoint: a script's checkpoint counts its statements done, and progress
    // must never be mistaken for a place to resume from.
    &["ALTER TABLE phased.steps ADD COLUMN IF NOT EXISTS progress text"],
    // 4: an operator's hand on a plan's backfills (`phased pause|resume|pace`), from any machine.
    &["CREATE TABLE IF NOT EXISTS phased.backfill_control (
            plan text PRIMARY KEY,
            paused boolean NOT NULL DEFAULT false,
            max_rows_per_second bigint,
            set_by text NOT NULL,
            set_at timestamptz NOT NULL DEFAULT now()
        )"],
    // 5: the lease's generation, bumped by every runner that takes a plan's lease and checked
    // in the transaction of each unit of work, so a runner that lost its lease commits nothing.
    &["CREATE TABLE IF NOT EXISTS phased.leases (plan text PRIMARY KEY, generation bigint NOT NULL)"],
    // 6: one row per plan that a backfill's probe updates and commits under `throttle: auto`,
    // timing what every application commit waits for (the WAL flush; see `postgres::probe`).
    &["CREATE TABLE IF NOT EXISTS phased.pace_probe (
            plan text PRIMARY KEY,
            beats bigint NOT NULL DEFAULT 0,
            at timestamptz
        )"],
];

/// SQLite: tables prefixed `phased_`.
pub const SQLITE: &[&[&str]] = &[
    // 1: steps, flags, backups, migration versions, the runner lease.
    &[
        "CREATE TABLE phased_steps (
            plan TEXT NOT NULL,
            phase TEXT NOT NULL,
            step_index INTEGER NOT NULL,
            kind TEXT NOT NULL,
            label TEXT NOT NULL,
            checksum TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            started_at TEXT,
            finished_at TEXT,
            last_error TEXT,
            checkpoint TEXT,
            rows_done INTEGER NOT NULL DEFAULT 0,
            rows_total INTEGER,
            updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            PRIMARY KEY (plan, phase, step_index)
        )",
        "CREATE TABLE phased_flags (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            plan TEXT
        )",
        "CREATE TABLE phased_backups (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            plan TEXT NOT NULL,
            phase TEXT NOT NULL,
            path TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            duration_ms INTEGER NOT NULL,
            verified INTEGER NOT NULL,
            created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        )",
        "CREATE TABLE phased_migrations (
            revision TEXT PRIMARY KEY,
            checksum TEXT NOT NULL,
            applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        )",
        "CREATE TABLE phased_version_heads (
            revision TEXT PRIMARY KEY
        )",
        "CREATE TABLE phased_lease (
            plan TEXT PRIMARY KEY,
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,
            since TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        )",
    ],
    // 2: a backfill's rate, saved with its checkpoint.
    &["ALTER TABLE phased_steps ADD COLUMN rows_per_second REAL"],
    // 3: an operator's hand on a plan's backfills (`phased pause|resume|pace`).
    &["CREATE TABLE IF NOT EXISTS phased_backfill_control (
            plan TEXT PRIMARY KEY,
            paused INTEGER NOT NULL DEFAULT 0,
            max_rows_per_second INTEGER,
            set_by TEXT NOT NULL,
            set_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        )"],
    // 4: the lease's generation (see the PostgreSQL version 5); kept apart from `phased_lease`,
    // whose row is deleted when a runner ends, so the count never goes back.
    &["CREATE TABLE IF NOT EXISTS phased_lease_generations (plan TEXT PRIMARY KEY, generation INTEGER NOT NULL)"],
    // 5: where a step stands while it runs (JSON; PostgreSQL's version 3): a backfill's pace
    // and the signal that set it, written with each checkpoint.
    &["ALTER TABLE phased_steps ADD COLUMN progress TEXT"],
];
