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
pub async fn run(args: Args) -> Result<(), Error> {
    let manager = args.data.open_manager()?;

    let address = SocketAddr::new(args.listen, args.port);
    let listener = TcpListener::bind(address).await.map_err(|source| Error::Bind { address, source })?;
    let bound = listener.local_addr().map_err(|source| Error::Bind { address, source })?;

    info!(address = %bound, "listening");
    // A plain line on stderr for scripts and tests started with `--port 0`,
    // whatever the log level and format.
    eprintln!("listening on {bound}");

    crate::api::serve(listener, manager, shutdown_signal()).await.map_err(Error::Serve)?;
    info!("stopped");
    Ok(())
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "failed to listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };

    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "failed to listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = interrupt => info!(signal = "SIGINT", "shutting down"),
        () = terminate => info!(signal = "SIGTERM", "shutting down"),
    }
}
