//! One function per command: resolve what it needs, run it, print the result, return the exit code.

use std::io::IsTerminal;
use std::path::Path;

use super::args::{
    Cli, Command, DialectArg, FlagsAction, Format, OutputFormat, PlanArgs, RollbackArgs, RunArgs,
};
use super::config::{self, color, prepare, Open};
use super::exit;
use super::output::{HumanReporter, JsonReporter};
use super::prompt::confirm;
use crate::db::{ControlChange, DatabaseUrl, DbError};
use crate::engine::{self, EngineError, Reporter};
use crate::with_target;

/// Runs the parsed command line and returns the process exit code.
pub async fn execute(cli: Cli) -> u8 {
    match &cli.command {
        Command::Validate { plans, dialect } => validate(plans, *dialect, cli.output).await,
        Command::Lint(args) => super::lint::lint(args, cli.output),
        Command::Run(args) => run(&cli, args).await,
        Command::Status(args) => super::status::status(&cli, args).await,
        Command::Pause { plan } => control(&cli, plan, ControlChange::Pause).await,
        Command::Resume { plan } => control(&cli, plan, ControlChange::Resume).await,
        Command::Pace(args) => {
            let rate = args
                .max_rows_per_second
                .filter(|_| !args.auto)
                .map(|n| i64::try_from(n).unwrap_or(i64::MAX));
            control(&cli, &args.plan, ControlChange::Pace(rate)).await
        }
        Command::Gate { plan, phase } => gate(&cli, plan, phase).await,
        Command::Flags { action } => flags(&cli, action.as_ref()).await,
        Command::Rollback(args) => rollback(&cli, args).await,
        Command::Plan(args) => dry_run(&cli, args).await,
        Command::Verify { plan } => verify(&cli, plan).await,
        Command::Db(args) => super::db::execute(&cli, args).await,
        Command::Backups { plan } => super::backups::list(&cli, plan).await,
        Command::Restore(args) => super::backups::restore(&cli, args).await,
    }
}

async fn validate(
    plans: &[std::path::PathBuf],
    dialect: Option<super::args::DialectArg>,
    format: OutputFormat,
) -> u8 {
    let mut code = exit::OK;
    for path in plans {
        match config::load_plan(path) {
            Ok(loaded) => {
                // The plan's own SQL, linted phase-aware: `sql` steps, then the migration files
                // `migrations` steps run.
                let mut report = loaded.report.clone();
                report
                    .findings
                    .extend(crate::plan::lint::lint_plan(&loaded.plan));
                if let Some(dialect) = dialect {
                    let dialect = dialect.into();
                    report
                        .findings
                        .extend(crate::plan::validate::dialect_findings(
                            &loaded.plan,
                            dialect,
                        ));
                    if dialect == crate::db::Dialect::Sqlite {
                        report
                            .findings
                            .extend(sqlite_rehearsal_finding(&loaded.plan).await);
                    }
                }
                report.findings.sort_by_key(|f| (f.line, f.column));
                let migrations = lint_migrations(&loaded.base_dir, &loaded.plan);
                let lint_errors =
                    report.errors().count() + migrations.iter().map(|m| m.errors()).sum::<usize>();
                let warnings = report.warnings().count()
                    + migrations.iter().map(|m| m.warnings()).sum::<usize>();
                if format == OutputFormat::Github {
                    print_annotations(&report);
                } else if !report.findings.is_empty() {
                    eprint!("{}", report.render_for(color()));
                }
                for m in &migrations {
                    match format {
                        OutputFormat::Github => super::lint::print_file(m, OutputFormat::Github),
                        _ if m.findings.is_empty() => {}
                        _ => eprint!("{}", super::lint::render(m, color())),
                    }
                }
                let valid = lint_errors == 0;
                if !valid {
                    code = exit::INVALID;
                }
                match format {
                    OutputFormat::Json => crate::outln!(
                        "{}",
                        serde_json::json!({"plan": path.display().to_string(), "valid": valid, "errors": lint_errors, "warnings": warnings})
                    ),
                    OutputFormat::Human if valid => crate::outln!(
                        "{}: ok — plan `{}`, {} phases, {} steps{}",
                        path.display(),
                        loaded.plan.id(),
                        loaded.plan.phases.value.len(),
                        loaded.plan.step_refs().len(),
                        if warnings > 0 {
                            format!(", {warnings} warning(s)")
                        } else {
                            String::new()
                        }
                    ),
                    OutputFormat::Human => {
                        crate::outln!("{}: invalid — {lint_errors} lint error(s)", path.display())
                    }
                    OutputFormat::Github => {}
                }
            }
            Err(report) => {
                if format == OutputFormat::Github {
                    print_annotations(&report);
                } else {
                    eprint!("{}", report.render_for(color()));
                }
                let errors = report.errors().count();
                match format {
                    OutputFormat::Json => crate::outln!(
                        "{}",
                        serde_json::json!({"plan": path.display().to_string(), "valid": false, "errors": errors})
                    ),
                    OutputFormat::Human => {
                        crate::outln!("{}: invalid — {errors} error(s)", path.display())
                    }
                    OutputFormat::Github => {}
                }
                code = exit::INVALID;
            }
        }
    }
    code
}

