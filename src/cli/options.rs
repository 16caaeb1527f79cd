//! Option groups shared by several commands: where the local data lives,
//! how to reach registries, and which server to call.

use std::path::PathBuf;

use crate::{
    manager::{Manager, Settings},
    scenario::{OciSettings, Scenarios},
};

use super::{error::Error, output::OutputArgs};

/// Local data directory and registry access.
#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    /// Data directory holding challenges, instances, packed scenarios and
    /// lock files [default: the user's data directory, like
    /// ~/.local/share/chall-manager on Linux]
    #[arg(long, env = "DIR", value_name = "PATH", help_heading = "Local data")]
    pub dir: Option<PathBuf>,

    /// Directory of extracted scenarios, safe to delete at any time
    /// [default: <dir>/cache]
    #[arg(long, env = "CACHE", value_name = "PATH", help_heading = "Local data")]
    pub cache: Option<PathBuf>,

    #[command(flatten)]
    pub oci: OciArgs,
}

/// Registry access. `Debug` hides the password.
#[derive(clap::Args, Clone)]
pub struct OciArgs {
    /// Talk plain HTTP to registries instead of HTTPS (the variable takes
    /// true/false, 1/0, yes/no)
    #[arg(
        long,
        env = "OCI_INSECURE",
        help_heading = "Registry",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    pub oci_insecure: bool,

    /// User name for registries that require authentication
    #[arg(long, env = "OCI_USERNAME", value_name = "NAME", help_heading = "Registry")]
    pub oci_username: Option<String>,

    /// Password for registries that require authentication. Prefer the
    /// environment variable: other local users can read command lines
    #[arg(long, env = "OCI_PASSWORD", value_name = "PASSWORD", hide_env_values = true, help_heading = "Registry")]
    pub oci_password: Option<String>,
}

impl std::fmt::Debug for OciArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciArgs")
            .field("oci_insecure", &self.oci_insecure)
            .field("oci_username", &self.oci_username)
            .field("oci_password", &self.oci_password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl DataArgs {
    /// Resolves the directories and registry settings, filling in defaults.
    pub fn settings(&self) -> Result<Settings, Error> {
        let data_dir = match &self.dir {
            Some(dir) => dir.clone(),
            None => default_data_dir()?,
        };
        let cache_dir = self.cache.clone().unwrap_or_else(|| data_dir.join("cache"));
        let oci = OciSettings {
            insecure: self.oci.oci_insecure,
            username: self.oci.oci_username.clone(),
            password: self.oci.oci_password.clone(),
        };
        Ok(Settings { data_dir, cache_dir, oci })
    }

    /// Opens the manager over the data directory, creating it when missing.
    pub fn open_manager(&self) -> Result<Manager, Error> {
        let settings = self.settings()?;
        let path = settings.data_dir.clone();
        Manager::open(settings).map_err(|source| Error::Open { path, source })
    }

    /// Builds the scenario store alone, for commands that only talk to
    /// registries and need no lock or record.
    pub fn scenarios(&self) -> Result<Scenarios, Error> {
        let settings = self.settings()?;
        Ok(Scenarios::new(&settings.data_dir, settings.cache_dir, settings.oci))
    }
}

fn default_data_dir() -> Result<PathBuf, Error> {
    directories::ProjectDirs::from("io", "ctfer", "chall-manager")
        .map(|dirs| dirs.data_dir().to_path_buf())
        .ok_or(Error::NoDataDir)
}

/// Options of every operator command: which server to call, or which local
/// data directory to open, and how to print the result.
#[derive(clap::Args, Clone, Debug)]
pub struct ClientArgs {
    /// URL of a running chall-manager server, like http://127.0.0.1:8080.
    /// Without it, the command opens the local data directory and runs the
    /// operation itself, under the same locks as a server
    #[arg(long, env = "CHALL_MANAGER_URL", value_name = "URL")]
    pub url: Option<String>,

    /// Local data, used only without --url
    #[command(flatten)]
    pub data: DataArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_password() {
        let oci =
            OciArgs { oci_insecure: false, oci_username: Some("user".into()), oci_password: Some("hunter2".into()) };
        let text = format!("{oci:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn cache_defaults_inside_data_dir() {
        let oci = OciArgs { oci_insecure: false, oci_username: None, oci_password: None };
        let args = DataArgs { dir: Some("/srv/cm".into()), cache: None, oci };
        let settings = args.settings().unwrap();
        assert_eq!(settings.cache_dir, PathBuf::from("/srv/cm/cache"));
    }
}
