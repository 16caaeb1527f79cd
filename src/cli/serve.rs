//! `chall-manager serve`: run the gRPC and REST API on one port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::net::TcpListener;
use tracing::info;

use super::{error::Error, options::DataArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TCP port to listen on; 0 picks a free port
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Address to listen on
    #[arg(long, value_name = "ADDR", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub listen: IpAddr,

    #[command(flatten)]
    pub data: DataArgs,
}

/// Serves until SIGINT or SIGTERM, then lets requests in flight finish.
pub async fn run(args: Args, log_format: super::logging::LogFormat) -> Result<(), Error> {
    let manager = args.data.open_manager()?;
    let shutdown = shutdown_signal().map_err(Error::Serve)?;
    recover(&manager).await;
    manager.start_pooler();

    let address = SocketAddr::new(args.listen, args.port);
    let listener = TcpListener::bind(address).await.map_err(|source| Error::Bind { address, source })?;
    let bound = listener.local_addr().map_err(|source| Error::Bind { address, source })?;

    info!(address = %bound, data_dir = %manager.data_dir().display(), "listening");
    // A plain line on stderr for scripts and tests started with `--port 0`,
    // whatever the log level. With JSON logs, the `listening` event above
    // carries the address, and stderr stays pure JSON lines.
    if log_format == super::logging::LogFormat::Text {
        eprintln!("listening on {bound}");
    }

    crate::api::serve(listener, manager, shutdown).await.map_err(Error::Serve)?;
    info!("stopped");
    Ok(())
}

/// Settles the deployments a previous process left half done, before any
/// request can see them. A failure is logged, not fatal: the intents stay
/// and the next start tries again.
async fn recover(manager: &crate::Manager) {
    match manager.recover_interrupted().await {
        Ok(0) => {}
        Ok(settled) => info!(settled, "settled interrupted deployments"),
        Err(err) => tracing::warn!(error = %err, "failed to recover interrupted deployments"),
    }
}

/// Registers the SIGINT and SIGTERM handlers now, so that a signal that
/// arrives as soon as the address is printed already stops the server
/// gracefully, and returns a future that completes on the first of them.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => info!(signal = "SIGINT", "shutting down"),
            _ = terminate.recv() => info!(signal = "SIGTERM", "shutting down"),
        }
    })
}