/// `validate --dialect sqlite`: the plan rehearsed on an empty SQLite database in memory
/// (`engine::rehearsal`); a step SQLite refuses on a table the plan itself makes (a rename of a
/// NOT NULL column its `create_table` made without a default), located at the step.
async fn sqlite_rehearsal_finding(plan: &crate::plan::model::Plan) -> Option<crate::plan::Finding> {
    let mut empty = match crate::db::sqlite::SqliteTarget::open(Path::new(":memory:")) {
        Ok(empty) => empty,
        Err(e) => {
            tracing::debug!(error = %e, "no rehearsal of the plan: no SQLite database in memory");
            return None;
        }
    };
    let refused = engine::rehearsal::offline_refusal(&mut empty, plan).await?;
    let at = plan
        .phases
        .value
        .get(refused.step.phase_index)?
        .value
        .steps
        .value
        .get(refused.step.index)?
        .referenced;
    Some(
        crate::plan::Finding::error(
            at,
            format!(
                "`{}` (step {}) cannot run on sqlite: {}",
                refused.label,
                refused.step.id(),
                refused.why
            ),
        )
        .with_help("found by rehearsing the plan's steps on an empty SQLite database; change the earlier step that makes the table, or run this plan on PostgreSQL"),
    )
}

/// The migration files each `migrations` step of the plan runs, linted in that step's phase
/// (`plan::lint::migrations` says which files each step runs); a file two steps could run is
/// linted once, in the phase of the first.
fn lint_migrations(base: &Path, plan: &crate::plan::Plan) -> Vec<super::lint::FileLint> {
    crate::plan::lint::migrations::files_run(plan, base)
        .iter()
        .filter_map(|f| super::lint::lint_file(&f.path, Some(f.phase), f.transactional).ok())
        .filter(|l| !l.findings.is_empty())
        .collect()
}

/// A plan report's findings as GitHub workflow annotations.
fn print_annotations(report: &crate::plan::PlanReport) {
    for f in &report.findings {
        let message = match &f.help {
            Some(help) => format!("{}\n{help}", f.message),
            None => f.message.clone(),
        };
        crate::outln!(
            "{}",
            super::lint::annotation(
                f.severity,
                &report.file,
                f.line,
                f.column,
                "phased validate",
                &message
            )
        );
    }
}

fn reporter(format: Format) -> Box<dyn Reporter> {
    match format {
        Format::Json => Box::new(JsonReporter),
        Format::Human => Box::new(HumanReporter::new()),
    }
}

/// The common part of a failed step's report: what failed, the error, the SQL, what got done.
fn print_failure(headline: &str, error: &str, sql: Option<&str>, done: (&str, &[String])) {
    eprintln!("\nerror: {headline}");
    eprintln!("  {}", error.replace('\n', "\n  "));
    if let Some(sql) = sql {
        eprintln!("  while running:\n    {}", sql.replace('\n', "\n    "));
    }
    if !done.1.is_empty() {
        eprintln!("  {}: {}", done.0, done.1.join(", "));
    }
}

