use std::process::ExitCode;

use clap::Parser;
use vip::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = cli.log.clone();
    b3_common::daemon::main("vip", &log, |shutdown| vip::cli::main(cli, shutdown))
}
