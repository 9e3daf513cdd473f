use std::process::ExitCode;

use clap::Parser;
use store::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.prints_only() {
        // Commands that print a report end quietly when the reader goes
        // away (`store fs stat … | head`), as other Unix tools do, instead
        // of panicking on the broken pipe. Daemons keep SIGPIPE ignored.
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    b3_common::daemon::main("store", &cli.log, |shutdown| {
        store::cli::run(cli.command, shutdown)
    })
}
