//! From what is applied to what is wanted: the ordered list of revisions to run up or down,
//! each with the version heads once it is recorded.

use std::collections::BTreeSet;

use super::{History, MigrationError, Spec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "upgrade",
            Direction::Down => "downgrade",
        }
    }
}

/// One revision to run in one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub revision: String,
    pub direction: Direction,
    /// The version heads after this move.
    pub heads_after: Vec<String>,
}

/// The applied set as a set.
pub fn applied_set<'a>(applied: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    applied.into_iter().map(str::to_string).collect()
}

/// Runs up everything `goal` needs that is not applied yet, parents first.
pub fn up_to(history: &History, applied: &BTreeSet<String>, goal: &BTreeSet<String>) -> Vec<Move> {
    let mut now = applied.clone();
    let mut moves = Vec::new();
    for m in history.in_order() {
        if goal.contains(&m.revision) && !now.contains(&m.revision) {
            now.insert(m.revision.clone());
            moves.push(Move {
                revision: m.revision.clone(),
                direction: Direction::Up,
                heads_after: history.heads_of(&now),
            });
        }
    }
    moves
}

/// Runs down every applied revision outside `keep`, children first.
pub fn down_to(
    history: &History,
    applied: &BTreeSet<String>,
    keep: &BTreeSet<String>,
) -> Vec<Move> {
    let mut now = applied.clone();
    let mut moves = Vec::new();
    for m in history.in_order().rev() {
        if now.contains(&m.revision) && !keep.contains(&m.revision) {
            now.remove(&m.revision);
            moves.push(Move {
                revision: m.revision.clone(),
                direction: Direction::Down,
                heads_after: history.heads_of(&now),
            });
        }
    }
    moves
}

/// The ancestor-closed set of revisions that `heads` stand for.
pub fn closure(history: &History, heads: &[String]) -> BTreeSet<String> {
    heads
        .iter()
        .flat_map(|h| history.ancestors_inclusive(h))
        .collect()
}

/// The moves of `upgrade SPEC`.
pub fn upgrade(
    history: &History,
    applied: &BTreeSet<String>,
    spec: &Spec,
) -> Result<Vec<Move>, MigrationError> {
    let goal = match spec {
        Spec::Head => match history.heads().as_slice() {
            [] => BTreeSet::new(),
            [one] => history.ancestors_inclusive(one),
            many => {
                return Err(MigrationError::MultipleHeads {
                    heads: many.iter().map(|s| s.to_string()).collect(),
                })
            }
        },
        Spec::Heads => {
            let heads: Vec<String> = history.heads().iter().map(|s| s.to_string()).collect();
            closure(history, &heads)
        }
        Spec::Base => {
            return Err(MigrationError::Usage(
                "`upgrade base` goes nowhere: use `downgrade base` to undo every migration"
                    .to_string(),
            ))
        }
        Spec::Revision(name) => history.ancestors_inclusive(&history.resolve(name)?.revision),
        Spec::Relative(n) if *n > 0 => return relative_up(history, applied, *n, spec),
        Spec::Relative(_) | Spec::BranchRelative { n: ..0, .. } => {
            return Err(MigrationError::Usage(format!(
                "`upgrade {spec}` goes down: use `downgrade {spec}`"
            )))
        }
        Spec::BranchRelative { revision, n } => {
            return branch_up(
                history,
                applied,
                &history.resolve(revision)?.revision,
                *n,
                spec,
            )
        }
    };
    Ok(up_to(history, applied, &goal))
}

/// The one revision a step up applies, or why there is none (the `end` reached after `done`
/// steps) or more than one.
fn next_one(
    next: &[&str],
    spec: &Spec,
    end: &'static str,
    done: i64,
) -> Result<String, MigrationError> {
    match next {
        [] => Err(MigrationError::OutOfRange {
            spec: spec.to_string(),
            end,
            available: usize::try_from(done).unwrap_or(0),
        }),
        [one] => Ok(one.to_string()),
        many => Err(MigrationError::AmbiguousStep {
            spec: spec.to_string(),
            verb: "apply",
            options: many.iter().map(|s| s.to_string()).collect(),
        }),
    }
}

fn relative_up(
    history: &History,
    applied: &BTreeSet<String>,
    n: i64,
    spec: &Spec,
) -> Result<Vec<Move>, MigrationError> {
    let mut now = applied.clone();
    let mut moves = Vec::new();
    for done in 0..n {
        let next: Vec<&str> = history
            .in_order()
            .filter(|m| !now.contains(&m.revision))
            .filter(|m| m.revises.iter().all(|p| now.contains(p)))
            .map(|m| m.revision.as_str())
            .collect();
        let revision = next_one(&next, spec, "head", done)?;
        now.insert(revision.clone());
        moves.push(Move {
            revision,
            direction: Direction::Up,
            heads_after: history.heads_of(&now),
        });
    }
    Ok(moves)
}

