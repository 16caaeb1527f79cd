//! Registry access through `oci-client`, and the classification of its
//! errors into [`ErrorKind`]s.

use std::time::Duration;

use http::HeaderValue;
use oci_client::{
    Client, Reference, RegistryOperation,
    client::{ClientConfig, ClientProtocol},
    errors::{OciDistributionError, OciErrorCode},
    secrets::RegistryAuth,
};

use super::{ErrorKind, OciSettings, manifest::MANIFEST_MEDIA_TYPE, pack::Artifact};

/// Time allowed to open a connection. A registry that does not accept the
/// connection within it is reported as unreachable instead of hanging the
/// request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A registry client with the credentials of the settings.
pub struct Registry {
    client: Client,
    auth: RegistryAuth,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // RegistryAuth's own Debug already hides secrets; keep the client out.
        f.debug_struct("Registry").field("auth", &self.auth).finish_non_exhaustive()
    }
}

impl Registry {
    pub fn new(settings: &OciSettings) -> Self {
        // reqwest panics when it builds a TLS client without a process-wide
        // crypto provider. Installing fails harmlessly when one already is.
        let _ = rustls::crypto::ring::default_provider().install_default();

        let config = ClientConfig {
            protocol: if settings.insecure { ClientProtocol::Http } else { ClientProtocol::Https },
            connect_timeout: Some(CONNECT_TIMEOUT),
            ..ClientConfig::default()
        };
        let auth = match (&settings.username, &settings.password) {
            (Some(username), Some(password)) if !username.is_empty() && !password.is_empty() => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            _ => RegistryAuth::Anonymous,
        };
        Self { client: Client::new(config), auth }
    }

    /// Returns the digest of the manifest `reference` names.
    pub async fn resolve(&self, reference: &Reference) -> Result<String, OciDistributionError> {
        self.client.fetch_manifest_digest(reference, &self.auth).await
    }

    /// Downloads the raw manifest that `reference` names. The caller checks
    /// its digest.
    pub async fn manifest(&self, reference: &Reference) -> Result<bytes::Bytes, OciDistributionError> {
        let (bytes, _digest) = self.client.pull_manifest_raw(reference, &self.auth, &[MANIFEST_MEDIA_TYPE]).await?;
        Ok(bytes)
    }

    /// Downloads a blob of the repository of `reference` into `out`.
    /// `oci-client` verifies the content against `digest`.
    pub async fn blob(
        &self,
        reference: &Reference,
        digest: &str,
        out: &mut tokio::fs::File,
    ) -> Result<(), OciDistributionError> {
        self.client.store_auth_if_needed(reference.resolve_registry(), &self.auth).await;
        self.client.pull_blob(reference, digest, out).await
    }

    /// Uploads the blobs the registry lacks, then the manifest under the tag
    /// of `reference`. The manifest bytes are sent as they are, so the
    /// registry stores the digest [`Artifact::digest`] names.
    pub async fn push(&self, reference: &Reference, artifact: &Artifact) -> Result<(), OciDistributionError> {
        self.client.auth(reference, &self.auth, RegistryOperation::Push).await?;

        for (digest, data) in artifact.blobs.values() {
            let digest = digest.to_string();
            if self.client.blob_exists(reference, &digest).await? {
                continue;
            }
            self.client.push_blob(reference, data.clone(), &digest).await?;
        }

        let content_type = HeaderValue::from_static(MANIFEST_MEDIA_TYPE);
        self.client.push_manifest_raw(reference, artifact.manifest.clone(), content_type).await?;
        Ok(())
    }
}

/// Classifies a registry error by what the user can do about it.
pub fn classify(err: &OciDistributionError) -> ErrorKind {
    match err {
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes = || envelope.errors.iter().map(|e| &e.code);
            if codes().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                ErrorKind::Unauthorized
            } else if codes().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                ErrorKind::NotFound
            } else {
                ErrorKind::Internal
            }
        }
        OciDistributionError::ServerError { code, .. } => match code {
            401 | 403 => ErrorKind::Unauthorized,
            404 => ErrorKind::NotFound,
            _ => ErrorKind::Internal,
        },
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
            ErrorKind::Unauthorized
        }
        OciDistributionError::ImageManifestNotFoundError(_) => ErrorKind::NotFound,
        OciDistributionError::RequestError(err) => classify_request(err),
        _ => ErrorKind::Internal,
    }
}

fn classify_request(err: &reqwest::Error) -> ErrorKind {
    if err.is_connect() || err.is_timeout() {
        return ErrorKind::Unreachable;
    }
    match err.status().map(|s| s.as_u16()) {
        Some(401 | 403) => ErrorKind::Unauthorized,
        Some(404) => ErrorKind::NotFound,
        _ => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use oci_client::errors::{OciEnvelope, OciError};

    use super::*;

    fn registry_error(code: OciErrorCode) -> OciDistributionError {
        let error = OciError { code, message: String::new(), detail: serde_json::Value::Null };
        OciDistributionError::RegistryError {
            envelope: OciEnvelope { errors: vec![error] },
            url: "http://r/v2/".into(),
        }
    }

    fn server_error(code: u16) -> OciDistributionError {
        OciDistributionError::ServerError { code, url: "http://r/v2/".into(), message: String::new() }
    }

    #[test]
    fn classifies_registry_error_codes() {
        let cases = [
            (OciErrorCode::ManifestUnknown, ErrorKind::NotFound),
            (OciErrorCode::NameUnknown, ErrorKind::NotFound),
            (OciErrorCode::BlobUnknown, ErrorKind::NotFound),
            (OciErrorCode::Unauthorized, ErrorKind::Unauthorized),
            (OciErrorCode::Denied, ErrorKind::Unauthorized),
            (OciErrorCode::Toomanyrequests, ErrorKind::Internal),
            (OciErrorCode::ManifestInvalid, ErrorKind::Internal),
        ];
        for (code, expected) in cases {
            let err = registry_error(code);
            assert_eq!(classify(&err), expected, "{err}");
        }
    }

    #[test]
    fn classifies_http_statuses() {
        let cases = [
            (401, ErrorKind::Unauthorized),
            (403, ErrorKind::Unauthorized),
            (404, ErrorKind::NotFound),
            (500, ErrorKind::Internal),
        ];
        for (code, expected) in cases {
            assert_eq!(classify(&server_error(code)), expected, "HTTP {code}");
        }
        let unauthorized = OciDistributionError::UnauthorizedError { url: "http://r/v2/".into() };
        assert_eq!(classify(&unauthorized), ErrorKind::Unauthorized);
    }
}