/// Prints an engine error the way an operator needs it, and maps it to its exit code.
fn report_engine_error(err: &EngineError, plan: &Path, format: Format) -> u8 {
    let code = match err {
        EngineError::Target(e) if e.lease_lost().is_some() => exit::LOCKED,
        EngineError::StepFailed { .. }
        | EngineError::Drift { .. }
        | EngineError::Target(_)
        | EngineError::Irreversible { .. }
        | EngineError::UndoFailed { .. }
        | EngineError::Backup { .. } => exit::FAILED,
        EngineError::GateNotMet(_) => exit::GATE,
        EngineError::LeaseHeld { .. }
        | EngineError::LeaseWaitTimedOut { .. }
        | EngineError::LeaseLost(_) => exit::LOCKED,
        EngineError::Usage(_) => exit::INVALID,
        EngineError::Interrupted { signal, .. } => crate::engine::interrupt::exit_code(signal),
    };
    if format == Format::Json {
        let mut line =
            serde_json::json!({"event": "error", "exit_code": code, "message": err.to_string()});
        if let EngineError::Backup {
            hint: Some(hint), ..
        } = err
        {
            line["hint"] = serde_json::Value::String(hint.clone());
        }
        crate::outln!("{line}");
    }
    match err {
        EngineError::Interrupted {
            signal,
            step,
            detail,
        } => {
            let resume = match step {
                Some((id, label)) => format!(
                    "`phased run {}` resumes from step {id} ({label}){}",
                    plan.display(),
                    detail
                        .as_deref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ),
                None => format!("`phased run {}` continues", plan.display()),
            };
            eprintln!("\ninterrupted ({signal}) — {resume}.");
            eprintln!(
                "  The state is saved and the plan's lease released; `phased status {}` shows where everything stands.",
                plan.display()
            );
        }
        EngineError::StepFailed {
            step,
            label,
            error,
            sql,
            completed,
        } => {
            print_failure(
                &format!("step {step} ({label}) failed"),
                error,
                sql.as_deref(),
                ("completed by this run", completed),
            );
            eprintln!(
                "  The state is saved. Fix the cause and run `phased run {}` again to resume from this step;\n  `phased status {}` shows where everything stands.",
                plan.display(),
                plan.display()
            );
        }
        EngineError::Drift { step, label } => {
            eprintln!("error: drift: step {step} ({label}) is done, but its definition in the plan changed since it ran.");
            eprintln!("  Nothing was executed. Restore the step as it was and put the change in a new step (or a new plan).");
        }
        EngineError::Irreversible {
            step,
            label,
            reason,
            undone,
        } => {
            eprintln!("\nerror: rollback stopped at step {step} ({label}): it cannot be undone");
            eprintln!("  {}", reason.replace('\n', "\n  "));
            if !undone.is_empty() {
                eprintln!("  undone by this rollback: {}", undone.join(", "));
            }
            eprintln!(
                "  Steps before it are untouched. Undo it by hand (then mark it with a new plan), or restore a backup;\n  `phased status {}` shows where everything stands.",
                plan.display()
            );
        }
        EngineError::UndoFailed {
            step,
            label,
            error,
            sql,
            undone,
        } => {
            print_failure(
                &format!("undoing step {step} ({label}) failed"),
                error,
                sql.as_deref(),
                ("undone by this rollback", undone),
            );
            eprintln!(
                "  The step is still recorded as done. Fix the cause and run `phased rollback {}` again to resume.",
                plan.display()
            );
        }
        EngineError::Backup {
            phase,
            message,
            hint,
        } => {
            eprintln!("\nerror: the backup before phase `{phase}` failed");
            eprintln!("  {}", message.replace('\n', "\n  "));
            if let Some(hint) = hint {
                eprintln!("  hint: {hint}");
            }
            eprintln!(
                "  Phase `{phase}` did not start: none of its steps ran. Fix the cause and run `phased run {}` again.",
                plan.display()
            );
        }
        other => eprintln!("error: {other}"),
    }
    code
}

