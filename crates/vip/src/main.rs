use std::process::ExitCode;

use clap::Parser;
use vip::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    b3_common::daemon::main("vip", &cli.log, |shutdown| vip::cli::run(cli.run, shutdown))
}
