//! `brokerctl`: parses the flags (usage errors exit 2, from clap), runs the
//! command and prints `brokerctl: <why>` with exit 1 when it fails.

use brokerctl::Cli;
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("brokerctl: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    match rt.block_on(brokerctl::run(cli, &mut stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("brokerctl: {}", brokerctl::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
