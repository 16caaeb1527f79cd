use std::process::ExitCode;

use chall_manager::cli::{self, Cli};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    // rustls is built without a default crypto provider; registry clients
    // panic without one. An error here means one is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();

    // Exits with 2 on a usage error, 0 after --help or --version.
    let cli = Cli::parse();

    match cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("chall-manager: {}", cli::format_error(&err));
            ExitCode::FAILURE
        }
    }
}
