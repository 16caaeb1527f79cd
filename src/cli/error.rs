//! Failures of the command line, and how they are printed.

use std::{error::Error as _, net::SocketAddr, path::PathBuf};

use crate::{manager::OpenError, scenario};

/// A failure that ends a command with exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operation of the local manager failed.
    #[error(transparent)]
    Operation(#[from] crate::Error),

    #[error("failed to open the data directory {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: OpenError,
    },

    #[error("no data directory found for this user (is HOME set?); set --dir or DIR")]
    NoDataDir,

    #[error("invalid server URL {url:?}: {reason}; expected something like http://127.0.0.1:8080")]
    InvalidUrl { url: String, reason: String },

    #[error(
        "failed to connect to {url}: {reason}; is `chall-manager serve` running at {url}? set --url or CHALL_MANAGER_URL"
    )]
    Connect { url: String, reason: String },

    #[error("{url} does not answer as a chall-manager server ({reason}); check --url or CHALL_MANAGER_URL")]
    NotChallManager { url: String, reason: String },

    /// The server returned an error status; its message is shown as is.
    #[error("{}", status_message(.0))]
    Status(Box<tonic::Status>),

    #[error("invalid response from {url}: {reason}")]
    InvalidResponse { url: String, reason: String },

    #[error(
        "scenario {dir} is a local directory, which the server at {url} cannot read; \
         push it first with `chall-manager challenge push {dir} REGISTRY/REPOSITORY:TAG` \
         and pass the printed reference to --scenario"
    )]
    DirectoryWithServer { dir: PathBuf, url: String },

    #[error(
        "scenario directory {dir} not found; give an existing directory, or an OCI reference like registry:5000/name:tag"
    )]
    MissingDirectory { dir: PathBuf },

    /// Options that clap accepts but that contradict each other.
    #[error("{0}")]
    Usage(String),

    #[error("failed to listen for Ctrl-C")]
    Signal(#[source] std::io::Error),

    #[error(
        "interrupted; an interrupted deployment is destroyed by the next `chall-manager serve` on this data directory"
    )]
    Interrupted,

    #[error("{dir} is not a usable scenario directory: {source}")]
    InvalidScenario {
        dir: PathBuf,
        #[source]
        source: crate::runner::Error,
    },

    #[error("failed to pack the scenario directory {dir}: {source}")]
    Pack {
        dir: PathBuf,
        #[source]
        source: scenario::Error,
    },

    #[error("failed to push the scenario directory {dir} to {reference}: {source}")]
    Push {
        dir: PathBuf,
        reference: String,
        #[source]
        source: scenario::Error,
    },

    #[error("failed to listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),

    #[error("failed to set up logging: {0}")]
    Logging(String),

    #[error(transparent)]
    Janitor(#[from] crate::janitor::Error),

    #[error("failed to write the output: {0}")]
    Output(#[source] std::io::Error),
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Self::Status(Box::new(status))
    }
}

/// Picks the text shown for a gRPC status: the server's message, or the
/// code's description when the message is empty.
/// The server's message, followed by the ids its `ErrorInfo` detail
/// names, which the message itself leaves out ("Challenge not found."),
/// then the field violations of its `BadRequest` detail, which carry the
/// cause of a rejected scenario.
fn status_message(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;

    let mut message = if status.message().is_empty() {
        format!("server returned gRPC status {:?} with no message", status.code())
    } else {
        status.message().to_owned()
    };
    if let Some(info) = status.get_details_error_info() {
        let mut ids: Vec<String> = info.metadata.iter().map(|(key, value)| format!("{key} {value:?}")).collect();
        ids.sort();
        if !ids.is_empty() {
            message.push_str(&format!(" ({})", ids.join(", ")));
        }
    }
    if let Some(bad_request) = status.get_details_bad_request() {
        for violation in bad_request.field_violations {
            message.push_str(&format!("; {}: {}", violation.field, violation.description));
        }
    }
    message
}

/// Formats an error and its causes on one line, as `main` prints it.
///
/// Causes are appended unless the message already quotes them, because most
/// variants here and in the library embed their source in their message.
/// Line breaks (a runner's stderr tail, for example) become `; ` so that the
/// message stays on one line.
pub fn format_error(err: &Error) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(source) = cause {
        let text = source.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = source.source();
    }

    line.lines().map(str::trim).filter(|part| !part.is_empty()).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_error_puts_causes_on_one_line() {
        let err =
            Error::Bind { address: "127.0.0.1:1".parse().unwrap(), source: std::io::Error::other("first\nsecond") };
        assert_eq!(format_error(&err), "failed to listen on 127.0.0.1:1: first; second");
    }

    #[test]
    fn format_error_uses_status_message() {
        let err = Error::from(tonic::Status::not_found("challenge \"a\" not found"));
        assert_eq!(format_error(&err), "challenge \"a\" not found");
        let err = Error::from(tonic::Status::internal(""));
        assert_eq!(format_error(&err), "server returned gRPC status Internal with no message");
    }

    #[test]
    fn status_message_lists_field_violations() {
        use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

        let details = ErrorDetails::with_bad_request(vec![FieldViolation::new("scenario", "no runtime given")]);
        let status = tonic::Status::with_error_details(
            tonic::Code::InvalidArgument,
            "Scenario does not match specification.",
            details,
        );
        assert_eq!(
            format_error(&Error::from(status)),
            "Scenario does not match specification.; scenario: no runtime given"
        );
    }
}
