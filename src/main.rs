//! The `zonewise` binary: everything lives in the library, so it can be
//! tested without starting a process.
#![forbid(unsafe_code)]

// jemalloc, with freed pages returned at once (its default configuration
// is compiled in from .cargo/config.toml). Measured against glibc under the
// load bench and the hostile-client tests (BENCHMARKS.md): about 16% more
// reviews per core, and lower peaks under attack (33 MiB against 53 with
// 64 connections each declaring an 8 MiB body). mimalloc, tried before,
// was fast but kept freed large blocks (93 MiB under the same tests), and
// its purge delay can only be set through its environment or unsafe calls.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    zonewise::cmd::cli::main()
}
