//! `chall-manager janitor`: delete the instances whose `until` has passed,
//! once (for cron) or every `--ticker` interval. The rules live in
//! [`crate::janitor`]; this module reads the options, picks the backend and
//! handles signals.

use std::time::Duration;

use futures::stream::BoxStream;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::MissedTickBehavior,
};
use tracing::{error, info, warn};

use super::{
    backend::Backend,
    error::Error,
    options::DataArgs,
    parse::{format_timeout, parse_timeout},
};
use crate::{
    challenge::ChallengeInfo,
    janitor::{self, Failure, Janitor, Report, Settings},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// URL of a running chall-manager server, like http://127.0.0.1:8080;
    /// CHALL_MANAGER_URL is read when neither --url nor URL is set. Without
    /// a URL, the janitor opens the local data directory and destroys the
    /// instances itself, under the same locks as a server
    #[arg(long, env = "URL", value_name = "URL")]
    pub url: Option<String>,

    /// Sweep every DURATION, like 30s or 1m, until SIGINT or SIGTERM,
    /// instead of sweeping once and exiting. A sweep that lasts longer than
    /// DURATION delays the next one: sweeps never overlap
    #[arg(long, env = "TICKER", value_parser = parse_timeout, value_name = "DURATION")]
    pub ticker: Option<Duration>,

    /// Maximum deletions in progress at a time
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub parallel: usize,

    /// Time the circuit breaker stays open, failing calls fast, before it
    /// lets one call through to test the server again
    #[arg(long, default_value = "10s", value_parser = parse_timeout, value_name = "DURATION")]
    pub breaker_timeout: Duration,

    /// Local data, used only without a URL
    #[command(flatten)]
    pub data: DataArgs,
}

impl Args {
    /// Returns the server to sweep, or `None` for the local data directory.
    pub fn url(&self) -> Option<String> {
        self.url.clone().or_else(|| std::env::var("CHALL_MANAGER_URL").ok())
    }
}

/// Sweeps once or on a ticker. A one-shot sweep that leaves an expired
/// instance in place is an error; in ticker mode it is only logged.
pub async fn run(args: Args) -> Result<(), Error> {
    let mut signals = Signals::new()?;
    let url = args.url();
    let backend = Backend::open_lazy(url.as_deref(), &args.data)?;
    let settings = Settings { parallel: args.parallel, breaker_timeout: args.breaker_timeout, ..Settings::default() };
    let janitor = Janitor::new(backend, settings);

    match args.ticker {
        None => sweep_once(&janitor, &mut signals).await,
        Some(period) => sweep_every(&janitor, period, &mut signals).await,
    }
}

async fn sweep_once(janitor: &Janitor<Backend>, signals: &mut Signals) -> Result<(), Error> {
    let (result, _signal) = sweep_to_end(janitor, signals).await?;
    result?.check()?;
    Ok(())
}

async fn sweep_every(janitor: &Janitor<Backend>, period: Duration, signals: &mut Signals) -> Result<(), Error> {
    let mut ticks = tokio::time::interval(period);
    // A late tick fires once, when the sweep ends, and the next one comes a
    // full period after it.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    info!(ticker = %format_timeout(&period), "janitor started");

    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            signal = signals.recv() => {
                info!(signal, "janitor stopped");
                return Ok(());
            }
        }

        let (result, signal) = sweep_to_end(janitor, signals).await?;
        match result {
            Ok(_) => {}
            Err(err @ janitor::Error::BreakerOpen { .. }) => warn!(error = %err, "sweep skipped"),
            Err(err) => error!(error = %err, "sweep failed"),
        }
        if let Some(signal) = signal {
            info!(signal, "janitor stopped after finishing the sweep");
            return Ok(());
        }
    }
}

/// Runs one sweep to its end even when SIGINT or SIGTERM arrives, and
/// returns its result with the signal. A second signal stops at once.
async fn sweep_to_end(
    janitor: &Janitor<Backend>,
    signals: &mut Signals,
) -> Result<(Result<Report, janitor::Error>, Option<&'static str>), Error> {
    let sweep = janitor.sweep();
    tokio::pin!(sweep);
    let signal = tokio::select! {
        result = &mut sweep => return Ok((result, None)),
        signal = signals.recv() => signal,
    };

    info!(signal, "finishing the sweep in progress; send the signal again to stop now");
    tokio::select! {
        result = &mut sweep => Ok((result, Some(signal))),
        _ = signals.recv() => Err(Error::Interrupted),
    }
}

/// SIGINT and SIGTERM, registered once so that no signal is lost between
/// two sweeps.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> Result<Self, Error> {
        let interrupt = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
        let terminate = signal(SignalKind::terminate()).map_err(Error::Signal)?;
        Ok(Self { interrupt, terminate })
    }

    /// Waits for the next signal and returns its name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

impl janitor::Target for Backend {
    type Error = Error;

    async fn list_challenges(&self) -> Result<BoxStream<'_, Result<ChallengeInfo, Error>>, Error> {
        self.stream_challenges().await
    }

    async fn delete_instance(&self, challenge_id: &str, source_id: &str) -> Result<(), Error> {
        Backend::delete_instance(self, challenge_id, source_id).await
    }

    fn classify(error: &Error) -> Failure {
        use tonic::Code;

        match error {
            Error::Connect { .. } => Failure::Transient,
            Error::Status(status) => match status.code() {
                Code::NotFound => Failure::NotFound,
                Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted => {
                    Failure::Transient
                }
                _ => Failure::Permanent,
            },
            Error::Operation(crate::Error::InstanceNotFound { .. } | crate::Error::ChallengeNotFound { .. }) => {
                Failure::NotFound
            }
            _ => Failure::Permanent,
        }
    }
}