async fn run(cli: &Cli, args: &RunArgs) -> u8 {
    let (loaded, _url, mut target) = match prepare(cli, &args.plan, Open::Create).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let interrupt = crate::engine::interrupt::Interrupt::new();
    let options = engine::RunOptions {
        phase: args.phase.clone(),
        until: args.until.clone(),
        throttle_file: args.throttle_file.clone(),
        interrupt: Some(interrupt.clone()),
        wait: args.wait.wait(),
        // `--wait` is startup mode (see docs/startup.md).
        refuse_destructive: args.wait.wait,
    };
    let canceller = with_target!(&mut target, t => t.canceller());
    let signals = tokio::spawn(watch_signals(interrupt, canceller));
    let mut recorder = super::junit::JunitRecorder::new(reporter(cli.format));
    let result =
        with_target!(&mut target, t => engine::run(t, &loaded, &options, &mut recorder).await);
    signals.abort();
    if let Some(file) = &args.junit {
        let xml = super::junit::render(loaded.plan.id(), &recorder.events, result.as_ref().err());
        if let Err(e) = std::fs::write(file, xml) {
            eprintln!(
                "error: cannot write the JUnit report {}: {e}",
                file.display()
            );
        }
    }
    match result {
        Ok(()) => exit::OK,
        Err(err) => report_engine_error(&err, &args.plan, cli.format),
    }
}

/// Who an operator's command is recorded as: `user@host`.
fn operator() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_string());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".to_string());
    format!("{user}@{host}")
}

/// `phased pause|resume|pace PLAN`: an operator's hand on the plan's backfills, written to the
/// state in the target database, where a running backfill reads it before its next batch.
async fn control(cli: &Cli, path: &Path, change: ControlChange) -> u8 {
    let (loaded, _url, mut target) = match prepare(cli, path, Open::Existing).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let by = operator();
    let plan = loaded.plan.id().to_string();
    let result: Result<(), DbError> = with_target!(&mut target, t => async {
        t.ensure_state().await?;
        t.set_backfill_control(&plan, change, &by).await
    }.await);
    if let Err(e) = result {
        eprintln!("error: {e}");
        return exit::FAILED;
    }
    let what = match change {
        ControlChange::Pause => "paused: a running backfill stops before its next batch (within a second) and waits; the pause holds for later runs until `phased resume`".to_string(),
        ControlChange::Resume => "resumed: a paused backfill goes on from its checkpoint".to_string(),
        ControlChange::Pace(Some(n)) => format!("paced: at most {n} rows a second, from the next batch"),
        ControlChange::Pace(None) => {
            "paced: back to the steps' own pace (throttle: auto, unless a step sets fixed knobs), from the next batch".to_string()
        }
    };
    if cli.format == Format::Json {
        crate::outln!(
            "{}",
            serde_json::json!({"event": "control", "plan": plan, "by": by, "change": format!("{change:?}").to_lowercase()})
        );
    } else {
        crate::outln!("plan {plan}'s backfills {what} (by {by})");
    }
    exit::OK
}

/// Ctrl-C and SIGTERM during a run: the first raises the interrupt (the run stops at its next
/// safe point) and cancels the statement running for phased; the second ends the process at
/// once, which is safe too: every unit of work is a transaction, a PostgreSQL lease ends with its
/// session, and a SQLite lease of a process that is gone is taken over.
async fn watch_signals(
    interrupt: crate::engine::interrupt::Interrupt,
    canceller: Option<crate::db::cancel::Canceller>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    let first = tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    eprintln!("\n{first}: stopping at a safe point (send it again to exit at once)");
    interrupt.raise(first);
    if let Some(canceller) = &canceller {
        canceller.cancel().await;
    }
    let second = tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    eprintln!("{second} again: exiting now");
    #[allow(clippy::disallowed_methods)] // on purpose: the operator asked twice
    std::process::exit(i32::from(crate::engine::interrupt::exit_code(second)));
}

