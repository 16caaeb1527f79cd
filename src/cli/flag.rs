//! `chall-manager flag ...`: flag helpers for scenarios. They run without
//! a server or a data directory.

use clap::Subcommand;

use super::error::Error;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the variant of a flag for one instance identity, the same as
    /// the Go SDK's Variate(identity, flag). Pass only the part between the
    /// decorators: CTF{$(chall-manager flag variate 'the_flag')}
    Variate(VariateArgs),
}

#[derive(clap::Args, Debug)]
pub struct VariateArgs {
    /// Instance identity; a scenario receives it in CM_IDENTITY. Only its
    /// first 8 bytes are used. An empty identity is rejected, because it
    /// usually means CM_IDENTITY was not passed down
    #[arg(long, env = "CM_IDENTITY", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub identity: String,
    /// Flag to vary. Letters change case and some become look-alike digits;
    /// other characters are kept. Keep it ASCII: each byte of a non-ASCII
    /// character is treated as a separate Latin-1 character, as the Go SDK does
    #[arg(value_name = "FLAG", allow_hyphen_values = true)]
    pub flag: String,
}

pub fn run(args: Args) -> Result<(), Error> {
    match args.command {
        Command::Variate(args) => {
            println!("{}", crate::flag::variate(&args.identity, &args.flag));
            Ok(())
        }
    }
}
