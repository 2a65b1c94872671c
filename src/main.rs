//! The `portcullis` binary: parses the command line and runs a [`portcullis::cli`] command.

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: allocation was ≈17 % of the gateway's CPU on small
/// calls (issue 7 profile: `_int_malloc`, `_int_free`, `malloc_consolidate`, …), and its
/// per-thread free lists keep the resident set of many idle sessions smaller.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    portcullis::cli::main()
}
