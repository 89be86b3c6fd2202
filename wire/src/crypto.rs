//! Public keys and commit signatures per <https://atproto.com/specs/cryptography>.
//!
//! Two curves: secp256k1 ("k256", via libsecp256k1) and NIST P-256 ("p256", via aws-lc-rs).
//! Signatures are the 64-byte compact `r ‖ s` form over the sha2-256 of the message; only low-S
//! signatures are valid (DER-encoded and high-S signatures are rejected). Keys come as `did:key`
//! Multikey strings (`zQ3s…` for k256, `zDn…` for p256) or, in legacy DID documents, as bare
//! multibase public keys under `EcdsaSecp256k1VerificationKey2019` / `EcdsaSecp256r1VerificationKey2019`.

use std::fmt;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use sha2::{Digest, Sha256};

/// Multicodec varint prefix of a compressed secp256k1 public key (`secp256k1-pub`, 0xe7).
const MULTICODEC_K256: [u8; 2] = [0xe7, 0x01];
/// Multicodec varint prefix of a compressed P-256 public key (`p256-pub`, 0x1200).
const MULTICODEC_P256: [u8; 2] = [0x80, 0x24];

/// Half the order of P-256, big-endian: a signature's `s` must not exceed it (low-S rule).
const P256_HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xde, 0x73, 0x7d,
    0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

/// The curve of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// secp256k1 (`ES256K`).
    K256,
    /// NIST P-256 (`ES256`).
    P256,
}

/// A key or signature problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not a `did:key:z…` string, not base58btc multibase, or an unknown multicodec prefix.
    #[error("unsupported key encoding: {0}")]
    Encoding(String),
    /// The bytes are not a point on the curve.
    #[error("invalid {0:?} public key")]
    InvalidPoint(KeyType),
}

/// Why a signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Not 64 bytes of `r ‖ s` (e.g. DER-encoded).
    #[error("signature is not 64-byte compact r||s")]
    Format,
    /// `s` is above half the curve order (malleable form; invalid in atproto).
    #[error("high-S signature")]
    HighS,
    /// The signature does not match the key and message.
    #[error("signature does not verify")]
    Mismatch,
}

/// A parsed public key.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// A secp256k1 key.
    K256(secp256k1::PublicKey),
    /// A P-256 key as its SEC1 compressed point (33 bytes), checked on the curve at parse time.
    P256([u8; 33]),
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_did_key())
    }
}

