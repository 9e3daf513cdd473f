use std::process::ExitCode;

use clap::Parser;
use store::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    b3_common::daemon::main("store", &cli.log, |shutdown| {
        store::cli::run(cli.command, shutdown)
    })
}
