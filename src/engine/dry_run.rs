//! `phased plan`: the SQL each pending step would run, exactly as it would be sent — with its
//! timeouts, its transactions (or their absence for `CONCURRENTLY`), a backfill's first batch
//! with its placeholders, and the state bookkeeping as comments. Reads the state, writes nothing.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::backfill::AUTO_START;
use super::runner::{find_drift, load_records, timeouts_for, Records};
use super::EngineError;
use crate::db::{AppliedMigration, Dialect, StepStatus, Target, Timeouts, Unit, VersionState};
use crate::ops::backfill;
use crate::ops::name::{ident, ident_list, literal};
use crate::ops::TableName;
use crate::plan::{Backfill, BatchSize, LoadedPlan, Plan, Step, StepRef};

/// A backfill's key columns and their types, by table.
type Keys = HashMap<TableName, (Vec<String>, Vec<String>)>;

/// The SQL of each pending `migrations` step (or why it cannot be shown), by (phase, index).
type MigrationTexts = HashMap<(usize, usize), Result<String, String>>;

/// Works out what each pending `migrations` step would run: from the database's version state
/// (empty offline), with the steps before it in the plan taken as applied.
fn migration_texts(
    loaded: &LoadedPlan,
    dialect: Dialect,
    records: &Records,
    mut state: VersionState,
) -> MigrationTexts {
    use super::migrations::{moves_for, prepare, sql_text, Request};
    let plan = &loaded.plan;
    let mut texts = MigrationTexts::new();
    for (step, def) in plan.step_refs() {
        let Step::Migrations(m) = def else { continue };
        let done = records
            .get(&(step.phase.clone(), step.index as i32))
            .is_some_and(|r| r.status == StepStatus::Done);
        if done {
            continue; // already part of the database's version state
        }
        let result = (|| -> Result<String, String> {
            let history = crate::migrations::load(&loaded.base_dir.join(&m.dir))
                .map_err(|e| e.to_string())?;
            let spec = crate::migrations::Spec::parse(&m.to).map_err(|e| e.to_string())?;
            let moves =
                moves_for(&history, &state, Request::Upgrade(&spec)).map_err(|e| e.to_string())?;
            let prepared = prepare(&history, moves, dialect).map_err(|e| e.to_string())?;
            let text = sql_text(&prepared, dialect, timeouts_for(plan, def));
            for p in &prepared {
                state.applied.push(AppliedMigration {
                    revision: p.migration.revision.clone(),
                    checksum: p.migration.checksum.clone(),
                    applied_at: String::new(),
                });
                state.heads = p.step.heads_after.clone();
            }
            Ok(text)
        })();
        texts.insert((step.phase_index, step.index), result);
    }
    texts
}

/// The dry run against a database: its dialect, its recorded state, its tables' keys.
pub async fn dry_run<T: Target>(
    target: &mut T,
    loaded: &LoadedPlan,
    phase: Option<&str>,
) -> Result<String, EngineError> {
    let plan = &loaded.plan;
    let records = load_records(target, plan).await?;
    let mut keys = Keys::new();
    for (_, def) in selected(plan, phase)? {
        let Step::Backfill(b) = def else { continue };
        let (from_plan, plan_types) = key_from_plan(plan, b);
        let columns = if !b.key.is_empty() {
            b.key.iter().map(ToString::to_string).collect()
        } else {
            match target.primary_key(&b.table).await {
                Ok(k) if !k.is_empty() => k,
                _ => from_plan,
            }
        };
        let types = match target.column_types(&b.table, &columns).await {
            Ok(t) => t,
            Err(_) => plan_types,
        };
        keys.insert(b.table.clone(), (columns, types));
    }
    let header = format!(
        "-- phased plan {} on {} ({})",
        plan.id(),
        target.describe(),
        target.dialect().as_str()
    );
    let state = target.version_state().await?;
    let migrations = migration_texts(loaded, target.dialect(), &records, state);
    render_plan(
        loaded,
        target.dialect(),
        &records,
        phase,
        &keys,
        &migrations,
        header,
    )
}