impl PublicKey {
    /// Parses SEC1 bytes (33-byte compressed or 65-byte uncompressed) of the given curve.
    ///
    /// # Errors
    /// [`KeyError::InvalidPoint`] when the bytes are not a point on the curve.
    pub fn from_sec1(kind: KeyType, bytes: &[u8]) -> Result<Self, KeyError> {
        match kind {
            KeyType::K256 => {
                secp256k1::PublicKey::from_slice(bytes).map(PublicKey::K256).map_err(|_| KeyError::InvalidPoint(kind))
            }
            KeyType::P256 => {
                let compressed = compress_p256(bytes).ok_or(KeyError::InvalidPoint(kind))?;
                // Parse once here so a key that is not on the curve fails at resolution time.
                if aws_lc_rs::signature::ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, compressed).is_err() {
                    return Err(KeyError::InvalidPoint(kind));
                }
                Ok(PublicKey::P256(compressed))
            }
        }
    }

    /// Parses a Multikey value (`z` + base58btc of multicodec prefix ‖ compressed key), as found in a
    /// `did:key` after the `did:key:` prefix and in `Multikey` verification methods.
    ///
    /// # Errors
    /// [`KeyError::Encoding`] or [`KeyError::InvalidPoint`].
    pub fn from_multikey(s: &str) -> Result<Self, KeyError> {
        let bytes = decode_base58btc(s)?;
        if let Some(rest) = bytes.strip_prefix(&MULTICODEC_K256) {
            Self::from_sec1(KeyType::K256, rest)
        } else if let Some(rest) = bytes.strip_prefix(&MULTICODEC_P256) {
            Self::from_sec1(KeyType::P256, rest)
        } else {
            Err(KeyError::Encoding("unknown multicodec prefix".into()))
        }
    }

    /// Parses a `did:key:z…` string.
    ///
    /// # Errors
    /// [`KeyError::Encoding`] or [`KeyError::InvalidPoint`].
    pub fn from_did_key(s: &str) -> Result<Self, KeyError> {
        let mk = s.strip_prefix("did:key:").ok_or_else(|| KeyError::Encoding("missing did:key: prefix".into()))?;
        Self::from_multikey(mk)
    }

    /// Parses a legacy `publicKeyMultibase` (base58btc of bare SEC1 bytes, no multicodec prefix) of a
    /// verification method typed `EcdsaSecp256k1VerificationKey2019` or
    /// `EcdsaSecp256r1VerificationKey2019`.
    ///
    /// # Errors
    /// [`KeyError::Encoding`] or [`KeyError::InvalidPoint`].
    pub fn from_legacy_multibase(kind: KeyType, s: &str) -> Result<Self, KeyError> {
        Self::from_sec1(kind, &decode_base58btc(s)?)
    }

    /// The key's curve.
    pub fn key_type(&self) -> KeyType {
        match self {
            PublicKey::K256(_) => KeyType::K256,
            PublicKey::P256(_) => KeyType::P256,
        }
    }

    /// The 33-byte SEC1 compressed point.
    pub fn to_compressed(&self) -> [u8; 33] {
        match self {
            PublicKey::K256(k) => k.serialize(),
            PublicKey::P256(b) => *b,
        }
    }

    /// The `did:key:z…` form.
    pub fn to_did_key(&self) -> String {
        let prefix = match self {
            PublicKey::K256(_) => MULTICODEC_K256,
            PublicKey::P256(_) => MULTICODEC_P256,
        };
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(&self.to_compressed());
        format!("did:key:{}", multibase::encode(multibase::Base::Base58Btc, bytes))
    }

    /// Verifies a compact 64-byte low-S signature over `sha256(msg)`.
    ///
    /// # Errors
    /// [`SignatureError::Format`] for anything but 64 bytes, [`SignatureError::HighS`] for a
    /// malleable signature, [`SignatureError::Mismatch`] when it does not verify.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), SignatureError> {
        if sig.len() != 64 {
            return Err(SignatureError::Format);
        }
        match self {
            PublicKey::K256(key) => {
                let mut signature =
                    secp256k1::ecdsa::Signature::from_compact(sig).map_err(|_| SignatureError::Format)?;
                let mut normalized = signature;
                normalized.normalize_s();
                if normalized != signature {
                    return Err(SignatureError::HighS);
                }
                signature = normalized;
                let digest: [u8; 32] = Sha256::digest(msg).into();
                let message = secp256k1::Message::from_digest(digest);
                secp256k1::SECP256K1.verify_ecdsa(&message, &signature, key).map_err(|_| SignatureError::Mismatch)
            }
            PublicKey::P256(key) => {
                let s = sig.get(32..).ok_or(SignatureError::Format)?;
                if s > &P256_HALF_ORDER[..] {
                    return Err(SignatureError::HighS);
                }
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key)
                    .verify(msg, sig)
                    .map_err(|_| SignatureError::Mismatch)
            }
        }
    }
}

/// Compresses a SEC1 P-256 point without checking it is on the curve (the caller checks).
fn compress_p256(bytes: &[u8]) -> Option<[u8; 33]> {
    let mut out = [0u8; 33];
    match bytes.len() {
        33 if matches!(bytes.first(), Some(2 | 3)) => out.copy_from_slice(bytes),
        65 if bytes.first() == Some(&4) => {
            let y_last = *bytes.get(64)?;
            out[0] = 2 | (y_last & 1);
            out[1..].copy_from_slice(bytes.get(1..33)?);
        }
        _ => return None,
    }
    Some(out)
}

fn decode_base58btc(s: &str) -> Result<Vec<u8>, KeyError> {
    match multibase::decode(s) {
        Ok((multibase::Base::Base58Btc, bytes)) => Ok(bytes),
        Ok((base, _)) => Err(KeyError::Encoding(format!("multibase {base:?}, want base58btc"))),
        Err(e) => Err(KeyError::Encoding(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_key_round_trip() {
        for k in [
            "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme",
            "did:key:zDnaembgSGUhZULN2Caob4HLJPaxBh92N7rtH21TErzqf8HQo",
        ] {
            assert_eq!(PublicKey::from_did_key(k).unwrap().to_did_key(), k);
        }
        assert!(PublicKey::from_did_key("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK").is_err());
        assert!(PublicKey::from_did_key("zQ3sh").is_err());
    }
}
