//! The two ways an operator command runs: against a server over gRPC, or
//! directly on the local data directory. Commands call [`Backend`] and
//! never care which one they got.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt, stream::BoxStream};

use super::{
    error::Error,
    options::{ClientArgs, DataArgs},
    remote::Remote,
};
use crate::{
    challenge::{ChallengeInfo, ChallengeUpdate, NewChallenge},
    instance::Instance,
    manager::Manager,
};

pub enum Backend {
    /// The local data directory, under the same locks as a server.
    Local(Manager),
    /// A running server.
    Remote(Box<Remote>),
}

impl Backend {
    /// Connects to `--url` when given, else opens the data directory.
    pub async fn open(args: &ClientArgs) -> Result<Self, Error> {
        // An empty CHALL_MANAGER_URL means no server, like an unset one.
        match args.url.as_deref().filter(|url| !url.is_empty()) {
            Some(url) => Ok(Self::Remote(Box::new(Remote::connect(url).await?))),
            None => Ok(Self::Local(args.data.open_manager()?)),
        }
    }

    /// Like [`Backend::open`], but a server is only reached at the first
    /// call, and again at each call after the connection is lost, so a
    /// long-running command survives a server that starts late or restarts.
    pub fn open_lazy(url: Option<&str>, data: &DataArgs) -> Result<Self, Error> {
        match url.filter(|url| !url.is_empty()) {
            Some(url) => Ok(Self::Remote(Box::new(Remote::connect_lazy(url)?))),
            None => Ok(Self::Local(data.open_manager()?)),
        }
    }

    pub async fn create_challenge(&self, new: NewChallenge) -> Result<ChallengeInfo, Error> {
        match self {
            Self::Local(manager) => Ok(manager.create_challenge(new).await?),
            Self::Remote(remote) => remote.create_challenge(new).await,
        }
    }

    pub async fn get_challenge(&self, id: &str) -> Result<ChallengeInfo, Error> {
        match self {
            Self::Local(manager) => Ok(manager.get_challenge(id).await?),
            Self::Remote(remote) => remote.get_challenge(id).await,
        }
    }

    pub async fn list_challenges(&self) -> Result<Vec<ChallengeInfo>, Error> {
        self.stream_challenges().await?.try_collect().await
    }

    /// Streams every challenge, so that a caller can act on the first ones
    /// while the others are still read.
    pub async fn stream_challenges(&self) -> Result<BoxStream<'_, Result<ChallengeInfo, Error>>, Error> {
        match self {
            Self::Local(manager) => Ok(manager.list_challenges().map_err(Error::from).boxed()),
            Self::Remote(remote) => remote.stream_challenges().await,
        }
    }

    pub async fn update_challenge(&self, update: ChallengeUpdate) -> Result<ChallengeInfo, Error> {
        match self {
            Self::Local(manager) => Ok(manager.update_challenge(update).await?),
            Self::Remote(remote) => remote.update_challenge(update).await,
        }
    }

    pub async fn delete_challenge(&self, id: &str) -> Result<(), Error> {
        match self {
            Self::Local(manager) => Ok(manager.delete_challenge(id).await?),
            Self::Remote(remote) => remote.delete_challenge(id).await,
        }
    }

    pub async fn create_instance(
        &self,
        challenge_id: &str,
        source_id: &str,
        additional: BTreeMap<String, String>,
    ) -> Result<Instance, Error> {
        match self {
            Self::Local(manager) => Ok(manager.create_instance(challenge_id, source_id, additional).await?),
            Self::Remote(remote) => remote.create_instance(challenge_id, source_id, additional).await,
        }
    }

    pub async fn get_instance(&self, challenge_id: &str, source_id: &str) -> Result<Instance, Error> {
        match self {
            Self::Local(manager) => Ok(manager.get_instance(challenge_id, source_id).await?),
            Self::Remote(remote) => remote.get_instance(challenge_id, source_id).await,
        }
    }

    pub async fn list_instances(&self, source_id: &str) -> Result<Vec<Instance>, Error> {
        match self {
            Self::Local(manager) => Ok(manager.list_instances(source_id).try_collect().await?),
            Self::Remote(remote) => remote.list_instances(source_id).await,
        }
    }

    pub async fn delete_instance(&self, challenge_id: &str, source_id: &str) -> Result<(), Error> {
        match self {
            Self::Local(manager) => Ok(manager.delete_instance(challenge_id, source_id).await?),
            Self::Remote(remote) => remote.delete_instance(challenge_id, source_id).await,
        }
    }
}