async fn gate(cli: &Cli, path: &Path, phase_name: &str) -> u8 {
    let (loaded, _url, mut target) = match prepare(cli, path, Open::Existing).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let Some(phase) = loaded.plan.phase(phase_name) else {
        let names: Vec<&str> = loaded.plan.phases().map(|p| p.name()).collect();
        eprintln!(
            "error: plan `{}` has no phase `{phase_name}`; its phases are: {}",
            loaded.plan.id(),
            names.join(", ")
        );
        return exit::INVALID;
    };
    let result: Result<_, DbError> =
        with_target!(&mut target, t => engine::gate::evaluate(t, &loaded.plan, phase).await);
    let outcomes = match result {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILED;
        }
    };
    let ok = outcomes.iter().all(|o| o.ok);
    for o in &outcomes {
        match cli.format {
            Format::Json => crate::outln!(
                "{}",
                serde_json::json!({"event": "gate_result", "phase": phase_name, "condition": o.condition, "ok": o.ok, "detail": o.detail})
            ),
            Format::Human => crate::outln!(
                "{} {} — {}",
                if o.ok { "✓" } else { "✗" },
                o.condition,
                o.detail
            ),
        }
    }
    if outcomes.is_empty() && cli.format == Format::Human {
        crate::outln!("phase {phase_name} has no gate");
    }
    if ok {
        exit::OK
    } else {
        exit::GATE
    }
}

async fn flags(cli: &Cli, action: Option<&FlagsAction>) -> u8 {
    let url = match config::database_url(cli.database.as_deref()) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INVALID;
        }
    };
    let mut target = match config::open(&url, "flags", Open::Existing).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILED;
        }
    };
    let result: Result<Vec<crate::db::FlagRecord>, DbError> = with_target!(&mut target, t => async {
        if let Some(FlagsAction::Set { name, value }) = action {
            t.ensure_state().await?;
            t.set_flag(name, value, None, None).await?;
        }
        t.flags().await
    }.await);
    match result {
        Ok(flags) => {
            if cli.format == Format::Json {
                return super::out_json(&flags);
            } else if flags.is_empty() {
                crate::outln!("no flags set");
            } else {
                for f in flags {
                    crate::outln!(
                        "{:<32} {:<10} {}  {}",
                        f.name,
                        f.value,
                        f.updated_at,
                        f.plan
                            .map(|p| format!("(plan {p})"))
                            .unwrap_or_else(|| "(by hand)".into())
                    );
                }
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::FAILED
        }
    }
}

async fn rollback(cli: &Cli, args: &RollbackArgs) -> u8 {
    let (loaded, _url, mut target) = match prepare(cli, &args.plan, Open::Existing).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    if let Some(to) = &args.to {
        if loaded.plan.phase(to).is_none() {
            let names: Vec<&str> = loaded.plan.phases().map(|p| p.name()).collect();
            eprintln!(
                "error: plan `{}` has no phase `{to}`; its phases are: {}",
                loaded.plan.id(),
                names.join(", ")
            );
            return exit::INVALID;
        }
    }
    if !args.yes {
        let what = match &args.to {
            Some(p) => format!("the phases after `{p}`"),
            None => "every phase".to_string(),
        };
        let question = format!(
            "Roll back {what} of plan `{}` on {}?",
            loaded.plan.id(),
            with_target!(&mut target, t => t.describe())
        );
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "error: rollback changes the schema: confirm with --yes when not on a terminal"
            );
            return exit::INVALID;
        }
        if !confirm(&question) {
            eprintln!("rollback cancelled");
            return exit::INVALID;
        }
    }
    let options = engine::rollback::RollbackOptions {
        to: args.to.clone(),
    };
    let mut reporter = reporter(cli.format);
    let result = with_target!(&mut target, t => engine::rollback::rollback(t, &loaded, &options, reporter.as_mut()).await);
    match result {
        Ok(undone) => {
            if cli.format == Format::Human {
                crate::outln!(
                    "rolled back {} step(s){}",
                    undone.len(),
                    match &args.to {
                        Some(p) => format!("; phase {p} and the ones before it are untouched"),
                        None => String::new(),
                    }
                );
            }
            exit::OK
        }
        Err(err) => report_engine_error(&err, &args.plan, cli.format),
    }
}

