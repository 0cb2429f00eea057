//! The revision graph: each revision points at the revision(s) it revises. Heads are revisions
//! nothing revises yet; several heads mean branches that a merge revision should join.

use std::collections::{BTreeMap, BTreeSet};

use super::{Migration, MigrationError};

/// Every revision of a folder, checked: unique ids, known parents, no cycles.
#[derive(Debug, Clone)]
pub struct History {
    migrations: Vec<Migration>,
    /// Revision id → index in `migrations`.
    by_id: BTreeMap<String, usize>,
    /// Indexes in topological order: parents before children, ties by creation date then id.
    order: Vec<usize>,
    children: Vec<Vec<usize>>,
}

impl History {
    pub fn new(migrations: Vec<Migration>) -> Result<Self, MigrationError> {
        let mut by_id = BTreeMap::new();
        for (i, m) in migrations.iter().enumerate() {
            if let Some(&first) = by_id.get(&m.revision) {
                let first: &Migration = &migrations[first];
                return Err(MigrationError::Duplicate {
                    revision: m.revision.clone(),
                    first: first.path.clone(),
                    second: m.path.clone(),
                });
            }
            by_id.insert(m.revision.clone(), i);
        }
        let mut children = vec![Vec::new(); migrations.len()];
        let mut pending_parents = vec![0usize; migrations.len()];
        for (i, m) in migrations.iter().enumerate() {
            for parent in &m.revises {
                let Some(&p) = by_id.get(parent) else {
                    return Err(MigrationError::UnknownParent {
                        revision: m.revision.clone(),
                        parent: parent.clone(),
                        file: m.path.clone(),
                    });
                };
                children[p].push(i);
                pending_parents[i] += 1;
            }
        }
        // Kahn's algorithm; the ready set is ordered so the result is stable.
        let sort_key = |i: usize| {
            let m = &migrations[i];
            (m.created.clone().unwrap_or_default(), m.revision.clone())
        };
        let mut ready: BTreeSet<(String, String, usize)> = (0..migrations.len())
            .filter(|&i| pending_parents[i] == 0)
            .map(|i| {
                let (c, r) = sort_key(i);
                (c, r, i)
            })
            .collect();
        let mut order = Vec::with_capacity(migrations.len());
        while let Some(first) = ready.pop_first() {
            let i = first.2;
            order.push(i);
            for &c in &children[i] {
                pending_parents[c] -= 1;
                if pending_parents[c] == 0 {
                    let (cr, rv) = sort_key(c);
                    ready.insert((cr, rv, c));
                }
            }
        }
        if order.len() < migrations.len() {
            let stuck = (0..migrations.len())
                .find(|&i| pending_parents[i] > 0)
                .map(|i| migrations[i].revision.clone())
                .unwrap_or_default();
            return Err(MigrationError::Cycle(stuck));
        }
        Ok(Self {
            migrations,
            by_id,
            order,
            children,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.migrations.is_empty()
    }

    pub fn get(&self, revision: &str) -> Option<&Migration> {
        self.by_id.get(revision).map(|&i| &self.migrations[i])
    }

    pub fn contains(&self, revision: &str) -> bool {
        self.by_id.contains_key(revision)
    }

    /// Every revision, parents before children.
    pub fn in_order(&self) -> impl DoubleEndedIterator<Item = &Migration> {
        self.order.iter().map(|&i| &self.migrations[i])
    }

    /// Position of a revision in [`History::in_order`].
    pub fn position(&self, revision: &str) -> Option<usize> {
        let i = *self.by_id.get(revision)?;
        self.order.iter().position(|&o| o == i)
    }

    /// Revisions that revise `revision`.
    pub fn children(&self, revision: &str) -> Vec<&str> {
        self.by_id
            .get(revision)
            .map(|&i| {
                self.children[i]
                    .iter()
                    .map(|&c| self.migrations[c].revision.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Revisions nothing revises, in history order.
    pub fn heads(&self) -> Vec<&str> {
        self.order
            .iter()
            .filter(|&&i| self.children[i].is_empty())
            .map(|&i| self.migrations[i].revision.as_str())
            .collect()
    }

    /// `revision` and everything it (transitively) revises.
    pub fn ancestors_inclusive(&self, revision: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut stack = vec![revision.to_string()];
        while let Some(r) = stack.pop() {
            if let Some(m) = self.get(&r) {
                if out.insert(r) {
                    stack.extend(m.revises.iter().cloned());
                }
            }
        }
        out
    }

    /// Everything that (transitively) revises `revision`, without it.
    pub fn descendants(&self, revision: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut stack: Vec<String> = self
            .children(revision)
            .into_iter()
            .map(str::to_string)
            .collect();
        while let Some(r) = stack.pop() {
            if out.insert(r.clone()) {
                stack.extend(self.children(&r).into_iter().map(str::to_string));
            }
        }
        out
    }

    /// The heads of a set of applied revisions: members no other member revises, in history order.
    pub fn heads_of(&self, applied: &BTreeSet<String>) -> Vec<String> {
        self.in_order()
            .filter(|m| applied.contains(&m.revision))
            .filter(|m| {
                !self
                    .children(&m.revision)
                    .iter()
                    .any(|c| applied.contains(*c))
            })
            .map(|m| m.revision.clone())
            .collect()
    }

    /// Revisions whose id starts with `prefix`.
    pub fn matching(&self, prefix: &str) -> Vec<&str> {
        self.by_id
            .range(prefix.to_string()..)
            .take_while(|(id, _)| id.starts_with(prefix))
            .map(|(id, _)| id.as_str())
            .collect()
    }

    /// Resolves a full revision id or a unique prefix of one.
    pub fn resolve(&self, name: &str) -> Result<&Migration, MigrationError> {
        if let Some(m) = self.get(name) {
            return Ok(m);
        }
        match self.matching(name).as_slice() {
            [] => Err(MigrationError::UnknownRevision(name.to_string())),
            [one] => Ok(self.get(one).expect("matched ids exist")),
            many => Err(MigrationError::Ambiguous {
                prefix: name.to_string(),
                candidates: many.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::migrations::file::parse;
    use std::path::Path;

    /// A history from `(revision, revises)` pairs with trivial SQL.
    pub fn history(spec: &[(&str, &[&str])]) -> History {
        let migrations = spec
            .iter()
            .map(|(rev, parents)| {
                let revises = if parents.is_empty() {
                    "none".to_string()
                } else {
                    parents.join(", ")
                };
                let text = format!(
                    "-- revision: {rev}\n-- revises: {revises}\n-- message: make {rev}\n-- migrate:up\nSELECT 1;\n-- migrate:down\nSELECT 2;\n"
                );
                parse(Path::new(&format!("{rev}.sql")), &text).unwrap()
            })
            .collect();
        History::new(migrations).unwrap()
    }

    /// a ← b ← c, b ← d, (c, d) ← e: the shape of the example history.
    pub fn diamond() -> History {
        history(&[
            ("aa01", &[]),
            ("bb02", &["aa01"]),
            ("cc03", &["bb02"]),
            ("dd04", &["bb02"]),
            ("ee05", &["cc03", "dd04"]),
        ])
    }

    #[test]
    fn heads_and_order() {
        let h = diamond();
        assert_eq!(h.heads(), vec!["ee05"]);
        let order: Vec<&str> = h.in_order().map(|m| m.revision.as_str()).collect();
        assert_eq!(order, vec!["aa01", "bb02", "cc03", "dd04", "ee05"]);
        let branched = history(&[("aa01", &[]), ("bb02", &["aa01"]), ("cc03", &["aa01"])]);
        assert_eq!(branched.heads(), vec!["bb02", "cc03"]);
        assert_eq!(branched.children("aa01"), vec!["bb02", "cc03"]);
    }

    #[test]
    fn closures() {
        let h = diamond();
        let anc: Vec<String> = h.ancestors_inclusive("cc03").into_iter().collect();
        assert_eq!(anc, vec!["aa01", "bb02", "cc03"]);
        let desc: Vec<String> = h.descendants("bb02").into_iter().collect();
        assert_eq!(desc, vec!["cc03", "dd04", "ee05"]);
        let applied: BTreeSet<String> = ["aa01", "bb02", "cc03", "dd04"].map(String::from).into();
        assert_eq!(h.heads_of(&applied), vec!["cc03", "dd04"]);
    }

    #[test]
    fn prefixes_resolve_when_unique() {
        let h = history(&[("abc1", &[]), ("abd2", &["abc1"])]);
        assert_eq!(h.resolve("abc").unwrap().revision, "abc1");
        assert_eq!(h.resolve("abd2").unwrap().revision, "abd2");
        assert_eq!(
            h.resolve("ab").unwrap_err(),
            MigrationError::Ambiguous {
                prefix: "ab".into(),
                candidates: vec!["abc1".into(), "abd2".into()]
            }
        );
        assert_eq!(
            h.resolve("zz").unwrap_err(),
            MigrationError::UnknownRevision("zz".into())
        );
    }

    #[test]
    fn broken_graphs_are_refused() {
        let m = |rev: &str, revises: &str| {
            parse(
                Path::new(&format!("{rev}.sql")),
                &format!("-- revision: {rev}\n-- revises: {revises}\n-- migrate:up\n"),
            )
            .unwrap()
        };
        let dup = History::new(vec![m("a", "none"), m("a", "none")]).unwrap_err();
        assert!(matches!(dup, MigrationError::Duplicate { .. }), "{dup}");
        let unknown = History::new(vec![m("a", "zz")]).unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "a.sql: revision a revises zz, which no file in the folder declares"
        );
        let cycle = History::new(vec![m("a", "b"), m("b", "a")]).unwrap_err();
        assert!(matches!(cycle, MigrationError::Cycle(_)), "{cycle}");
    }
}