/// The dry run without a database: every step is pending, keys come from the plan.
pub fn dry_run_offline(
    loaded: &LoadedPlan,
    dialect: Dialect,
    phase: Option<&str>,
) -> Result<String, EngineError> {
    let plan = &loaded.plan;
    let mut keys = Keys::new();
    for (_, def) in selected(plan, phase)? {
        if let Step::Backfill(b) = def {
            let (columns, types) = key_from_plan(plan, b);
            keys.insert(b.table.clone(), (columns, types));
        }
    }
    let header = format!(
        "-- phased plan {} (offline, {}: every step shown as pending)",
        plan.id(),
        dialect.as_str()
    );
    let records = Records::new();
    let migrations = migration_texts(loaded, dialect, &records, VersionState::default());
    render_plan(loaded, dialect, &records, phase, &keys, &migrations, header)
}

/// The steps of the chosen phase (all phases when None).
fn selected<'p>(
    plan: &'p Plan,
    phase: Option<&str>,
) -> Result<Vec<(StepRef, &'p Step)>, EngineError> {
    if let Some(name) = phase {
        if plan.phase(name).is_none() {
            let names: Vec<&str> = plan.phases().map(|p| p.name()).collect();
            return Err(EngineError::Usage(format!(
                "plan `{}` has no phase `{name}`; its phases are: {}",
                plan.id(),
                names.join(", ")
            )));
        }
    }
    Ok(plan
        .step_refs()
        .into_iter()
        .filter(|(s, _)| phase.is_none_or(|p| s.phase == p))
        .collect())
}

/// A backfill's key as the plan knows it: `key:`, else the primary key of a table it creates,
/// else `id`; with the declared types where the plan has them.
fn key_from_plan(plan: &Plan, b: &Backfill) -> (Vec<String>, Vec<String>) {
    let created = plan.phases().flat_map(|p| p.steps()).find_map(|s| match s {
        Step::CreateTable(t) if t.name == b.table => Some(t),
        _ => None,
    });
    let columns: Vec<String> = if !b.key.is_empty() {
        b.key.iter().map(ToString::to_string).collect()
    } else {
        created
            .map(|t| {
                t.columns
                    .iter()
                    .filter(|c| c.primary_key)
                    .map(|c| c.name.to_string())
                    .collect::<Vec<_>>()
            })
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| vec!["id".to_string()])
    };
    let types = columns
        .iter()
        .map(|c| {
            created
                .and_then(|t| t.columns.iter().find(|col| &col.name == c))
                .map(|col| col.ty.clone())
                .unwrap_or_else(|| "text".to_string())
        })
        .collect();
    (columns, types)
}