/// `downgrade REV@-N`: undoes `REV`, then its parent, … (N revisions) along its own branch.
/// Each must be applied and a head when its turn comes: what revises it is undone first (a
/// merge is undone with `-1` or by name), and a revision that is itself a merge has no single
/// branch to go down.
fn branch_down(
    history: &History,
    applied: &BTreeSet<String>,
    start: &str,
    n: i64,
    spec: &Spec,
) -> Result<Vec<Move>, MigrationError> {
    let mut now = applied.clone();
    let mut moves = Vec::new();
    let mut at = start.to_string();
    for done in 0..n.unsigned_abs() {
        if !now.contains(&at) {
            return Err(MigrationError::OutOfRange {
                spec: spec.to_string(),
                end: "base of the branch",
                available: usize::try_from(done).unwrap_or(0),
            });
        }
        let above: Vec<String> = history
            .descendants(&at)
            .into_iter()
            .filter(|d| now.contains(d))
            .collect();
        if !above.is_empty() {
            return Err(MigrationError::Usage(format!(
                "`downgrade {spec}`: {at} is not a head: {} revise(s) it and must be undone first",
                above.join(", ")
            )));
        }
        now.remove(&at);
        moves.push(Move {
            revision: at.clone(),
            direction: Direction::Down,
            heads_after: history.heads_of(&now),
        });
        let parents = history
            .get(&at)
            .map(|m| m.revises.clone())
            .unwrap_or_default();
        match parents.as_slice() {
            [one] => at = one.clone(),
            [] => at = String::new(),
            _ if done + 1 == n.unsigned_abs() => {}
            many => {
                return Err(MigrationError::AmbiguousStep {
                    spec: spec.to_string(),
                    verb: "undo",
                    options: many.to_vec(),
                })
            }
        }
    }
    Ok(moves)
}

/// `upgrade REV@+N`: applies the next N revisions after `REV` along its branch (each the single
/// unapplied revision that revises the one before and whose parents are all applied).
fn branch_up(
    history: &History,
    applied: &BTreeSet<String>,
    start: &str,
    n: i64,
    spec: &Spec,
) -> Result<Vec<Move>, MigrationError> {
    let mut now = applied.clone();
    if !now.contains(start) {
        return Err(MigrationError::Usage(format!(
            "`upgrade {spec}`: {start} is not applied; `upgrade {start}` applies it"
        )));
    }
    let mut moves = Vec::new();
    let mut at = start.to_string();
    for done in 0..n {
        let next: Vec<&str> = history
            .children(&at)
            .into_iter()
            .filter(|c| !now.contains(*c))
            .filter(|c| {
                history
                    .get(c)
                    .is_some_and(|m| m.revises.iter().all(|p| now.contains(p)))
            })
            .collect();
        let revision = next_one(&next, spec, "head of the branch", done)?;
        now.insert(revision.clone());
        moves.push(Move {
            revision: revision.clone(),
            direction: Direction::Up,
            heads_after: history.heads_of(&now),
        });
        at = revision;
    }
    Ok(moves)
}

/// The moves of `downgrade SPEC`.
pub fn downgrade(
    history: &History,
    applied: &BTreeSet<String>,
    spec: &Spec,
) -> Result<Vec<Move>, MigrationError> {
    match spec {
        Spec::Base => Ok(down_to(history, applied, &BTreeSet::new())),
        Spec::Revision(name) => {
            let revision = &history.resolve(name)?.revision;
            if !applied.contains(revision) {
                return Err(MigrationError::Usage(format!(
                    "revision {revision} is not applied, so there is nothing to go down to; `phased db current` shows what is"
                )));
            }
            let below = history.descendants(revision);
            let keep = applied.difference(&below).cloned().collect();
            Ok(down_to(history, applied, &keep))
        }
        Spec::Relative(n) if *n < 0 => {
            let mut now = applied.clone();
            let mut moves = Vec::new();
            for done in 0..n.unsigned_abs() {
                let heads = history.heads_of(&now);
                let revision = match heads.as_slice() {
                    [] => {
                        return Err(MigrationError::OutOfRange {
                            spec: spec.to_string(),
                            end: "base",
                            available: usize::try_from(done).unwrap_or(0),
                        })
                    }
                    [one] => one.clone(),
                    many => {
                        return Err(MigrationError::AmbiguousStep {
                            spec: spec.to_string(),
                            verb: "undo",
                            options: many.to_vec(),
                        })
                    }
                };
                now.remove(&revision);
                moves.push(Move {
                    revision,
                    direction: Direction::Down,
                    heads_after: history.heads_of(&now),
                });
            }
            Ok(moves)
        }
        Spec::BranchRelative { revision, n } if *n < 0 => branch_down(
            history,
            applied,
            &history.resolve(revision)?.revision,
            *n,
            spec,
        ),
        Spec::Relative(_) | Spec::BranchRelative { .. } => Err(MigrationError::Usage(format!(
            "`downgrade {spec}` goes up: use `upgrade {spec}`"
        ))),
        Spec::Head | Spec::Heads => Err(MigrationError::Usage(format!(
            "`downgrade {spec}` goes nowhere: use `upgrade {spec}`"
        ))),
    }
}

