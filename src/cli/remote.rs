//! Calling a chall-manager server over gRPC, and turning its messages into
//! the domain types the commands print.

use std::{collections::BTreeMap, time::Duration};

use futures::{StreamExt, stream::BoxStream};
use tonic::{
    Code, Status,
    transport::{Channel, Endpoint},
};

use super::error::Error;
use crate::{
    api::convert::{duration_from_proto, duration_to_proto, timestamp_from_proto, timestamp_to_proto},
    challenge::{Challenge, ChallengeInfo, ChallengeUpdate, NewChallenge, POOLED_HEADER, UpdateStrategy},
    instance::Instance,
    proto::{
        challenge::{self as pb_challenge, challenge_store_client::ChallengeStoreClient},
        instance::{self as pb_instance, instance_manager_client::InstanceManagerClient},
    },
};

/// Time allowed to open the connection and finish the HTTP/2 handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Interval of HTTP/2 pings, and time allowed for their answer, while a
/// call waits: a deployment may take minutes, but a silent server is dead.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// A connection to one server.
pub struct Remote {
    url: String,
    challenges: ChallengeStoreClient<Channel>,
    instances: InstanceManagerClient<Channel>,
}

impl Remote {
    /// Connects to a server. A URL without a scheme gets `http://`, because
    /// servers speak plain HTTP/2 unless a proxy in front adds TLS.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let (url, endpoint) = endpoint(url)?;
        let channel =
            endpoint.connect().await.map_err(|err| Error::Connect { url: url.clone(), reason: describe(&err) })?;
        Ok(Self::with_channel(url, channel))
    }

    /// Prepares a connection without opening it: each call connects when
    /// no connection is open, so the server may start or restart later.
    /// A call that cannot connect fails with [`Error::Connect`].
    pub fn connect_lazy(url: &str) -> Result<Self, Error> {
        let (url, endpoint) = endpoint(url)?;
        let channel = endpoint.connect_lazy();
        Ok(Self::with_channel(url, channel))
    }

    fn with_channel(url: String, channel: Channel) -> Self {
        Self {
            url,
            challenges: ChallengeStoreClient::new(channel.clone()),
            instances: InstanceManagerClient::new(channel),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn create_challenge(&self, new: NewChallenge) -> Result<ChallengeInfo, Error> {
        let request = pb_challenge::CreateChallengeRequest {
            id: new.id,
            scenario: new.scenario,
            timeout: new.timeout.map(duration_to_proto),
            until: new.until.map(timestamp_to_proto),
            additional: new.additional.into_iter().collect(),
            min: new.min,
            max: new.max,
        };
        let response = self.challenges.clone().create_challenge(request).await.map_err(|status| self.status(status))?;
        self.challenge_from_proto(response.into_inner())
    }

    pub async fn get_challenge(&self, id: &str) -> Result<ChallengeInfo, Error> {
        let request = pb_challenge::RetrieveChallengeRequest { id: id.to_owned() };
        let response =
            self.challenges.clone().retrieve_challenge(request).await.map_err(|status| self.status(status))?;
        let pooled = response.metadata().get(POOLED_HEADER).and_then(|value| value.to_str().ok()?.parse().ok());
        Ok(ChallengeInfo { pooled, ..self.challenge_from_proto(response.into_inner())? })
    }

    /// Streams every challenge as the server sends it.
    pub async fn stream_challenges(&self) -> Result<BoxStream<'_, Result<ChallengeInfo, Error>>, Error> {
        let stream =
            self.challenges.clone().query_challenge(()).await.map_err(|status| self.status(status))?.into_inner();
        let challenges =
            stream.map(|message| self.challenge_from_proto(message.map_err(|status| self.status(status))?));
        Ok(challenges.boxed())
    }

    pub async fn update_challenge(&self, update: ChallengeUpdate) -> Result<ChallengeInfo, Error> {
        let strategy = match update.strategy {
            UpdateStrategy::UpdateInPlace => pb_challenge::UpdateStrategy::UpdateInPlace,
            UpdateStrategy::BlueGreen => pb_challenge::UpdateStrategy::BlueGreen,
            UpdateStrategy::Recreate => pb_challenge::UpdateStrategy::Recreate,
        };
        let request = pb_challenge::UpdateChallengeRequest {
            id: update.id,
            scenario: update.scenario,
            update_strategy: Some(strategy.into()),
            timeout: update.timeout.map(duration_to_proto),
            until: update.until.map(timestamp_to_proto),
            update_mask: Some(prost_types::FieldMask {
                paths: update.mask.iter().map(|field| field.path().to_owned()).collect(),
            }),
            additional: update.additional.into_iter().collect(),
            min: update.min,
            max: update.max,
        };
        let response = self.challenges.clone().update_challenge(request).await.map_err(|status| self.status(status))?;
        self.challenge_from_proto(response.into_inner())
    }

    pub async fn delete_challenge(&self, id: &str) -> Result<(), Error> {
        let request = pb_challenge::DeleteChallengeRequest { id: id.to_owned() };
        self.challenges.clone().delete_challenge(request).await.map_err(|status| self.status(status))?;
        Ok(())
    }

    pub async fn create_instance(
        &self,
        challenge_id: &str,
        source_id: &str,
        additional: BTreeMap<String, String>,
    ) -> Result<Instance, Error> {
        let request = pb_instance::CreateInstanceRequest {
            challenge_id: challenge_id.to_owned(),
            source_id: source_id.to_owned(),
            additional: additional.into_iter().collect(),
        };
        let response = self.instances.clone().create_instance(request).await.map_err(|status| self.status(status))?;
        self.instance_from_proto(response.into_inner())
    }

    pub async fn get_instance(&self, challenge_id: &str, source_id: &str) -> Result<Instance, Error> {
        let request = pb_instance::RetrieveInstanceRequest {
            challenge_id: challenge_id.to_owned(),
            source_id: source_id.to_owned(),
        };
        let response = self.instances.clone().retrieve_instance(request).await.map_err(|status| self.status(status))?;
        self.instance_from_proto(response.into_inner())
    }

    pub async fn list_instances(&self, source_id: &str) -> Result<Vec<Instance>, Error> {
        let request = pb_instance::QueryInstanceRequest { source_id: source_id.to_owned() };
        let mut stream =
            self.instances.clone().query_instance(request).await.map_err(|status| self.status(status))?.into_inner();
        let mut instances = Vec::new();
        while let Some(message) = stream.message().await.map_err(|status| self.status(status))? {
            instances.push(self.instance_from_proto(message)?);
        }
        Ok(instances)
    }

    pub async fn delete_instance(&self, challenge_id: &str, source_id: &str) -> Result<(), Error> {
        let request = pb_instance::DeleteInstanceRequest {
            challenge_id: challenge_id.to_owned(),
            source_id: source_id.to_owned(),
        };
        self.instances.clone().delete_instance(request).await.map_err(|status| self.status(status))?;
        Ok(())
    }

    /// Maps a status to an error. `Unavailable` raised by the transport
    /// itself (the server went away after the connection was made) gets
    /// the same hint as a failed connection. A plain HTTP response means the
    /// URL points at something other than chall-manager.
    fn status(&self, status: Status) -> Error {
        // The status's own text is a debug dump, so describe its source.
        if status.code() == Code::Unavailable
            && let Some(source) = std::error::Error::source(&status)
        {
            return Error::Connect { url: self.url.clone(), reason: describe(source) };
        }
        // NOTE: tonic 0.14 writes this message for a plain HTTP response
        // without gRPC trailers. It offers no structured way to detect one.
        if status.message().starts_with("grpc-status header missing") {
            return Error::NotChallManager { url: self.url.clone(), reason: status.message().to_owned() };
        }
        Error::from(status)
    }

    fn invalid_response(&self, reason: impl Into<String>) -> Error {
        Error::InvalidResponse { url: self.url.clone(), reason: reason.into() }
    }

    /// Converts a challenge message. The API does not carry the scenario's
    /// digest, so it stays empty.
    fn challenge_from_proto(&self, message: pb_challenge::Challenge) -> Result<ChallengeInfo, Error> {
        let timeout =
            message.timeout.map(duration_from_proto).transpose().map_err(|reason| self.invalid_response(reason))?;
        let until =
            message.until.map(timestamp_from_proto).transpose().map_err(|reason| self.invalid_response(reason))?;
        let instances = message
            .instances
            .into_iter()
            .map(|instance| self.instance_from_proto(instance))
            .collect::<Result<Vec<_>, _>>()?;

        let challenge = Challenge {
            id: message.id,
            scenario: message.scenario,
            digest: String::new(),
            timeout,
            until,
            additional: message.additional.into_iter().collect(),
            min: message.min,
            max: message.max,
        };
        Ok(ChallengeInfo { challenge, instances, pooled: None })
    }

    /// Converts an instance message. The API never reveals the identity
    /// given to the scenario, so it stays empty.
    fn instance_from_proto(&self, message: pb_instance::Instance) -> Result<Instance, Error> {
        let timestamp = |field: &str, value: Option<prost_types::Timestamp>| {
            let value = value.ok_or_else(|| self.invalid_response(format!("instance without {field}")))?;
            timestamp_from_proto(value).map_err(|reason| self.invalid_response(reason))
        };
        let since = timestamp("since", message.since)?;
        let last_renew = timestamp("last_renew", message.last_renew)?;
        let until =
            message.until.map(timestamp_from_proto).transpose().map_err(|reason| self.invalid_response(reason))?;

        // Older servers may fill only the deprecated single `flag`.
        #[allow(deprecated)]
        let flags = match (message.flags.is_empty(), message.flag) {
            (true, Some(flag)) => vec![flag],
            _ => message.flags,
        };

        Ok(Instance {
            challenge_id: message.challenge_id,
            source_id: message.source_id,
            identity: String::new(),
            since,
            last_renew,
            until,
            connection_info: message.connection_info,
            flags,
            additional: message.additional.into_iter().collect(),
            // The API does not expose what an instance was deployed with.
            deployed: Default::default(),
        })
    }
}

/// Checks a server URL, adding `http://` when it has no scheme, and
/// configures the endpoint.
fn endpoint(url: &str) -> Result<(String, Endpoint), Error> {
    let url = if url.contains("://") { url.to_owned() } else { format!("http://{url}") };
    if !url.starts_with("http://") {
        let reason = "chall-manager serves plain HTTP (h2c), so the URL must start with http://; \
                      put a TLS proxy in front of the server for TLS"
            .to_owned();
        return Err(Error::InvalidUrl { url, reason });
    }
    // A server that accepts the connection but never answers would
    // otherwise hang the command; keepalive pings find it dead.
    let endpoint = Channel::from_shared(url.clone())
        .map_err(|err| Error::InvalidUrl { url: url.clone(), reason: err.to_string() })?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_INTERVAL)
        .keep_alive_while_idle(true);
    Ok((url, endpoint))
}

/// Joins an error and its causes, because the top of a tonic transport
/// error is only "transport error" and the reason is in its sources.
fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(source) = cause {
        let part = source.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = source.source();
    }
    text
}
