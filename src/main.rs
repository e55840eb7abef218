//! The `aligngym` binary: the library's command line.

fn main() -> std::process::ExitCode {
    aligngym::cli::main()
}
