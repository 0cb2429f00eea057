//! The revision a command names: `head`, `heads`, `base`, `+N`, `-N`, or a revision id or a
//! unique prefix of one.

use std::fmt;

use super::MigrationError;

/// Where `upgrade` / `downgrade` / `stamp` should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// The single head; refused when there are several.
    Head,
    /// Every head.
    Heads,
    /// Nothing applied.
    Base,
    /// N revisions up (positive) or down (negative) from what is applied.
    Relative(i64),
    /// A revision id or a unique prefix of one.
    Revision(String),
    /// N revisions up or down along one branch, from a revision (Alembic's `REV@-1`, `REV@+2`):
    /// down undoes `REV` and its own ancestors; up applies its own descendants. What `-N` cannot
    /// say when there are several heads (after undoing a merge).
    BranchRelative { revision: String, n: i64 },
}

impl Spec {
    pub fn parse(text: &str) -> Result<Self, MigrationError> {
        let text = text.trim();
        match text {
            "head" => return Ok(Spec::Head),
            "heads" => return Ok(Spec::Heads),
            "base" => return Ok(Spec::Base),
            "" => return Err(MigrationError::Usage("a revision is required".to_string())),
            _ => {}
        }
        if let Some((revision, step)) = text.split_once('@') {
            let n = match Spec::parse(step)? {
                Spec::Relative(n) => n,
                _ => {
                    return Err(MigrationError::Usage(format!(
                        "`{text}`: after `@` comes +N or -N (`REV@-1` undoes REV on its branch)"
                    )))
                }
            };
            if !super::file::valid_revision_id(revision) {
                return Err(MigrationError::UnknownRevision(revision.to_string()));
            }
            return Ok(Spec::BranchRelative {
                revision: revision.to_string(),
                n,
            });
        }
        if let Some(rest) = text.strip_prefix(['+', '-']) {
            let n: i64 = rest.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                MigrationError::Usage(format!(
                    "`{text}` is not a relative revision: use +N or -N with N ≥ 1"
                ))
            })?;
            return Ok(Spec::Relative(if text.starts_with('-') { -n } else { n }));
        }
        if !super::file::valid_revision_id(text) {
            return Err(MigrationError::UnknownRevision(text.to_string()));
        }
        Ok(Spec::Revision(text.to_string()))
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Spec::Head => f.write_str("head"),
            Spec::Heads => f.write_str("heads"),
            Spec::Base => f.write_str("base"),
            Spec::Relative(n) if *n > 0 => write!(f, "+{n}"),
            Spec::Relative(n) => write!(f, "{n}"),
            Spec::Revision(r) => f.write_str(r),
            Spec::BranchRelative { revision, n } if *n > 0 => write!(f, "{revision}@+{n}"),
            Spec::BranchRelative { revision, n } => write!(f, "{revision}@{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(Spec::parse("head").unwrap(), Spec::Head);
        assert_eq!(Spec::parse("heads").unwrap(), Spec::Heads);
        assert_eq!(Spec::parse("base").unwrap(), Spec::Base);
        assert_eq!(Spec::parse("+2").unwrap(), Spec::Relative(2));
        assert_eq!(Spec::parse("-1").unwrap(), Spec::Relative(-1));
        assert_eq!(Spec::parse("ab12").unwrap(), Spec::Revision("ab12".into()));
        assert!(Spec::parse("+0").is_err());
        assert!(Spec::parse("-x").is_err());
        assert!(Spec::parse("a-b").is_err());
        assert_eq!(Spec::Relative(-3).to_string(), "-3");
        assert_eq!(Spec::Relative(3).to_string(), "+3");
        let branch = Spec::parse("cc03@-1").unwrap();
        assert_eq!(
            branch,
            Spec::BranchRelative {
                revision: "cc03".into(),
                n: -1
            }
        );
        assert_eq!(branch.to_string(), "cc03@-1");
        assert_eq!(Spec::parse("cc@+2").unwrap().to_string(), "cc@+2");
        assert!(Spec::parse("cc03@head").is_err());
        assert!(Spec::parse("cc03@-0").is_err());
    }
}
