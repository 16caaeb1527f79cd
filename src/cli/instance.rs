//! `chall-manager instance ...`: deploy, read and destroy the instance of a
//! source (a user or a team).

use clap::Subcommand;

use super::{
    backend::Backend,
    error::Error,
    options::ClientArgs,
    output::{self, Spinner},
    parse::{collect_pairs, parse_key_value},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Deploy an instance of a challenge for a source, and show how to reach it
    Up(UpArgs),
    /// Destroy the instance of a source
    Down(InstanceArgs),
    /// Show the instance of a source
    Get(InstanceArgs),
    /// List the instances of a source, at most one per challenge
    List(ListArgs),
}

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Challenge id
    pub challenge: String,
    /// Source id: the user or team the instance belongs to
    pub source: String,
    /// Value given to the scenario for this instance only, as KEY=VALUE,
    /// overriding the challenge's; repeat for more
    #[arg(long, value_parser = parse_key_value, value_name = "KEY=VALUE")]
    pub additional: Vec<(String, String)>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(clap::Args, Debug)]
pub struct InstanceArgs {
    /// Challenge id
    pub challenge: String,
    /// Source id: the user or team the instance belongs to
    pub source: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Source id: the user or team the instances belong to
    pub source: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> Result<(), Error> {
    match args.command {
        Command::Up(args) => up(args).await,
        Command::Down(args) => down(args).await,
        Command::Get(args) => get(args).await,
        Command::List(args) => list(args).await,
    }
}

async fn up(args: UpArgs) -> Result<(), Error> {
    let backend = Backend::open(&args.client).await?;

    let spinner = Spinner::start(&format!("deploying challenge {} for source {}", args.challenge, args.source));
    let instance = backend.create_instance(&args.challenge, &args.source, collect_pairs(args.additional)).await?;
    drop(spinner);

    output::print(&output::render_instance(args.client.output.output, &instance)?)
}

async fn down(args: InstanceArgs) -> Result<(), Error> {
    let backend = Backend::open(&args.client).await?;

    let spinner =
        Spinner::start(&format!("destroying the instance of source {} for challenge {}", args.source, args.challenge));
    backend.delete_instance(&args.challenge, &args.source).await?;
    drop(spinner);

    let subject = format!("instance of source {:?} for challenge {:?}", args.source, args.challenge);
    output::print(&output::render_deleted(args.client.output.output, &subject)?)
}

async fn get(args: InstanceArgs) -> Result<(), Error> {
    let backend = Backend::open(&args.client).await?;
    let instance = backend.get_instance(&args.challenge, &args.source).await?;
    output::print(&output::render_instance(args.client.output.output, &instance)?)
}

async fn list(args: ListArgs) -> Result<(), Error> {
    let backend = Backend::open(&args.client).await?;
    let instances = backend.list_instances(&args.source).await?;
    output::print(&output::render_instances(args.client.output.output, &instances)?)
}