async fn dry_run(cli: &Cli, args: &PlanArgs) -> u8 {
    let loaded = match config::load_plan(&args.plan) {
        Ok(l) => l,
        Err(report) => {
            eprint!("{}", report.render_for(color()));
            return exit::INVALID;
        }
    };
    if args.explain {
        crate::outln!("{}", crate::plan::compile::explain(&loaded.plan).trim_end());
        return exit::OK;
    }
    let url = match config::database_url(cli.database.as_deref()) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INVALID;
        }
    };
    // A dry run writes nothing: a missing SQLite file is rendered offline rather than created.
    let offline = args.offline || config::is_missing_file(&url);
    let dialect = match (args.dialect, &url) {
        (Some(DialectArg::Postgres), _) => crate::db::Dialect::Postgres,
        (Some(DialectArg::Sqlite), _) => crate::db::Dialect::Sqlite,
        (None, DatabaseUrl::Postgres(_)) if !offline || cli.database.is_some() => {
            crate::db::Dialect::Postgres
        }
        (None, _) => crate::db::Dialect::Sqlite,
    };
    let recorder = crate::db::recorder::Recorder::new();
    let mut opened = if offline {
        None
    } else {
        match config::open(&url, loaded.plan.id(), Open::Existing).await {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILED;
            }
        }
    };
    let header = match opened.as_mut() {
        Some(t) => format!(
            "-- phased plan {} on {} ({})",
            loaded.plan.id(),
            with_target!(t, t => crate::db::Executor::describe(t)),
            dialect.as_str()
        ),
        None => format!(
            "-- phased plan {} (offline, {}: every step shown as pending)",
            loaded.plan.id(),
            dialect.as_str()
        ),
    };
    let recording = config::recording(opened, dialect, recorder);
    let result = match recording {
        Ok(mut target) => {
            with_target!(&mut target, t => engine::dry_run::dry_run(t, &loaded, args.phase.as_deref()).await)
        }
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(entries) => {
            if cli.format == Format::Json {
                crate::cli::out_text(&format!(
                    "{}\n",
                    serde_json::to_string(&entries).unwrap_or_default()
                ));
            } else {
                let suppressed = crate::plan::lint::suppressed_in_plan(
                    &loaded.plan,
                    &loaded.report.source,
                    &loaded.base_dir,
                );
                crate::cli::out_text(&engine::dry_run::render(
                    &header,
                    dialect,
                    &entries,
                    args.phase.as_deref(),
                    &suppressed,
                ));
            }
            exit::OK
        }
        Err(err) => report_engine_error(&err, &args.plan, cli.format),
    }
}

/// One line of verify's human output for a data check.
fn data_check_line(check: &engine::verify::DataCheck) -> String {
    use crate::db::conversion_check::Conversion;
    let head = format!("{} {}", check.step, check.label);
    match &check.found {
        Conversion::Converts { rows } => format!(
            "data: {head}: `{}` converts all {rows} existing row(s) of {}",
            check.expression, check.table
        ),
        Conversion::Fails { error, row } => {
            let error = error.replace('\n', " ");
            let row = match row {
                Some(row) => format!("the first row that fails is {row}"),
                None => "the row was not narrowed down".to_string(),
            };
            format!(
                "warning: {head}: `{}` fails on an existing row of {} ({row}): {error} — until the row is fixed the backfill stops there, and the old application's writes of such a value fail",
                check.expression, check.table
            )
        }
        Conversion::CutShort { timeout_ms } => format!(
            "warning: {head}: the check of `{}` over the rows of {} was cut short after {timeout_ms} ms: rows it did not reach may not convert",
            check.expression, check.table
        ),
        Conversion::Unchecked { error } => format!(
            "warning: {head}: the rows of {} could not be checked: {}",
            check.table,
            error.replace('\n', " ")
        ),
    }
}

