//! Parsing of scenario references and digests.
//!
//! Registry references follow the rules of the ORAS Go library, which the
//! upstream chall-manager uses: `<registry>/<repository>[:<tag>][@<digest>]`
//! with a mandatory registry host (no implicit `docker.io`), a lower-case
//! repository, and `sha256` as the only accepted digest algorithm.
//! Local references are `local:sha256:<hex>`; they never contain a `/`,
//! which every registry reference does, so the two cannot be confused.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// Prefix of references to the local content store.
pub const LOCAL_PREFIX: &str = "local:";

/// Tag used when a registry reference has neither tag nor digest.
const DEFAULT_TAG: &str = "latest";

/// Reason a reference or digest is malformed, shown after the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

/// A parsed scenario reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScenarioRef {
    Registry(RegistryRef),
    /// A manifest in the local content store, addressed by its digest.
    Local(Digest),
}

/// A reference to a manifest in a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRef {
    /// Host, with an optional port.
    pub registry: String,
    pub repository: String,
    /// Tag as written; `None` when the reference has none.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// A SHA-256 content digest, the only algorithm scenarios use.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Digest {
    hex: String,
}

impl ScenarioRef {
    /// Parses a registry or local reference.
    pub fn parse(reference: &str) -> Result<Self, ParseError> {
        if let Some(rest) = reference.strip_prefix(LOCAL_PREFIX) {
            // `local:5000/repo` is a registry host named `local`: only a
            // reference without `/` belongs to the local store.
            if !rest.contains('/') {
                return Digest::parse(rest).map(Self::Local);
            }
        }
        RegistryRef::parse(reference).map(Self::Registry)
    }
}

