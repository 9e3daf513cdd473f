use std::process::ExitCode;

use clap::Parser;
use edge::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    b3_common::daemon::main("edge", &cli.log, |shutdown| {
        edge::cli::run(cli.run, shutdown)
    })
}
