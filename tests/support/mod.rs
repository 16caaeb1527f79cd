//! Helpers shared by the integration tests. Each test file includes them
//! with `mod support;` and uses what it needs.

#![allow(dead_code)]

pub mod env;
pub mod registry;
pub mod server;