fn render_plan(
    loaded: &LoadedPlan,
    dialect: Dialect,
    records: &Records,
    phase: Option<&str>,
    keys: &Keys,
    migrations: &MigrationTexts,
    header: String,
) -> Result<String, EngineError> {
    let plan = &loaded.plan;
    let steps = selected(plan, phase)?;
    let mut out = String::new();
    let _ = writeln!(out, "{header}");
    let _ = writeln!(
        out,
        "-- nothing below has been run; `phased run` would send it in this order."
    );
    if let Some(drift) = find_drift(plan, records) {
        let _ = writeln!(out, "-- WARNING: {drift}; `phased run` refuses to start.");
    }
    let mut pending = 0usize;
    let mut current_phase = None;
    for (step, def) in &steps {
        let status = records
            .get(&(step.phase.clone(), step.index as i32))
            .map(|r| r.status)
            .unwrap_or(StepStatus::Pending);
        if current_phase != Some(step.phase_index) {
            current_phase = Some(step.phase_index);
            let p = &plan.phases.value[step.phase_index].value;
            let _ = writeln!(out, "\n-- ═══ phase {} ({}) ═══", p.name(), p.kind());
            if plan.backup.before.iter().any(|b| b.value == p.name()) {
                let _ = writeln!(
                    out,
                    "-- a verified backup is taken before this phase starts (backup.before), into {}",
                    plan.backup.dir.display()
                );
            }
            for gate in &p.gate {
                let shown = serde_json::to_string(&gate.value).unwrap_or_default();
                let _ = writeln!(out, "-- gate (checked before the phase starts): {shown}");
            }
        }
        if status == StepStatus::Done {
            let _ = writeln!(
                out,
                "\n-- step {} {}: done, skipped",
                step.id(),
                def.label()
            );
            continue;
        }
        pending += 1;
        let _ = writeln!(
            out,
            "\n-- step {} {} ({}, line {})",
            step.id(),
            def.label(),
            status.as_str(),
            step.line
        );
        let record = records.get(&(step.phase.clone(), step.index as i32));
        let _ = writeln!(out, "{}", begin_comment(plan, step, def, dialect));
        let timeouts = timeouts_for(plan, def);
        match def {
            Step::Backfill(b) => {
                let after = record.and_then(|r| r.checkpoint.clone());
                render_backfill(&mut out, plan, step, b, dialect, timeouts, keys, after);
            }
            Step::Flag(f) => {
                let (insert, now, begin) = match dialect {
                    Dialect::Postgres => (
                        "INSERT INTO phased.flags (name, value, updated_at, plan) VALUES ($1, $2, now(), $3) \
                         ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now(), plan = EXCLUDED.plan",
                        "$1, $2, $3",
                        "BEGIN;",
                    ),
                    Dialect::Sqlite => (
                        "INSERT INTO phased_flags (name, value, updated_at, plan) \
                         VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?3) \
                         ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, plan = excluded.plan",
                        "?1, ?2, ?3",
                        "BEGIN IMMEDIATE;",
                    ),
                };
                let _ = writeln!(
                    out,
                    "-- state: UPDATE {} SET checkpoint = '{{\"previous\": <the flag's current value>}}' {} (kept for rollback)",
                    steps_table(dialect),
                    where_key(plan, step)
                );
                let _ = writeln!(out, "{begin}\n{insert};");
                let _ = writeln!(
                    out,
                    "--   {now} = {}, {}, {}",
                    literal(&f.name),
                    literal(&f.value.0),
                    literal(plan.id())
                );
                let _ = writeln!(out, "{}", done_comment(plan, step, dialect, true));
                let _ = writeln!(out, "COMMIT;");
            }
            Step::Command(c) => {
                let _ = writeln!(
                    out,
                    "-- runs the program {} (no shell), from the plan's folder, within {}{}",
                    serde_json::to_string(&c.run).unwrap_or_default(),
                    c.timeout,
                    if c.env.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", with env {}",
                            c.env.keys().cloned().collect::<Vec<_>>().join(", ")
                        )
                    }
                );
                let _ = writeln!(out, "{}", done_comment(plan, step, dialect, false));
            }
            Step::Migrations(m) => {
                let _ = writeln!(
                    out,
                    "-- applies the versioned migrations in {} up to {}; the revisions the database is at\n\
                     -- before are kept in the step's checkpoint (for rollback)",
                    m.dir.display(),
                    m.to
                );
                match migrations.get(&(step.phase_index, step.index)) {
                    Some(Ok(text)) if text.trim().is_empty() => {
                        let _ = writeln!(out, "-- nothing to apply: already at {}", m.to);
                    }
                    Some(Ok(text)) => {
                        let _ = write!(out, "{text}");
                    }
                    Some(Err(e)) => {
                        let _ = writeln!(out, "-- cannot show its SQL: {e}");
                    }
                    None => {}
                }
                let _ = writeln!(out, "{}", done_comment(plan, step, dialect, false));
            }
            _ => match def.op().units(dialect) {
                Ok(units) => render_units(&mut out, plan, step, &units, dialect, timeouts),
                Err(e) => {
                    let _ = writeln!(out, "-- cannot be rendered for {}: {e}", dialect.as_str());
                }
            },
        }
    }
    let _ = writeln!(
        out,
        "\n-- {pending} pending step(s){}",
        phase.map(|p| format!(" in phase {p}")).unwrap_or_default()
    );
    Ok(out)
}

