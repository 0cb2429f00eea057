//! The `phased` binary: everything lives in the library; this only hands over and exits.

fn main() -> std::process::ExitCode {
    phased::cli::main()
}
