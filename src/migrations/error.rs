//! What can be wrong with a migrations folder or a requested revision.

use std::path::PathBuf;

/// A problem with the migration files or with a revision named on the command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrationError {
    /// The folder cannot be read.
    #[error("cannot read the migrations folder {}: {message}", dir.display())]
    Folder { dir: PathBuf, message: String },
    /// A migration file is malformed; `line` is 1-based.
    #[error("{}:{line}: {message}", file.display())]
    Parse {
        file: PathBuf,
        line: usize,
        message: String,
    },
    /// Two files declare the same revision id.
    #[error("revision {revision} is declared twice: in {} and {}", first.display(), second.display())]
    Duplicate {
        revision: String,
        first: PathBuf,
        second: PathBuf,
    },
    /// A file revises a revision that no file declares.
    #[error("{}: revision {revision} revises {parent}, which no file in the folder declares", file.display())]
    UnknownParent {
        revision: String,
        parent: String,
        file: PathBuf,
    },
    /// The revises links loop.
    #[error("the revision graph has a cycle through {0}")]
    Cycle(String),
    /// A revision named by the user matches nothing.
    #[error("no revision matches `{0}`; `phased db history` lists them")]
    UnknownRevision(String),
    /// A prefix matches several revisions.
    #[error("`{prefix}` is ambiguous: it matches {}", candidates.join(", "))]
    Ambiguous {
        prefix: String,
        candidates: Vec<String>,
    },
    /// `head` was asked for while the history has several heads.
    #[error(
        "there are several heads: {}. Merge them with `phased db merge -m \"merge heads\" {}`, or name one revision (or `heads` for all)",
        heads.join(", "),
        heads.join(" ")
    )]
    MultipleHeads { heads: Vec<String> },
    /// A relative move (`+N` / `-N`) has more than one way to go.
    #[error("`{spec}` is ambiguous: from here it could {verb} {}; name the revision instead", options.join(" or "))]
    AmbiguousStep {
        spec: String,
        /// `apply` or `undo`.
        verb: &'static str,
        options: Vec<String>,
    },
    /// A relative move goes past the end of the history.
    #[error("`{spec}` goes past the {end}: only {available} step(s) are possible")]
    OutOfRange {
        spec: String,
        end: &'static str,
        available: usize,
    },
    /// The target does not make sense for this direction (e.g. `upgrade base`).
    #[error("{0}")]
    Usage(String),
    /// A revision has no SQL for this dialect or direction.
    #[error("{0}")]
    MissingSql(String),
}
