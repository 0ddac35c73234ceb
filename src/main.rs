//! The `zonewise` binary: everything lives in the library, so it can be
//! tested without starting a process.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    zonewise::cli::main()
}
