//! A simulated PLC directory: `GET /{did}` answers the account's DID document (Multikey form, or the
//! legacy `EcdsaSecp256k1VerificationKey2019` form the reference PLC serves), 404 otherwise.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wire::crypto::PublicKey;

/// DID → document JSON.
pub type Documents = Arc<HashMap<String, String>>;

/// A DID document naming `pds` with `key`; `legacy` selects the legacy verification-method form.
pub fn did_doc(did: &str, key: &PublicKey, pds: &str, legacy: bool) -> serde_json::Value {
    let (kind, multibase) = if legacy {
        let kind = match key.key_type() {
            wire::crypto::KeyType::K256 => "EcdsaSecp256k1VerificationKey2019",
            wire::crypto::KeyType::P256 => "EcdsaSecp256r1VerificationKey2019",
        };
        (kind, format!("z{}", bs58(&key.to_compressed())))
    } else {
        ("Multikey", key.to_did_key().trim_start_matches("did:key:").to_owned())
    };
    serde_json::json!({
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": did,
        "alsoKnownAs": [format!("at://{}.bench.test", did.rsplit(':').next().unwrap_or("user"))],
        "verificationMethod": [{"id": format!("{did}#atproto"), "type": kind, "controller": did, "publicKeyMultibase": multibase}],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds}],
    })
}

/// Base58 (bitcoin alphabet), for legacy multibase keys.
fn bs58(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut digits: Vec<u8> = Vec::new();
    for &b in bytes {
        let mut carry = u32::from(b);
        for d in digits.iter_mut() {
            carry += u32::from(*d) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    std::iter::repeat_n('1', zeros).chain(digits.iter().rev().map(|d| char::from(ALPHABET[usize::from(*d)]))).collect()
}

/// Serves `docs` on `listener` until the runtime stops, each answer `delay` after its request.
pub async fn serve(listener: TcpListener, docs: Documents, delay: std::time::Duration) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let docs = Arc::clone(&docs);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < buf.len() {
                match stream.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(m) => n += m,
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/');
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let resp = match docs.get(path) {
                Some(body) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ),
                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
            };
            let _ = stream.write_all(resp.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_documents_parse_with_the_same_key() {
        let key = wire::testkit::SigningKey::k256(3).public();
        let did = wire::Did::new("did:plc:legacy").unwrap();
        for legacy in [false, true] {
            let doc = did_doc(did.as_str(), &key, "http://localhost:1", legacy);
            let id = wire::did_doc::AtprotoIdentity::from_json(&did, doc.to_string().as_bytes()).unwrap();
            assert_eq!(id.signing_key, key);
        }
        assert_eq!(bs58(&[0, 0, 1]), "112");
    }
}
