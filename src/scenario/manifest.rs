//! The OCI image manifest of a scenario artifact.
//!
//! A scenario is an OCI 1.1 artifact: `artifactType` is [`ARTIFACT_TYPE`],
//! the config is the empty descriptor (`{}`), and each file is one layer of
//! media type [`FILE_MEDIA_TYPE`] whose [`TITLE_ANNOTATION`] is its path
//! relative to the scenario directory. The ORAS CLI and oras-go produce the
//! same shape, plus a top-level `mediaType` and a creation-time annotation;
//! both are accepted when reading.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const ARTIFACT_TYPE: &str = "application/vnd.ctfer-io.scenario";
pub const FILE_MEDIA_TYPE: &str = "application/vnd.ctfer-io.file";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// Content of the empty config blob.
pub const EMPTY_CONFIG: &[u8] = b"{}";
/// Annotation holding the path of a file relative to the scenario directory.
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// Annotation ORAS sets on a directory pushed as one tar+gzip layer.
pub const UNPACK_ANNOTATION: &str = "io.deis.oras.content.unpack";

/// An OCI image manifest, reduced to the fields scenarios use. Unknown
/// fields (`subject`, descriptor `data`, ...) are ignored when reading.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// Builds the manifest of a scenario whose files are `layers`, in the
    /// given order.
    pub fn scenario(layers: Vec<Descriptor>) -> Self {
        Self {
            schema_version: 2,
            media_type: Some(MANIFEST_MEDIA_TYPE.to_owned()),
            artifact_type: Some(ARTIFACT_TYPE.to_owned()),
            config: Descriptor {
                media_type: EMPTY_MEDIA_TYPE.to_owned(),
                digest: super::reference::Digest::of(EMPTY_CONFIG).to_string(),
                size: EMPTY_CONFIG.len() as u64,
                annotations: BTreeMap::new(),
            },
            layers,
            annotations: BTreeMap::new(),
        }
    }

    /// Serializes the manifest. The output depends only on the fields, so
    /// the same files always give the same digest.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }

    /// Parses a manifest and checks that it is an image manifest.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let manifest: Self = serde_json::from_slice(bytes)
            .map_err(|err| format!("the manifest is not a valid OCI image manifest: {err}"))?;
        if manifest.schema_version != 2 {
            return Err(format!("unsupported manifest schemaVersion {}: expected 2", manifest.schema_version));
        }
        match &manifest.media_type {
            Some(media_type) if media_type != MANIFEST_MEDIA_TYPE => {
                return Err(format!("unsupported manifest mediaType {media_type:?}: expected {MANIFEST_MEDIA_TYPE:?}"));
            }
            _ => {}
        }
        Ok(manifest)
    }
}

impl Descriptor {
    /// Returns the title annotation, if any.
    pub fn title(&self) -> Option<&str> {
        self.annotations.get(TITLE_ANNOTATION).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oras_go_manifest() {
        let bytes = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "artifactType":"application/vnd.ctfer-io.scenario",
            "config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2,"data":"e30="},
            "layers":[{"mediaType":"application/vnd.ctfer-io.file","digest":"sha256:aa","size":3,"annotations":{"org.opencontainers.image.title":"sub/a.txt"}}],
            "annotations":{"org.opencontainers.image.created":"2025-01-01T00:00:00Z"}}"#;
        let manifest = Manifest::parse(bytes).unwrap();
        assert_eq!(manifest.layers.len(), 1);
        assert_eq!(manifest.layers[0].title(), Some("sub/a.txt"));
        assert_eq!(manifest.artifact_type.as_deref(), Some(ARTIFACT_TYPE));
    }

    #[test]
    fn rejects_image_index() {
        let bytes = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","config":{"mediaType":"x","digest":"sha256:aa","size":0},"manifests":[]}"#;
        let reason = Manifest::parse(bytes).unwrap_err();
        assert!(reason.contains("unsupported manifest mediaType"), "{reason}");
    }

    #[test]
    fn built_manifest_round_trips() {
        let layer = Descriptor {
            media_type: FILE_MEDIA_TYPE.to_owned(),
            digest: "sha256:aa".to_owned(),
            size: 1,
            annotations: BTreeMap::from([(TITLE_ANNOTATION.to_owned(), "main".to_owned())]),
        };
        let bytes = Manifest::scenario(vec![layer.clone()]).to_bytes();
        let parsed = Manifest::parse(&bytes).unwrap();
        assert_eq!(parsed.layers, vec![layer]);
        assert_eq!(parsed.config.digest, super::super::reference::Digest::of(b"{}").to_string());
        assert!(parsed.annotations.is_empty());
    }
}
