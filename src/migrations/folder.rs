//! Reading a migrations folder: every `*.sql` file directly inside it is one revision.

use std::path::Path;

use super::{file, History, MigrationError};

/// Reads and parses every migration in `dir` and checks that they form a history.
pub fn load(dir: &Path) -> Result<History, MigrationError> {
    let folder_error = |message: String| MigrationError::Folder {
        dir: dir.to_path_buf(),
        message,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| folder_error(e.to_string()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| folder_error(e.to_string()))?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "sql") {
            paths.push(path);
        }
    }
    paths.sort();
    let mut migrations = Vec::with_capacity(paths.len());
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| MigrationError::Parse {
            file: path.clone(),
            line: 1,
            message: format!("cannot read: {e}"),
        })?;
        migrations.push(file::parse(&path, &text)?);
    }
    History::new(migrations)
}
