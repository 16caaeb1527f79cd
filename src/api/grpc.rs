//! The gRPC services `api.v1.challenge.ChallengeStore` and
//! `api.v1.instance.InstanceManager`, over the manager. Errors become
//! statuses through `From<crate::Error> for Status` in [`super::status`].

use futures::{StreamExt, stream::BoxStream};
use tonic::{Request, Response, Status, service::Routes};
use tracing::{Span, instrument};

use super::{convert, until_first_error};
use crate::{
    challenge::POOLED_HEADER,
    error::Error,
    manager::Manager,
    proto::{
        challenge::{
            self as pb, Challenge,
            challenge_store_server::{ChallengeStore, ChallengeStoreServer},
        },
        instance::{
            self as pb_instance, Instance,
            instance_manager_server::{InstanceManager, InstanceManagerServer},
        },
    },
};

/// Builds the two services as tonic routes, ready to turn into an axum router.
pub fn routes(manager: Manager) -> Routes {
    Routes::new(ChallengeStoreServer::new(ChallengeService { manager: manager.clone() }))
        .add_service(InstanceManagerServer::new(InstanceService { manager }))
}

struct ChallengeService {
    manager: Manager,
}

struct InstanceService {
    manager: Manager,
}

#[tonic::async_trait]
impl ChallengeStore for ChallengeService {
    #[instrument(
        name = "api.v1.challenge.ChallengeStore/CreateChallenge",
        skip_all,
        fields(challenge_id = %request.get_ref().id)
    )]
    async fn create_challenge(
        &self,
        request: Request<pb::CreateChallengeRequest>,
    ) -> Result<Response<Challenge>, Status> {
        let new = convert::new_challenge(request.into_inner())?;
        let info = self.manager.create_challenge(new).await?;
        Ok(Response::new(convert::challenge(info)))
    }

    #[instrument(
        name = "api.v1.challenge.ChallengeStore/RetrieveChallenge",
        skip_all,
        fields(challenge_id = %request.get_ref().id)
    )]
    async fn retrieve_challenge(
        &self,
        request: Request<pb::RetrieveChallengeRequest>,
    ) -> Result<Response<Challenge>, Status> {
        let info = self.manager.get_challenge(&request.get_ref().id).await?;
        let pooled = info.pooled;
        let mut response = Response::new(convert::challenge(info));
        if let Some(pooled) = pooled {
            response.metadata_mut().insert(POOLED_HEADER, pooled.into());
        }
        Ok(response)
    }

    type QueryChallengeStream = BoxStream<'static, Result<Challenge, Status>>;

    #[instrument(name = "api.v1.challenge.ChallengeStore/QueryChallenge", skip_all)]
    async fn query_challenge(&self, _request: Request<()>) -> Result<Response<Self::QueryChallengeStream>, Status> {
        let span = Span::current();
        let challenges = until_first_error(self.manager.list_challenges())
            .map(move |item| item.map(convert::challenge).map_err(|err| span.in_scope(|| Status::from(err))));
        Ok(Response::new(challenges.boxed()))
    }

    #[instrument(
        name = "api.v1.challenge.ChallengeStore/UpdateChallenge",
        skip_all,
        fields(challenge_id = %request.get_ref().id)
    )]
    async fn update_challenge(
        &self,
        request: Request<pb::UpdateChallengeRequest>,
    ) -> Result<Response<Challenge>, Status> {
        let update = convert::challenge_update(request.into_inner())?;
        let info = self.manager.update_challenge(update).await?;
        Ok(Response::new(convert::challenge(info)))
    }

    #[instrument(
        name = "api.v1.challenge.ChallengeStore/DeleteChallenge",
        skip_all,
        fields(challenge_id = %request.get_ref().id)
    )]
    async fn delete_challenge(&self, request: Request<pb::DeleteChallengeRequest>) -> Result<Response<()>, Status> {
        self.manager.delete_challenge(&request.get_ref().id).await?;
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl InstanceManager for InstanceService {
    #[instrument(
        name = "api.v1.instance.InstanceManager/CreateInstance",
        skip_all,
        fields(challenge_id = %request.get_ref().challenge_id, source_id = %request.get_ref().source_id)
    )]
    async fn create_instance(
        &self,
        request: Request<pb_instance::CreateInstanceRequest>,
    ) -> Result<Response<Instance>, Status> {
        let request = request.into_inner();
        let additional = request.additional.into_iter().collect();
        let instance = self.manager.create_instance(&request.challenge_id, &request.source_id, additional).await?;
        Ok(Response::new(convert::instance(instance)))
    }

    #[instrument(
        name = "api.v1.instance.InstanceManager/RetrieveInstance",
        skip_all,
        fields(challenge_id = %request.get_ref().challenge_id, source_id = %request.get_ref().source_id)
    )]
    async fn retrieve_instance(
        &self,
        request: Request<pb_instance::RetrieveInstanceRequest>,
    ) -> Result<Response<Instance>, Status> {
        let request = request.get_ref();
        let instance = self.manager.get_instance(&request.challenge_id, &request.source_id).await?;
        Ok(Response::new(convert::instance(instance)))
    }

    type QueryInstanceStream = BoxStream<'static, Result<Instance, Status>>;

    #[instrument(
        name = "api.v1.instance.InstanceManager/QueryInstance",
        skip_all,
        fields(source_id = %request.get_ref().source_id)
    )]
    async fn query_instance(
        &self,
        request: Request<pb_instance::QueryInstanceRequest>,
    ) -> Result<Response<Self::QueryInstanceStream>, Status> {
        let source_id = &request.get_ref().source_id;
        if source_id.is_empty() {
            return Err(Error::invalid("source_id", "must not be empty").into());
        }

        let span = Span::current();
        let instances = until_first_error(self.manager.list_instances(source_id))
            .map(move |item| item.map(convert::instance).map_err(|err| span.in_scope(|| Status::from(err))));
        Ok(Response::new(instances.boxed()))
    }

    #[instrument(
        name = "api.v1.instance.InstanceManager/RenewInstance",
        skip_all,
        fields(challenge_id = %request.get_ref().challenge_id, source_id = %request.get_ref().source_id)
    )]
    async fn renew_instance(
        &self,
        request: Request<pb_instance::RenewInstanceRequest>,
    ) -> Result<Response<Instance>, Status> {
        let request = request.get_ref();
        let instance = self.manager.renew_instance(&request.challenge_id, &request.source_id).await?;
        Ok(Response::new(convert::instance(instance)))
    }

    #[instrument(
        name = "api.v1.instance.InstanceManager/DeleteInstance",
        skip_all,
        fields(challenge_id = %request.get_ref().challenge_id, source_id = %request.get_ref().source_id)
    )]
    async fn delete_instance(
        &self,
        request: Request<pb_instance::DeleteInstanceRequest>,
    ) -> Result<Response<()>, Status> {
        let request = request.get_ref();
        self.manager.delete_instance(&request.challenge_id, &request.source_id).await?;
        Ok(Response::new(()))
    }
}
