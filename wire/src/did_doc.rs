//! The parts of a DID document a relay needs, per <https://atproto.com/specs/did#did-documents>: the
//! `#atproto` signing key, the `#atproto_pds` service endpoint, and the handle from `alsoKnownAs`.
//!
//! Both key formats are read: `Multikey` (`publicKeyMultibase` = multicodec-prefixed compressed key)
//! and the legacy `EcdsaSecp256k1VerificationKey2019` / `EcdsaSecp256r1VerificationKey2019` (bare
//! SEC1 key, compressed or uncompressed), as the local PLC directory still serves.

use serde::Deserialize;

use crate::crypto::{KeyError, KeyType, PublicKey};
use crate::syntax::{Did, Hostname};

/// Why a DID document is unusable for this DID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DidDocError {
    /// Not JSON of the DID-document shape.
    #[error("DID document does not parse: {0}")]
    Json(String),
    /// The document's `id` is not the DID that was resolved.
    #[error("DID document id {found} does not match {want}")]
    WrongId {
        /// The DID that was resolved.
        want: String,
        /// The `id` in the document.
        found: String,
    },
    /// No `#atproto` verification method.
    #[error("no #atproto verification method")]
    NoSigningKey,
    /// The `#atproto` key is of an unknown type or does not parse.
    #[error("bad #atproto key: {0}")]
    Key(#[from] KeyError),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDoc {
    id: String,
    #[serde(default)]
    also_known_as: Vec<String>,
    #[serde(default)]
    verification_method: Vec<RawMethod>,
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMethod {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    public_key_multibase: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawService {
    id: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    service_endpoint: serde_json::Value,
}

/// What the relay uses from a DID document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtprotoIdentity {
    /// The DID the document describes.
    pub did: Did,
    /// The `#atproto` signing key (the first such verification method).
    pub signing_key: PublicKey,
    /// The `#atproto_pds` service endpoint URL (the first such service), if any.
    pub pds_endpoint: Option<String>,
    /// The handle from the first `at://` entry of `alsoKnownAs`, unverified.
    pub handle: Option<String>,
}

fn matches_fragment(id: &str, did: &str, fragment: &str) -> bool {
    id == fragment || id.strip_prefix(did).is_some_and(|rest| rest == fragment)
}

impl AtprotoIdentity {
    /// Parses a DID document (JSON bytes) resolved for `did`.
    ///
    /// # Errors
    /// [`DidDocError`] when the JSON does not parse, describes another DID, or has no usable
    /// `#atproto` key.
    pub fn from_json(did: &Did, json: &[u8]) -> Result<Self, DidDocError> {
        let doc: RawDoc = serde_json::from_slice(json).map_err(|e| DidDocError::Json(e.to_string()))?;
        if doc.id != did.as_str() {
            return Err(DidDocError::WrongId { want: did.to_string(), found: doc.id });
        }
        let method = doc
            .verification_method
            .iter()
            .find(|m| matches_fragment(&m.id, did.as_str(), "#atproto"))
            .ok_or(DidDocError::NoSigningKey)?;
        let mb = method.public_key_multibase.as_deref().ok_or(DidDocError::NoSigningKey)?;
        let signing_key = match method.kind.as_str() {
            "Multikey" => PublicKey::from_multikey(mb)?,
            "EcdsaSecp256k1VerificationKey2019" => PublicKey::from_legacy_multibase(KeyType::K256, mb)?,
            "EcdsaSecp256r1VerificationKey2019" => PublicKey::from_legacy_multibase(KeyType::P256, mb)?,
            other => {
                return Err(KeyError::Encoding(format!("verification method type {other}")).into());
            }
        };
        let pds_endpoint = doc
            .service
            .iter()
            .find(|s| matches_fragment(&s.id, did.as_str(), "#atproto_pds") && s.kind == "AtprotoPersonalDataServer")
            .and_then(|s| s.service_endpoint.as_str().map(str::to_owned));
        let handle = doc.also_known_as.iter().find_map(|a| a.strip_prefix("at://").map(str::to_owned));
        Ok(Self { did: did.clone(), signing_key, pds_endpoint, handle })
    }

    /// The host of the PDS endpoint as a [`Hostname`] (`host` or `host:port`, default ports dropped),
    /// or `None` when there is no endpoint or it is not an `http(s)://hostname` URL.
    pub fn pds_host(&self) -> Option<Hostname> {
        endpoint_host(self.pds_endpoint.as_deref()?)
    }
}

/// Extracts the [`Hostname`] of an `http://` or `https://` URL, dropping the scheme's default port.
pub fn endpoint_host(url: &str) -> Option<Hostname> {
    let (rest, default_port) = if let Some(r) = url.strip_prefix("https://") {
        (r, ":443")
    } else if let Some(r) = url.strip_prefix("http://") {
        (r, ":80")
    } else {
        return None;
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.strip_suffix(default_port).unwrap_or(authority);
    Hostname::parse_lenient(authority).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_hosts() {
        let h = |s| endpoint_host(s).map(|h| h.to_string());
        assert_eq!(h("http://localhost:2583"), Some("localhost:2583".into()));
        assert_eq!(h("https://PDS.example.com:443/"), Some("pds.example.com".into()));
        assert_eq!(h("https://pds.example.com:8443"), Some("pds.example.com:8443".into()));
        assert_eq!(h("ftp://x.com"), None);
        assert_eq!(h("https://1.2.3.4"), None);
    }

    #[test]
    fn multikey_document() {
        let did = Did::new("did:plc:abc").unwrap();
        let json = serde_json::json!({
            "id": "did:plc:abc",
            "alsoKnownAs": ["at://alice.test"],
            "verificationMethod": [{
                "id": "did:plc:abc#atproto", "type": "Multikey", "controller": "did:plc:abc",
                "publicKeyMultibase": "zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme"
            }],
            "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
                         "serviceEndpoint": "https://pds.example.com"}]
        });
        let id = AtprotoIdentity::from_json(&did, json.to_string().as_bytes()).unwrap();
        assert_eq!(id.handle.as_deref(), Some("alice.test"));
        assert_eq!(id.pds_host().unwrap().as_str(), "pds.example.com");
        let other = Did::new("did:plc:xyz").unwrap();
        assert!(matches!(
            AtprotoIdentity::from_json(&other, json.to_string().as_bytes()),
            Err(DidDocError::WrongId { .. })
        ));
    }
}
