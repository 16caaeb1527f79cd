//! Code generated from `proto/` by `build.rs`.

#![allow(clippy::all, missing_docs)]

pub mod api {
    pub mod v1 {
        // `api.v1.common` defines no message, so it generates no code.
        pub mod instance {
            tonic::include_proto!("api.v1.instance");
        }
        pub mod challenge {
            tonic::include_proto!("api.v1.challenge");
        }
    }
}

pub use api::v1::{challenge, instance};
