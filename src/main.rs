//! The `zonewise` binary: everything lives in the library, so it can be
//! tested without starting a process.
#![forbid(unsafe_code)]

// The system allocator, on purpose. mimalloc made a 10 KB review about 5 µs
// (20%) cheaper, but kept the memory of freed large blocks: a few hundred
// reviews of 700 KB bodies left it at 65–108 MiB resident where glibc
// returns to 16 MiB, and under the hostile tests it peaked at 93 MiB of a
// pod's 128 MiB limit against glibc's 42 (BENCHMARKS.md). A bounded,
// predictable footprint matters more on the admission path than 5 µs.

fn main() -> std::process::ExitCode {
    zonewise::cmd::cli::main()
}
