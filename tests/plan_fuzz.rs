//! Property test: any mutation of a valid plan — bytes cut, inserted or replaced, lines
//! duplicated or re-indented, values swapped for odd ones — is either a plan or a located error
//! report that renders; never a panic. 2,000 mutated plans per run; proptest shrinks a failure
//! to a small one and prints it (nothing is written into the repository).

use std::path::Path;

use proptest::prelude::*;

/// Plans that use every step kind, gates, defaults and backups: the material mutations work on.
const PLANS: &[&str] = &[
    include_str!("../plans/quickstart.yaml"),
    include_str!("fixtures/plans/migrations.yaml"),
    include_str!("fixtures/every_step_kind.yaml"),
];

/// Odd values a mutation may put in a value's place.
const ODD: &[&str] = &[
    "",
    "~",
    "[]",
    "{}",
    "-1",
    "0",
    "18446744073709551616",
    "1e999",
    "true",
    "\"\"",
    "'",
    "\"",
    "*anchor",
    "&a",
    "!!binary AA==",
    "…",
    "\u{0}",
    "a_name_longer_than_sixty_three_bytes_which_postgres_would_cut_silently_xx",
    "a.b.c",
    "0ms",
    "1h",
    "-",
    "? ",
    ": ",
    "|",
    ">",
    "#",
    "%YAML 1.2",
];

#[derive(Debug, Clone)]
enum Mutation {
    Cut { at: usize, len: usize },
    Insert { at: usize, text: String },
    DuplicateLine { line: usize },
    Indent { line: usize, by: i8 },
    Value { line: usize, odd: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Mutation::Cut { at, len }),
        (any::<usize>(), "\\PC{0,8}").prop_map(|(at, text)| Mutation::Insert { at, text }),
        any::<usize>().prop_map(|line| Mutation::DuplicateLine { line }),
        (any::<usize>(), -4i8..4).prop_map(|(line, by)| Mutation::Indent { line, by }),
        (any::<usize>(), 0..ODD.len()).prop_map(|(line, odd)| Mutation::Value { line, odd }),
    ]
}

fn floor_boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let n = lines.len().max(1);
    match m {
        Mutation::Cut { at, len } => {
            let start = floor_boundary(text, at % (text.len() + 1));
            let end = floor_boundary(text, start + len);
            format!("{}{}", &text[..start], &text[end..])
        }
        Mutation::Insert { at, text: inserted } => {
            let at = floor_boundary(text, at % (text.len() + 1));
            format!("{}{inserted}{}", &text[..at], &text[at..])
        }
        Mutation::DuplicateLine { line } => {
            let i = line % n;
            if let Some(copy) = lines.get(i).cloned() {
                lines.insert(i, copy);
            }
            lines.join("\n")
        }
        Mutation::Indent { line, by } => {
            if let Some(l) = lines.get_mut(line % n) {
                if *by >= 0 {
                    *l = format!("{}{l}", " ".repeat(*by as usize));
                } else {
                    let cut = l.len() - l.trim_start().len();
                    *l = l[cut.min(by.unsigned_abs() as usize)..].to_string();
                }
            }
            lines.join("\n")
        }
        Mutation::Value { line, odd } => {
            if let Some(l) = lines.get_mut(line % n) {
                if let Some((key, _)) = l.split_once(": ") {
                    *l = format!("{key}: {}", ODD[*odd]);
                }
            }
            lines.join("\n")
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_mutated_plan_is_a_plan_or_a_located_report_never_a_panic(
        which in 0..PLANS.len(),
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        let mut text = PLANS[which].to_string();
        for m in &mutations {
            text = apply(&text, m);
        }
        // A temp folder: `sql: { file: … }` and `migrations: { dir: … }` resolve there, to nothing.
        let base = tempfile::tempdir().expect("temp dir");
        match phased::plan::parse_str("plan.yaml", &text, Path::new(base.path())) {
            Ok(loaded) => {
                // A plan that parses also renders its dry run's offline output and checksums.
                for (step, _) in loaded.plan.step_refs() {
                    prop_assert!(!step.checksum.is_empty());
                }
            }
            Err(report) => {
                let rendered = report.render_plain();
                prop_assert!(rendered.contains("plan.yaml"), "{}", rendered);
            }
        }
    }
}
