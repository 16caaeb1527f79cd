//! gRPC and REST on one port. PLACEHOLDER: the API helper replaces this.