impl RegistryRef {
    /// Parses `<registry>/<repository>[:<tag>][@<digest>]`.
    pub fn parse(reference: &str) -> Result<Self, ParseError> {
        let Some((registry, rest)) = reference.split_once('/') else {
            return Err(ParseError(
                "expected <registry>/<repository>[:<tag>][@<digest>], with a registry host such as registry.example.com:5000".into(),
            ));
        };
        check_registry(registry)?;

        let (name, digest) = match rest.split_once('@') {
            Some((name, digest)) => (name, Some(Digest::parse(digest)?)),
            None => (rest, None),
        };

        // A repository never contains `:`, so the last one starts the tag.
        let (repository, tag) = match name.rsplit_once(':') {
            Some((repository, tag)) => (repository, Some(tag)),
            None => (name, None),
        };
        check_repository(repository)?;
        if let Some(tag) = tag {
            check_tag(tag)?;
        }

        Ok(Self {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// Returns the tag to resolve: the explicit one, else `latest`.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }

    /// Builds the `oci-client` reference to resolve. A digest wins over a
    /// tag, because it names exactly one manifest.
    pub fn to_oci(&self) -> oci_client::Reference {
        match &self.digest {
            Some(digest) => self.pinned(digest),
            None => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                self.tag_or_latest().to_owned(),
            ),
        }
    }

    /// Builds the `oci-client` reference to the manifest with `digest` in
    /// this repository.
    pub fn pinned(&self, digest: &Digest) -> oci_client::Reference {
        oci_client::Reference::with_digest(self.registry.clone(), self.repository.clone(), digest.to_string())
    }
}

impl Digest {
    /// Parses `sha256:<64 lower-case hex digits>`.
    pub fn parse(digest: &str) -> Result<Self, ParseError> {
        let Some((algorithm, hex)) = digest.split_once(':') else {
            return Err(ParseError(format!("invalid digest {digest:?}: expected sha256:<64 hex digits>")));
        };
        if algorithm != "sha256" {
            return Err(ParseError(format!("unsupported digest algorithm {algorithm:?}: only sha256 is supported")));
        }
        let well_formed = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !well_formed {
            return Err(ParseError(format!("invalid digest {digest:?}: expected sha256:<64 lower-case hex digits>")));
        }
        Ok(Self { hex: hex.to_owned() })
    }

    /// Computes the digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self { hex: hex::encode(Sha256::digest(bytes)) }
    }

    /// Returns the hex part, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// Checks `host[:port]`, where host is a DNS name, an IPv4 address or a
/// bracketed IPv6 address.
fn check_registry(registry: &str) -> Result<(), ParseError> {
    let invalid = || ParseError(format!("invalid registry {registry:?}: expected a host with an optional :port"));

    let (host, port) = if let Some(bracketed) = registry.strip_prefix('[') {
        let (address, after) = bracketed.split_once(']').ok_or_else(invalid)?;
        let valid_address =
            !address.is_empty() && address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !valid_address {
            return Err(invalid());
        }
        match after {
            "" => ("ipv6", None),
            _ => ("ipv6", Some(after.strip_prefix(':').ok_or_else(invalid)?)),
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };

    let valid_host = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !host.starts_with(['.', '-'])
        && !host.ends_with(['.', '-']);
    let valid_port =
        port.is_none_or(|port| !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()));
    if valid_host && valid_port { Ok(()) } else { Err(invalid()) }
}

/// Checks a repository name as the OCI distribution specification defines
/// it: `/`-separated components of `[a-z0-9]+` joined by `.`, `_`, `__` or
/// runs of `-`.
fn check_repository(repository: &str) -> Result<(), ParseError> {
    let valid = !repository.is_empty() && repository.split('/').all(is_path_component);
    if valid {
        Ok(())
    } else {
        Err(ParseError(format!(
            "invalid repository {repository:?}: expected lower-case letters and digits, separated by '/', '.', '_', '__' or '-'"
        )))
    }
}

fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alphanumeric = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alphanumeric(bytes[0]) || !alphanumeric(bytes[bytes.len() - 1]) {
        return false;
    }

    // Walk the separators between alphanumeric runs.
    let mut index = 0;
    while index < bytes.len() {
        if alphanumeric(bytes[index]) {
            index += 1;
            continue;
        }
        let start = index;
        while index < bytes.len() && !alphanumeric(bytes[index]) {
            index += 1;
        }
        let separator = &component[start..index];
        let allowed = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !allowed {
            return false;
        }
    }
    true
}

/// Checks a tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), ParseError> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes[1..].iter().all(|&b| word(b) || b == b'.' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ParseError(format!(
            "invalid tag {tag:?}: expected at most 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn registry(reference: &str) -> RegistryRef {
        match ScenarioRef::parse(reference) {
            Ok(ScenarioRef::Registry(parsed)) => parsed,
            other => panic!("{reference}: expected a registry reference, got {other:?}"),
        }
    }

    fn rejects(reference: &str) -> String {
        match ScenarioRef::parse(reference) {
            Err(ParseError(reason)) => reason,
            Ok(parsed) => panic!("{reference}: expected an error, got {parsed:?}"),
        }
    }

    #[test]
    fn registry_reference_with_tag() {
        let parsed = registry("127.0.0.1:5000/ctf/web-1:v1.2");
        assert_eq!(parsed.registry, "127.0.0.1:5000");
        assert_eq!(parsed.repository, "ctf/web-1");
        assert_eq!(parsed.tag.as_deref(), Some("v1.2"));
        assert_eq!(parsed.digest, None);
        assert_eq!(parsed.to_oci().tag(), Some("v1.2"));
    }

    #[test]
    fn registry_reference_without_tag_uses_latest() {
        let parsed = registry("registry.example.com/scenario");
        assert_eq!(parsed.tag, None);
        assert_eq!(parsed.tag_or_latest(), "latest");
        assert_eq!(parsed.to_oci().tag(), Some("latest"));
        assert_eq!(parsed.to_oci().registry(), "registry.example.com");
    }

    #[test]
    fn digest_wins_over_tag() {
        let parsed = registry(&format!("localhost:5000/scenario:v1@sha256:{HEX}"));
        assert_eq!(parsed.tag.as_deref(), Some("v1"));
        let oci = parsed.to_oci();
        assert_eq!(oci.digest(), Some(format!("sha256:{HEX}").as_str()));
        assert_eq!(oci.tag(), None);
    }

    #[test]
    fn bracketed_ipv6_registry() {
        let parsed = registry("[::1]:5000/scenario:v1");
        assert_eq!(parsed.registry, "[::1]:5000");
        assert_eq!(parsed.repository, "scenario");
    }

    #[test]
    fn registry_host_named_local_is_not_local() {
        let parsed = registry("local:5000/scenario:v1");
        assert_eq!(parsed.registry, "local:5000");
    }

    #[test]
    fn local_reference() {
        let parsed = ScenarioRef::parse(&format!("local:sha256:{HEX}")).unwrap();
        assert_eq!(parsed, ScenarioRef::Local(Digest { hex: HEX.to_owned() }));
    }

    #[test]
    fn malformed_references() {
        let cases = [
            ("scenario:v1", "registry host"),
            ("", "registry host"),
            ("/scenario", "invalid registry"),
            ("registry.example.com:port/scenario", "invalid registry"),
            ("-bad.example.com/scenario", "invalid registry"),
            ("registry.example.com/", "invalid repository"),
            ("registry.example.com/Scenario", "invalid repository"),
            ("registry.example.com/a//b", "invalid repository"),
            ("registry.example.com/a.-b", "invalid repository"),
            ("registry.example.com/scenario:", "invalid tag"),
            ("registry.example.com/scenario:.v1", "invalid tag"),
            ("registry.example.com/scenario:v1@sha256:abc", "invalid digest"),
            ("local:sha256:xyz", "invalid digest"),
            ("local:", "invalid digest"),
        ];
        for (reference, expected) in cases {
            let reason = rejects(reference);
            assert!(reason.contains(expected), "{reference:?}: {reason:?} does not contain {expected:?}");
        }
    }

    #[test]
    fn tag_longer_than_128_is_rejected() {
        let reason = rejects(&format!("registry.example.com/scenario:{}", "a".repeat(129)));
        assert!(reason.contains("invalid tag"), "{reason}");
        registry(&format!("registry.example.com/scenario:{}", "a".repeat(128)));
    }

    #[test]
    fn repository_separators() {
        for good in ["a", "a.b", "a_b", "a__b", "a---b", "a/b-c/d.e"] {
            assert!(check_repository(good).is_ok(), "{good}");
        }
        for bad in ["a___b", "a._b", "_a", "a-", "a/-b"] {
            assert!(check_repository(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_sha256_digests() {
        let reason = Digest::parse(&format!("sha512:{HEX}{HEX}")).unwrap_err().0;
        assert!(reason.contains("only sha256"), "{reason}");
        assert!(Digest::parse(&format!("sha256:{}", HEX.to_uppercase())).is_err());
        assert!(Digest::parse(&format!("sha256:{}", &HEX[1..])).is_err());
    }

    #[test]
    fn digest_of_empty_json() {
        // The digest of `{}` is the one the OCI image specification gives for
        // its empty descriptor.
        assert_eq!(
            Digest::of(b"{}").to_string(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
}