fn steps_table(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => "phased.steps",
        Dialect::Sqlite => "phased_steps",
    }
}

fn where_key(plan: &Plan, step: &StepRef) -> String {
    format!(
        "WHERE (plan, phase, step_index) = ({}, {}, {})",
        literal(plan.id()),
        literal(&step.phase),
        step.index
    )
}

fn begin_comment(plan: &Plan, step: &StepRef, def: &Step, dialect: Dialect) -> String {
    format!(
        "-- state: INSERT INTO {} (plan, phase, step_index, kind, label, checksum, status, attempts, started_at) \
         VALUES ({}, {}, {}, {}, {}, <checksum>, 'running', 1, now()) ON CONFLICT DO UPDATE SET status = 'running', attempts = attempts + 1",
        steps_table(dialect),
        literal(plan.id()),
        literal(&step.phase),
        step.index,
        literal(def.kind_name()),
        literal(&def.label()),
    )
}

fn done_comment(plan: &Plan, step: &StepRef, dialect: Dialect, same_tx: bool) -> String {
    format!(
        "-- state{}: UPDATE {} SET status = 'done', last_error = NULL, finished_at = now() {}",
        if same_tx {
            " (same transaction)"
        } else {
            " (right after)"
        },
        steps_table(dialect),
        where_key(plan, step)
    )
}

fn open_tx(dialect: Dialect, timeouts: Timeouts) -> String {
    match dialect {
        Dialect::Postgres => format!(
            "BEGIN;\nSET LOCAL lock_timeout = '{}ms';\nSET LOCAL statement_timeout = '{}ms';",
            timeouts.lock_timeout.as_millis(),
            timeouts.statement_timeout.as_millis()
        ),
        Dialect::Sqlite => format!(
            "PRAGMA busy_timeout = {};\nBEGIN IMMEDIATE;",
            if timeouts.lock_timeout.is_zero() {
                2000
            } else {
                timeouts.lock_timeout.as_millis()
            }
        ),
    }
}

fn standalone(dialect: Dialect, timeouts: Timeouts, sql: &str) -> String {
    match dialect {
        Dialect::Postgres => format!(
            "SET lock_timeout = '{}ms';\nSET statement_timeout = '{}ms';\n{};\nRESET lock_timeout;\nRESET statement_timeout;",
            timeouts.lock_timeout.as_millis(),
            timeouts.statement_timeout.as_millis(),
            sql.trim_end().trim_end_matches(';')
        ),
        Dialect::Sqlite => format!("{};", sql.trim_end().trim_end_matches(';')),
    }
}

fn render_units(
    out: &mut String,
    plan: &Plan,
    step: &StepRef,
    units: &[Unit],
    dialect: Dialect,
    timeouts: Timeouts,
) {
    let last_tx = units
        .iter()
        .rposition(|u| matches!(u, Unit::Transaction(_)))
        .filter(|&i| i + 1 == units.len());
    for (i, unit) in units.iter().enumerate() {
        match unit {
            Unit::Transaction(statements) => {
                let _ = writeln!(out, "{}", open_tx(dialect, timeouts));
                for sql in statements {
                    let _ = writeln!(out, "{};", sql.trim_end().trim_end_matches(';'));
                }
                if Some(i) == last_tx {
                    let _ = writeln!(out, "{}", done_comment(plan, step, dialect, true));
                }
                let _ = writeln!(out, "COMMIT;");
            }
            Unit::Standalone(sql) => {
                let _ = writeln!(
                    out,
                    "-- outside any transaction (CONCURRENTLY cannot run inside one):"
                );
                let _ = writeln!(out, "{}", standalone(dialect, timeouts, sql));
            }
            Unit::ConcurrentIndex { name, create } => {
                let _ = writeln!(
                    out,
                    "-- outside any transaction. If a valid index {0} exists, nothing is done; an INVALID one left by\n\
                     -- a failed build is dropped first: DROP INDEX CONCURRENTLY IF EXISTS {0}",
                    name
                );
                let _ = writeln!(out, "{}", standalone(dialect, timeouts, create));
            }
            Unit::Script(sql) => {
                let _ = writeln!(
                    out,
                    "-- transactional: false: sent as one script, outside a transaction"
                );
                let _ = writeln!(out, "{}", standalone(dialect, timeouts, sql));
            }
            Unit::RebuildTable { .. } => {
                let _ = writeln!(out, "{}", unit.sql_text());
            }
        }
    }
    if last_tx.is_none() {
        let _ = writeln!(out, "{}", done_comment(plan, step, dialect, false));
    }
}

