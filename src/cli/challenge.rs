//! `chall-manager challenge ...`: push scenarios, register, read and delete
//! challenges.

use std::{path::PathBuf, time::Duration};

use chrono::{DateTime, Utc};
use clap::Subcommand;

use super::{
    backend::Backend,
    error::Error,
    options::{ClientArgs, DataArgs},
    output::{self, OutputArgs, Spinner},
    parse::{collect_pairs, parse_key_value, parse_timeout, parse_until},
};
use crate::{
    challenge::{ChallengeUpdate, Field, NewChallenge, UpdateStrategy},
    scenario::Pinned,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Push a scenario directory to a registry and print its pinned
    /// reference (REF@sha256:...). Always runs locally, even with --url
    Push(PushArgs),
    /// Register a challenge after checking that its scenario can be fetched
    Create(CreateArgs),
    /// Change some fields of a challenge; only the fields given change.
    /// Running instances follow a new scenario or new additional values
    Update(UpdateArgs),
    /// Show a challenge and its instances
    Get(IdArgs),
    /// List every challenge
    List(ListArgs),
    /// Destroy every instance of a challenge, then delete the challenge
    Delete(IdArgs),
}

#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// Scenario directory to push
    #[arg(value_name = "DIR")]
    pub scenario_dir: PathBuf,
    /// Reference to push to, like registry.example.com/web:v1
    pub reference: String,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Challenge id
    pub id: String,
    /// OCI reference of the scenario, or a local scenario directory. Without
    /// --url, a directory is packed into the local data directory, so no
    /// registry is needed
    #[arg(long, value_name = "REF_OR_DIR")]
    pub scenario: String,
    /// Lifetime of an instance after its creation or renewal, like 600s, 10m
    /// or 1h30m [default: instances live until --until, or forever]
    #[arg(long, value_parser = parse_timeout, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Date after which no new instance is deployed and instances expire, in
    /// RFC 3339 like 2026-01-02T03:04:05Z
    #[arg(long, value_parser = parse_until, value_name = "RFC3339")]
    pub until: Option<DateTime<Utc>>,
    /// Value given to the scenario, as KEY=VALUE; repeat for more. A key
    /// given twice keeps its last value
    #[arg(long, value_parser = parse_key_value, value_name = "KEY=VALUE")]
    pub additional: Vec<(String, String)>,
    /// Instances to deploy in advance and keep ready
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    pub min: i64,
    /// Total instances above which no instance is deployed in advance; 0 means no limit
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    pub max: i64,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("fields").multiple(true).required(true).args(["scenario", "timeout", "until", "additional", "min", "max", "reset"]))]
pub struct UpdateArgs {
    /// Challenge id
    pub id: String,
    /// New OCI reference of the scenario, or a local scenario directory
    /// (packed into the local data directory, without --url)
    #[arg(long, value_name = "REF_OR_DIR")]
    pub scenario: Option<String>,
    /// New lifetime of an instance after its creation or renewal; running
    /// instances get a new end, counted from their last renewal
    #[arg(long, value_parser = parse_timeout, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// New end of the challenge, in RFC 3339
    #[arg(long, value_parser = parse_until, value_name = "RFC3339")]
    pub until: Option<DateTime<Utc>>,
    /// New values given to the scenario, as KEY=VALUE; repeat for more. They
    /// replace every previous value
    #[arg(long, value_parser = parse_key_value, value_name = "KEY=VALUE")]
    pub additional: Vec<(String, String)>,
    /// New number of instances to deploy in advance and keep ready
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
    pub min: Option<i64>,
    /// New total of instances above which none is deployed in advance; 0 means no limit
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
    pub max: Option<i64>,
    /// Field to clear: timeout (instances never time out), until (no end)
    /// or additional (no values); repeat for more
    #[arg(long, value_enum, value_name = "FIELD")]
    pub reset: Vec<Resettable>,
    /// Strategy by which running instances move to a new scenario or new
    /// values
    #[arg(long, value_enum, default_value_t = Strategy::UpdateInPlace)]
    pub strategy: Strategy,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A field that `--reset` clears.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resettable {
    Timeout,
    Until,
    Additional,
}

/// Update strategies, as `--strategy` spells them.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// `up` again with the same identity and state
    UpdateInPlace,
    /// `up` under a new identity, then `down` of the old one
    BlueGreen,
    /// `down`, then `up` on a fresh state directory
    Recreate,
}

