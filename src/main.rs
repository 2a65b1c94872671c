//! The `portcullis` binary: parses the command line and runs a [`portcullis::cli`] command.

use std::process::ExitCode;

fn main() -> ExitCode {
    portcullis::cli::main()
}
