//! [`embed_migrations!`](crate::embed_migrations): the binary carries its migrations.

/// Embeds a folder of migrations in the binary at compile time and returns a
/// `Result<`[`Migrator`](crate::Migrator)`, `[`Error`](crate::Error)`>` over them.
///
/// The path is resolved as [`include_dir`](https://docs.rs/include_dir) resolves it: start it
/// with `$CARGO_MANIFEST_DIR` so it does not depend on the directory the compiler runs in. Every
/// `*.sql` file directly in the folder is a revision; the files are parsed when the macro's
/// expression is evaluated (at startup), so a malformed one is an [`Error::Migrations`](crate::Error::Migrations)
/// then — a unit test that calls the macro catches it at `cargo test` time. The lease is named
/// after the folder (`db:migrations`), like `phased db upgrade --dir migrations`'s, and the
/// checksums are those of the files, so the CLI and the application see the same history.
///
/// A changed file is embedded again on the next build. Cargo does not notice a *new* file in
/// the folder by itself: add a `build.rs` with
/// `fn main() { println!("cargo:rerun-if-changed=migrations"); }` (as `sqlx::migrate!` asks).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), phased::Error> {
/// # let dir = tempfile::tempdir().map_err(|e| phased::Error::Migrations(e.to_string()))?;
/// # let url = format!("sqlite://{}", dir.path().join("app.db").display());
/// // phased's own example history, in its repository's `migrations/`.
/// let migrator = phased::embed_migrations!("$CARGO_MANIFEST_DIR/migrations")?;
/// let upgraded = migrator.upgrade(&url, "head").await?;
/// assert_eq!(upgraded.heads, migrator.heads());
/// # Ok(())
/// # }
/// ```
#[macro_export]
macro_rules! embed_migrations {
    // `tt`, not `literal`: a `literal` fragment reaches include_dir! wrapped in an invisible
    // group, which it refuses.
    ($dir:tt) => {{
        // include_dir!'s expansion names `include_dir::…`: this brings that name into scope
        // without the application depending on include_dir itself.
        use $crate::__private::include_dir;
        static DIR: include_dir::Dir<'static> = include_dir::include_dir!($dir);
        $crate::Migrator::__from_include_dir($dir, &DIR)
    }};
}
