//! The command line: `serve` runs the API, the other commands operate on
//! challenges and instances, either through a server (`--url`) or directly
//! on the local data directory.
//!
//! Each command group lives in its own module with an `Args` struct and an
//! async `run`. [`backend::Backend`] hides which of the two ways a command
//! runs, so each command is written once.

mod backend;
mod challenge;
mod error;
mod flag;
mod instance;
mod janitor;
mod logging;
mod options;
mod output;
mod parse;
mod remote;
mod serve;

use clap::{Parser, Subcommand};

pub use error::{Error, format_error};

/// Deploys one instance of a CTF challenge per team, on demand
#[derive(Parser, Debug)]
#[command(name = "chall-manager", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub log: logging::LogArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gRPC and REST API on one port
    Serve(serve::Args),
    /// Push scenarios; create, show, list and delete challenges
    Challenge(challenge::Args),
    /// Deploy, show, list and destroy instances
    Instance(instance::Args),
    /// Delete the instances whose end (until) has passed, once or every
    /// --ticker interval
    Janitor(janitor::Args),
    /// Compute per-instance flags inside a scenario
    Flag(flag::Args),
}

/// Builds the runtime a command runs on. The server serves many clients
/// at once and gets a thread per core. So does a janitor without a URL,
/// which does a server's work for many deletions at once: on one thread,
/// each record removal goes to a blocking thread, and a sweep took 40 %
/// longer. Every other command is one client of a server, or does one
/// thing on a data directory. There one thread is enough and saves the
/// wake-ups between threads, which cost the janitor with a URL about 40 %
/// of its CPU time in a sweep.
pub fn runtime(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match command {
        Command::Serve(_) => tokio::runtime::Builder::new_multi_thread(),
        Command::Janitor(args) if args.url().is_none() => tokio::runtime::Builder::new_multi_thread(),
        Command::Challenge(_) | Command::Instance(_) | Command::Janitor(_) | Command::Flag(_) => {
            tokio::runtime::Builder::new_current_thread()
        }
    };
    builder.enable_all().build()
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), Error> {
    // A server and the janitor report their life; an operator command only
    // its problems, since its result goes to stdout.
    let default_level = match cli.command {
        Command::Serve(_) | Command::Janitor(_) => "info",
        Command::Challenge(_) | Command::Instance(_) | Command::Flag(_) => "warn",
    };
    logging::init(&cli.log, default_level)?;

    match cli.command {
        Command::Serve(args) => serve::run(args, cli.log.log_format).await,
        Command::Challenge(args) => finish_on_interrupt(challenge::run(args)).await,
        Command::Instance(args) => finish_on_interrupt(instance::run(args)).await,
        Command::Janitor(args) => janitor::run(args).await,
        Command::Flag(args) => flag::run(args),
    }
}

/// Runs an operator command, letting a first Ctrl-C wait for it to finish.
///
/// Without a server, the command itself runs the scenario: exiting in the
/// middle of `up` would leave a deployment that no record points to. A
/// second Ctrl-C stops at once; the half-done deployment is then destroyed
/// by the next `chall-manager serve` on this data directory.
async fn finish_on_interrupt(command: impl Future<Output = Result<(), Error>>) -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};

    let mut interrupts = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
    tokio::pin!(command);
    tokio::select! {
        result = &mut command => return result,
        _ = interrupts.recv() => {}
    }

    eprintln!(
        "chall-manager: finishing the operation in progress so that nothing is left running unrecorded; \
         press Ctrl-C again to stop now"
    );
    tokio::select! {
        result = &mut command => result,
        _ = interrupts.recv() => Err(Error::Interrupted),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn only_local_work_gets_worker_threads() {
        use clap::Parser;
        use tokio::runtime::RuntimeFlavor::{CurrentThread, MultiThread};

        let cases = [
            (vec!["serve"], MultiThread),
            (vec!["janitor", "--dir", "/tmp/data"], MultiThread),
            (vec!["janitor", "--url", "http://127.0.0.1:1"], CurrentThread),
            (vec!["challenge", "list", "--dir", "/tmp/data"], CurrentThread),
        ];
        for (args, flavor) in cases {
            let cli = Cli::try_parse_from(std::iter::once("chall-manager").chain(args.iter().copied())).unwrap();
            let runtime = runtime(&cli.command).unwrap();
            assert_eq!(runtime.handle().runtime_flavor(), flavor, "{args:?}");
        }
    }
}