async fn verify(cli: &Cli, path: &Path) -> u8 {
    use crate::db::scratch::Scratch;
    use crate::engine::verify::VerifyOutcome;

    let loaded = match config::load_plan(path) {
        Ok(l) => l,
        Err(report) => {
            eprint!("{}", report.render_for(color()));
            return exit::INVALID;
        }
    };
    let url = match config::database_url(cli.database.as_deref()) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INVALID;
        }
    };
    // Verify rehearses a plan before it runs: on a database where it has started, the copied
    // schema already holds its changes. The rows the target holds are checked against each
    // `up` (read-only) before the rehearsal.
    let mut data_checks = Vec::new();
    if !config::is_missing_file(&url) {
        let mut target = match config::open(&url, loaded.plan.id(), Open::Existing).await {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILED;
            }
        };
        let id = loaded.plan.id().to_string();
        match with_target!(&mut target, t => t.load_steps(&id).await) {
            Ok(records) => {
                let done = records
                    .iter()
                    .filter(|r| r.status == crate::db::StepStatus::Done)
                    .count();
                if done > 0 {
                    eprintln!(
                        "error: plan `{id}` has already started on {} ({done} step(s) done); verify rehearses a plan \
                         before it runs. Point --database at a database where it has not run (e.g. a copy of production's schema).",
                        url.redacted()
                    );
                    return exit::INVALID;
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILED;
            }
        }
        data_checks = with_target!(&mut target, t => engine::verify::check_data(
            t,
            &loaded,
            engine::verify::DATA_CHECK_TIMEOUT,
        )
        .await);
    }
    let scratch = match Scratch::create(&url).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot create the scratch database: {e}");
            return exit::FAILED;
        }
    };
    if cli.format == Format::Human {
        eprintln!(
            "phased verify: rehearsing plan {} on {} (a copy of {}'s schema, no data)",
            loaded.plan.id(),
            scratch.describe(),
            url.redacted()
        );
    }
    let mut reporter = reporter(cli.format);
    let result = match config::open(&scratch.url(), loaded.plan.id(), Open::Create).await {
        Ok(mut target) => {
            let r = with_target!(&mut target, t => engine::verify::verify(t, &loaded, reporter.as_mut()).await);
            drop(target);
            r
        }
        Err(e) => Err(EngineError::Target(e)),
    };
    scratch.remove().await;
    let outcome = match result {
        Ok(o) => o,
        Err(err) => return report_engine_error(&err, path, cli.format),
    };
    if cli.format == Format::Json {
        let mut line = serde_json::to_value(&outcome).unwrap_or_default();
        if let Some(map) = line.as_object_mut() {
            map.insert("event".into(), "verify_result".into());
            map.insert(
                "data_checks".into(),
                serde_json::to_value(&data_checks).unwrap_or_default(),
            );
        }
        crate::outln!("{line}");
    } else {
        match &outcome {
            VerifyOutcome::Passed {
                phases,
                steps_undone,
            } => crate::outln!(
                "verify passed: ran {} and rolled back {steps_undone} step(s); the schema is as it was",
                if phases.is_empty() {
                    "no phase (the first phase is a contract)".to_string()
                } else {
                    format!("phases {}", phases.join(", "))
                }
            ),
            VerifyOutcome::Irreversible { steps } => {
                crate::outln!("verify failed: {} step(s) cannot be undone", steps.len());
                for s in steps {
                    crate::outln!("  {} {}: {}", s.step, s.label, s.reason);
                }
            }
            VerifyOutcome::Differs { missing, extra } => {
                crate::outln!("verify failed: after rolling back, the schema differs from before");
                for l in missing {
                    crate::outln!("  - {l}");
                }
                for l in extra {
                    crate::outln!("  + {l}");
                }
            }
            VerifyOutcome::Failed { stage, error } => {
                crate::outln!("verify failed during {stage}: {error}")
            }
        }
        for check in &data_checks {
            crate::outln!("{}", data_check_line(check));
        }
    }
    // A value `up` cannot convert is a warning, not a failure (issue 13): the plan is sound, the
    // data needs fixing (or `up` a case for it) before the backfill reaches that row.
    if outcome.passed() {
        exit::OK
    } else {
        exit::FAILED
    }
}
