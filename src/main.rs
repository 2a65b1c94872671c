//! The `portcullis` binary: parses the command line and runs a [`portcullis::cli`] command.

use std::process::ExitCode;

/// jemalloc instead of glibc malloc: per-thread caches without arena lock contention between the
/// tokio workers (bench/RESULTS.md "Notes on the fourth session").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    portcullis::cli::main()
}
