//! The `zonewise` binary: everything lives in the library, so it can be
//! tested without starting a process.
#![forbid(unsafe_code)]

/// mimalloc: a review allocates many small strings and maps; glibc's
/// malloc/free took over 40% of a review's instructions in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    zonewise::cli::main()
}