#[derive(clap::Args, Debug)]
pub struct IdArgs {
    /// Challenge id
    pub id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> Result<(), Error> {
    match args.command {
        Command::Push(args) => push(args).await,
        Command::Create(args) => create(args).await,
        Command::Update(args) => update(args).await,
        Command::Get(args) => get(args).await,
        Command::List(args) => list(args).await,
        Command::Delete(args) => delete(args).await,
    }
}

async fn push(args: PushArgs) -> Result<(), Error> {
    let scenarios = args.data.scenarios()?;

    let dir = &args.scenario_dir;
    // Catch a broken scenario.yaml now rather than at `challenge create`.
    crate::runner::load(dir).map_err(|source| Error::InvalidScenario { dir: dir.clone(), source })?;

    let spinner = Spinner::start(&format!("pushing {} to {}", dir.display(), args.reference));
    let pinned = scenarios.push(dir, &args.reference).await.map_err(|source| Error::Push {
        dir: dir.clone(),
        reference: args.reference.clone(),
        source,
    })?;
    drop(spinner);

    output::print(&output::render_pushed(args.output.output, &pinned_reference(&pinned), &pinned.digest)?)
}

/// Writes a reference pinned to its digest, replacing any digest the
/// reference already carries: `registry/web:v1@sha256:...`.
fn pinned_reference(pinned: &Pinned) -> String {
    let base = pinned.reference.split_once('@').map_or(pinned.reference.as_str(), |(base, _)| base);
    format!("{base}@{}", pinned.digest)
}

async fn create(args: CreateArgs) -> Result<(), Error> {
    let backend = Backend::open(&args.client).await?;
    let format = args.client.output.output;

    let spinner = Spinner::start(&format!("creating challenge {}", args.id));
    let scenario = scenario_reference(&backend, &args.scenario).await?;
    let new = NewChallenge {
        id: args.id,
        scenario,
        timeout: args.timeout,
        until: args.until,
        additional: collect_pairs(args.additional),
        min: args.min,
        max: args.max,
    };
    let info = backend.create_challenge(new).await?;
    drop(spinner);

    output::print(&output::render_challenge(format, &info)?)
}

/// Returns the reference to register. A local directory is packed into the
/// local content store, which only works without a server: a server cannot
/// read the operator's files.
async fn scenario_reference(backend: &Backend, scenario: &str) -> Result<String, Error> {
    let dir = PathBuf::from(scenario);
    if !dir.is_dir() {
        // A path-like value cannot be a registry reference, so report the
        // missing directory rather than a malformed reference.
        if ["/", "./", "../", "~"].iter().any(|prefix| scenario.starts_with(prefix)) || scenario == "." {
            return Err(Error::MissingDirectory { dir });
        }
        return Ok(scenario.to_owned());
    }

    match backend {
        Backend::Remote(remote) => Err(Error::DirectoryWithServer { dir, url: remote.url().to_owned() }),
        Backend::Local(manager) => {
            let pinned =
                manager.scenarios().pack(&dir).await.map_err(|source| Error::Pack { dir: dir.clone(), source })?;
            tracing::info!(dir = %dir.display(), reference = %pinned.reference, digest = %pinned.digest, "scenario packed");
            Ok(pinned.reference)
        }
    }
}

async fn update(args: UpdateArgs) -> Result<(), Error> {
    let backend = Backend::open(&args.client).await?;
    let format = args.client.output.output;
    let mut update = ChallengeUpdate {
        id: args.id.clone(),
        strategy: match args.strategy {
            Strategy::UpdateInPlace => UpdateStrategy::UpdateInPlace,
            Strategy::BlueGreen => UpdateStrategy::BlueGreen,
            Strategy::Recreate => UpdateStrategy::Recreate,
        },
        ..ChallengeUpdate::default()
    };
    if let Some(scenario) = &args.scenario {
        update.scenario = Some(scenario_reference(&backend, scenario).await?);
    }
    update.timeout = args.timeout;
    update.until = args.until;
    update.min = args.min.unwrap_or_default();
    update.max = args.max.unwrap_or_default();
    update.mask = update_mask(&args)?;
    update.additional = collect_pairs(args.additional);

    let spinner = Spinner::start(&format!("updating challenge {}", args.id));
    let info = backend.update_challenge(update).await?;
    drop(spinner);

    output::print(&output::render_challenge(format, &info)?)
}

/// Names the fields that the options set or reset. A field both set and
/// reset is a usage error; clap already requires at least one.
fn update_mask(args: &UpdateArgs) -> Result<Vec<Field>, Error> {
    let reset = |field| args.reset.contains(&field);
    let options = [
        (Field::Scenario, args.scenario.is_some(), false),
        (Field::Timeout, args.timeout.is_some(), reset(Resettable::Timeout)),
        (Field::Until, args.until.is_some(), reset(Resettable::Until)),
        (Field::Additional, !args.additional.is_empty(), reset(Resettable::Additional)),
        (Field::Min, args.min.is_some(), false),
        (Field::Max, args.max.is_some(), false),
    ];

    let mut mask = Vec::new();
    for (field, set, cleared) in options {
        if set && cleared {
            return Err(Error::Usage(format!("--{0} and --reset {0} contradict each other", field.path())));
        }
        if set || cleared {
            mask.push(field);
        }
    }
    Ok(mask)
}

async fn get(args: IdArgs) -> Result<(), Error> {
    let backend = Backend::open(&args.client).await?;
    let info = backend.get_challenge(&args.id).await?;
    output::print(&output::render_challenge(args.client.output.output, &info)?)
}

async fn list(args: ListArgs) -> Result<(), Error> {
    let backend = Backend::open(&args.client).await?;
    let challenges = backend.list_challenges().await?;
    output::print(&output::render_challenges(args.client.output.output, &challenges)?)
}

async fn delete(args: IdArgs) -> Result<(), Error> {
    let backend = Backend::open(&args.client).await?;

    let spinner = Spinner::start(&format!("deleting challenge {}", args.id));
    backend.delete_challenge(&args.id).await?;
    drop(spinner);

    output::print(&output::render_deleted(args.client.output.output, &format!("challenge {:?}", args.id))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_reference_replaces_digest() {
        let pinned = |reference: &str| Pinned { reference: reference.into(), digest: "sha256:ab".into() };
        assert_eq!(pinned_reference(&pinned("registry/web:v1")), "registry/web:v1@sha256:ab");
        assert_eq!(pinned_reference(&pinned("registry/web:v1@sha256:00")), "registry/web:v1@sha256:ab");
    }
}