#[allow(clippy::too_many_arguments)]
fn render_backfill(
    out: &mut String,
    plan: &Plan,
    step: &StepRef,
    b: &Backfill,
    dialect: Dialect,
    timeouts: Timeouts,
    keys: &Keys,
    after: Option<String>,
) {
    let (columns, types) = keys
        .get(&b.table)
        .cloned()
        .unwrap_or_else(|| (vec!["id".to_string()], vec!["text".to_string()]));
    let set: Vec<(String, String)> = b
        .set
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let size = match b.batch_size {
        BatchSize::Auto => format!(
            "auto (starts at {AUTO_START}, tuned toward {} per batch)",
            b.target_batch_time
        ),
        BatchSize::Fixed(n) => n.to_string(),
    };
    let _ = writeln!(
        out,
        "-- keyset pagination on ({}), batch size {size}, pause {} between batches{}",
        ident_list(&columns),
        b.pause,
        if b.max_rows_per_second > 0 {
            format!(", at most {} rows/s", b.max_rows_per_second)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "-- rows to visit: SELECT count(*) FROM {}{};",
        ident(&b.table),
        b.predicate
            .as_deref()
            .map(|p| format!(" WHERE {p}"))
            .unwrap_or_default()
    );
    let resuming = after.is_some();
    let sql = backfill::render(
        dialect,
        &b.table,
        &columns,
        &types,
        &set,
        b.predicate.as_deref(),
        resuming,
    );
    let n = columns.len();
    let param = |i: usize| match dialect {
        Dialect::Postgres => format!("${i}"),
        Dialect::Sqlite => format!("?{i}"),
    };
    match &after {
        Some(key) => {
            let _ = writeln!(
                out,
                "-- resumes after the checkpoint {key}: the next batch, then the same with each batch's last key"
            );
        }
        None => {
            let _ = writeln!(
                out,
                "-- the first batch; later ones add ({}) > (the previous batch's last key)",
                ident_list(&columns)
            );
        }
    }
    let _ = writeln!(out, "{}", open_tx(dialect, timeouts));
    let _ = writeln!(out, "{};", sql.find_last);
    let limit_param = if resuming { n + 1 } else { 1 };
    let mut binds = Vec::new();
    if resuming {
        binds.push(if n == 1 {
            format!("{} = the checkpoint", param(1))
        } else {
            format!("{}..{} = the checkpoint", param(1), param(n))
        });
    }
    binds.push(format!("{} = the batch size", param(limit_param)));
    let _ = writeln!(out, "--   {}", binds.join(", "));
    let _ = writeln!(out, "{};", sql.update);
    let upper = if resuming { n + 1 } else { 1 };
    let last_key = if n == 1 {
        param(upper)
    } else {
        format!("{}..{}", param(upper), param(upper + n - 1))
    };
    let _ = writeln!(
        out,
        "--   {last_key} = the batch's last key, from the query above"
    );
    let _ = writeln!(
        out,
        "-- state (same transaction): UPDATE {} SET checkpoint = '[last key]', rows_done = rows_done + [rows] {}",
        steps_table(dialect),
        where_key(plan, step)
    );
    let _ = writeln!(out, "COMMIT;");
    let _ = writeln!(
        out,
        "-- repeated until a batch finds no rows, then: {}",
        done_comment(plan, step, dialect, false).trim_start_matches("-- ")
    );
}
