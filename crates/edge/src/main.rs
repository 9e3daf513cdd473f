use std::process::ExitCode;

use clap::Parser;
use edge::cli::Cli;

/// mimalloc rather than glibc's malloc: the data path allocates and frees
/// many short-lived buffers (TLS records, HTTP heads, HTTP/2 frames), and
/// glibc spent a fifth of edge's CPU time on them under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    edge::cli::quiet_handshake_noise(&mut cli.log);
    let workers = Some(cli.run.workers());
    b3_common::daemon::main_with_workers("edge", &cli.log, workers, |shutdown| {
        edge::cli::run(cli.run, shutdown)
    })
}
