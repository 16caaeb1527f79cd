//! chall-manager deploys one instance of a CTF challenge per team, on
//! demand, from a scenario stored in an OCI registry.
//!
//! The library holds everything the binary runs, so the server and the
//! operator commands share one implementation:
//!
//! - [`manager`]: the shared state, and the entry point of every operation;
//! - [`challenge`] and [`instance`]: the operations and their records;
//! - [`store`]: records as files in the data directory;
//! - [`lock`]: the world → challenge → instance lock chain;
//! - [`scenario`]: fetching, caching and packing scenario artifacts;
//! - [`runner`]: running a scenario (`exec`, later Pulumi);
//! - [`janitor`]: deleting the instances whose end has passed;
//! - [`api`]: gRPC and REST on one port;
//! - [`flag`]: per-identity flag variants, as the Go SDK computes them;
//! - [`cli`]: the command line.

pub mod api;
pub mod challenge;
pub mod cli;
pub mod error;
pub mod flag;
pub mod instance;
pub mod janitor;
pub mod lock;
pub mod manager;
pub mod pool;
pub mod proto;
pub mod runner;
pub mod scenario;
pub mod store;
pub mod time;
pub mod update;

pub use error::{Error, Result};
pub use manager::{Manager, Settings};
