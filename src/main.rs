use std::process::ExitCode;

use chall_manager::cli::{self, Cli};
use clap::Parser;

fn main() -> ExitCode {
    // rustls is built without a default crypto provider; registry clients
    // panic without one. An error here means one is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();

    // Exits with 2 on a usage error, 0 after --help or --version.
    let cli = Cli::parse();

    let runtime = match cli::runtime(&cli.command) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("chall-manager: failed to start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("chall-manager: {}", cli::format_error(&err));
            ExitCode::FAILURE
        }
    }
}