/// The applied set `stamp SPEC` records (nothing runs).
pub fn stamp(history: &History, spec: &Spec) -> Result<BTreeSet<String>, MigrationError> {
    match spec {
        Spec::Base => Ok(BTreeSet::new()),
        Spec::Head => match history.heads().as_slice() {
            [] => Ok(BTreeSet::new()),
            [one] => Ok(history.ancestors_inclusive(one)),
            many => Err(MigrationError::MultipleHeads {
                heads: many.iter().map(|s| s.to_string()).collect(),
            }),
        },
        Spec::Heads => {
            let heads: Vec<String> = history.heads().iter().map(|s| s.to_string()).collect();
            Ok(closure(history, &heads))
        }
        Spec::Revision(name) => Ok(history.ancestors_inclusive(&history.resolve(name)?.revision)),
        Spec::Relative(_) | Spec::BranchRelative { .. } => Err(MigrationError::Usage(
            "stamp takes a revision, `head`, `heads` or `base`, not a relative step".to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::history::tests::{diamond, history};

    fn set(revs: &[&str]) -> BTreeSet<String> {
        revs.iter().map(|s| s.to_string()).collect()
    }

    fn revs(moves: &[Move]) -> Vec<&str> {
        moves.iter().map(|m| m.revision.as_str()).collect()
    }

    /// After undoing the merge there are two heads: `-1` is ambiguous, `REV@-1` undoes one
    /// branch, and `REV@+1` applies it again.
    #[test]
    fn one_branch_of_a_merge_is_undone_and_redone_by_name() {
        let h = diamond();
        let two_heads = set(&["aa01", "bb02", "cc03", "dd04"]);
        assert!(downgrade(&h, &two_heads, &Spec::Relative(-1)).is_err());
        let branch = Spec::parse("dd04@-1").unwrap();
        let moves = downgrade(&h, &two_heads, &branch).unwrap();
        assert_eq!(revs(&moves), vec!["dd04"]);
        assert_eq!(moves[0].heads_after, vec!["cc03"]);
        // Not a head: the merge revises it.
        let all = set(&["aa01", "bb02", "cc03", "dd04", "ee05"]);
        let err = downgrade(&h, &all, &branch).unwrap_err().to_string();
        assert!(err.contains("ee05"), "{err}");
        // Two down the branch of cc03: cc03, then bb02 — which dd04 still revises.
        let err = downgrade(&h, &two_heads, &Spec::parse("cc03@-2").unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("dd04"), "{err}");
        let up = upgrade(
            &h,
            &set(&["aa01", "bb02", "cc03"]),
            &Spec::parse("bb02@+1").unwrap(),
        );
        assert_eq!(revs(&up.unwrap()), vec!["dd04"]);
    }

    #[test]
    fn upgrade_head_runs_parents_first() {
        let h = diamond();
        let moves = upgrade(&h, &set(&[]), &Spec::Head).unwrap();
        assert_eq!(revs(&moves), vec!["aa01", "bb02", "cc03", "dd04", "ee05"]);
        assert!(moves.iter().all(|m| m.direction == Direction::Up));
        assert_eq!(moves[3].heads_after, vec!["cc03", "dd04"]);
        assert_eq!(moves[4].heads_after, vec!["ee05"]);
        assert!(upgrade(
            &h,
            &set(&["aa01", "bb02", "cc03", "dd04", "ee05"]),
            &Spec::Head
        )
        .unwrap()
        .is_empty());
    }

    #[test]
    fn upgrade_to_a_prefix_runs_its_ancestors_only() {
        let h = diamond();
        let moves = upgrade(&h, &set(&["aa01"]), &Spec::Revision("dd".into())).unwrap();
        assert_eq!(revs(&moves), vec!["bb02", "dd04"]);
    }

    #[test]
    fn several_heads_refuse_head_but_not_heads() {
        let h = history(&[("aa01", &[]), ("bb02", &["aa01"]), ("cc03", &["aa01"])]);
        let err = upgrade(&h, &set(&[]), &Spec::Head).unwrap_err();
        assert_eq!(
            err,
            MigrationError::MultipleHeads {
                heads: vec!["bb02".into(), "cc03".into()]
            }
        );
        assert!(err.to_string().contains("phased db merge"), "{err}");
        assert_eq!(
            revs(&upgrade(&h, &set(&[]), &Spec::Heads).unwrap()),
            vec!["aa01", "bb02", "cc03"]
        );
    }

    #[test]
    fn relative_steps() {
        let h = diamond();
        assert_eq!(
            revs(&upgrade(&h, &set(&[]), &Spec::Relative(2)).unwrap()),
            vec!["aa01", "bb02"]
        );
        let err = upgrade(&h, &set(&["aa01", "bb02"]), &Spec::Relative(1)).unwrap_err();
        assert!(matches!(err, MigrationError::AmbiguousStep { .. }), "{err}");
        let all = set(&["aa01", "bb02", "cc03", "dd04", "ee05"]);
        let err = upgrade(&h, &all, &Spec::Relative(1)).unwrap_err();
        assert!(
            matches!(err, MigrationError::OutOfRange { available: 0, .. }),
            "{err}"
        );
        assert_eq!(
            revs(&downgrade(&h, &all, &Spec::Relative(-1)).unwrap()),
            vec!["ee05"]
        );
        let err = downgrade(&h, &all, &Spec::Relative(-2)).unwrap_err();
        assert!(matches!(err, MigrationError::AmbiguousStep { .. }), "{err}");
        let linear = set(&["aa01", "bb02", "cc03"]);
        let moves = downgrade(&h, &linear, &Spec::Relative(-2)).unwrap();
        assert_eq!(revs(&moves), vec!["cc03", "bb02"]);
        assert_eq!(moves[1].heads_after, vec!["aa01"]);
        let err = downgrade(&h, &linear, &Spec::Relative(-4)).unwrap_err();
        assert!(
            matches!(err, MigrationError::OutOfRange { available: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn downgrade_to_a_revision_keeps_other_branches() {
        let h = diamond();
        let all = set(&["aa01", "bb02", "cc03", "dd04", "ee05"]);
        let moves = downgrade(&h, &all, &Spec::Revision("cc03".into())).unwrap();
        assert_eq!(revs(&moves), vec!["ee05"]);
        assert_eq!(moves[0].heads_after, vec!["cc03", "dd04"]);
        let moves = downgrade(&h, &all, &Spec::Revision("bb02".into())).unwrap();
        assert_eq!(revs(&moves), vec!["ee05", "dd04", "cc03"]);
        let moves = downgrade(&h, &all, &Spec::Base).unwrap();
        assert_eq!(revs(&moves), vec!["ee05", "dd04", "cc03", "bb02", "aa01"]);
        assert!(moves[4].heads_after.is_empty());
        let err = downgrade(&h, &set(&["aa01"]), &Spec::Revision("cc03".into())).unwrap_err();
        assert!(matches!(err, MigrationError::Usage(_)), "{err}");
    }

    #[test]
    fn wrong_directions_are_usage_errors() {
        let h = diamond();
        assert!(matches!(
            upgrade(&h, &set(&[]), &Spec::Base),
            Err(MigrationError::Usage(_))
        ));
        assert!(matches!(
            upgrade(&h, &set(&[]), &Spec::Relative(-1)),
            Err(MigrationError::Usage(_))
        ));
        assert!(matches!(
            downgrade(&h, &set(&[]), &Spec::Head),
            Err(MigrationError::Usage(_))
        ));
        assert!(matches!(
            downgrade(&h, &set(&[]), &Spec::Relative(1)),
            Err(MigrationError::Usage(_))
        ));
    }

    #[test]
    fn stamp_sets_the_ancestors() {
        let h = diamond();
        assert_eq!(
            stamp(&h, &Spec::Revision("cc".into())).unwrap(),
            set(&["aa01", "bb02", "cc03"])
        );
        assert_eq!(stamp(&h, &Spec::Base).unwrap(), set(&[]));
        assert_eq!(stamp(&h, &Spec::Head).unwrap().len(), 5);
    }

    #[test]
    fn rollback_returns_to_recorded_heads() {
        let h = diamond();
        let all = set(&["aa01", "bb02", "cc03", "dd04", "ee05"]);
        let keep = closure(&h, &["cc03".to_string()]);
        assert_eq!(revs(&down_to(&h, &all, &keep)), vec!["ee05", "dd04"]);
    }
}
