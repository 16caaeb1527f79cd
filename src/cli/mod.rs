//! The command line. PLACEHOLDER: replaced later.
