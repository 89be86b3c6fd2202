//! DAG-CBOR helpers on top of `serde_ipld_dagcbor`: typed decode/encode and the byte length of one
//! encoded item (an event-stream frame is two concatenated items, header then body).
//!
//! DAG-CBOR per <https://atproto.com/specs/data-model#dag-cbor>: definite lengths only, canonical map
//! key order (length first, then bytewise), tag 42 for CID links.

use serde::{Serialize, de::DeserializeOwned};

/// Maximum nesting of arrays/maps/tags accepted by [`item_len`]; deeper input is rejected. It is the
/// limit of the DAG-CBOR decoder (`cbor4ii`, 256), so anything that decodes has a length.
pub const MAX_DEPTH: usize = 256;

/// A DAG-CBOR decode or encode error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    /// The input ended inside an item.
    #[error("truncated CBOR at offset {offset}")]
    Truncated {
        /// Byte offset where more input was needed.
        offset: usize,
    },
    /// An encoding DAG-CBOR forbids (indefinite length, reserved additional info, nesting too deep).
    #[error("invalid DAG-CBOR at offset {offset}")]
    Invalid {
        /// Byte offset of the offending head.
        offset: usize,
    },
    /// The bytes are well-formed but do not match the expected shape.
    #[error("DAG-CBOR decode: {0}")]
    Decode(String),
    /// Serialization failed (only for values that cannot be DAG-CBOR, e.g. floats NaN).
    #[error("DAG-CBOR encode: {0}")]
    Encode(String),
}

/// Decodes one DAG-CBOR value of type `T` that must span all of `bytes`.
///
/// # Errors
/// [`CborError::Decode`] when the bytes are not DAG-CBOR of shape `T` or trailing bytes remain.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CborError> {
    serde_ipld_dagcbor::from_slice(bytes).map_err(|e| CborError::Decode(e.to_string()))
}

/// Encodes `value` as canonical DAG-CBOR (map keys sorted length-first).
///
/// # Errors
/// [`CborError::Encode`] when `value` holds something DAG-CBOR cannot represent.
pub fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, CborError> {
    serde_ipld_dagcbor::to_vec(value).map_err(|e| CborError::Encode(e.to_string()))
}

/// Reads the head of a CBOR item at `pos`: (major type, argument, head length).
fn head(buf: &[u8], pos: usize) -> Result<(u8, u64, usize), CborError> {
    let first = *buf.get(pos).ok_or(CborError::Truncated { offset: pos })?;
    let major = first >> 5;
    let info = first & 0x1f;
    let (n, extra) = match info {
        0..=23 => (u64::from(info), 0),
        24 => (1, 1),
        25 => (2, 2),
        26 => (4, 4),
        27 => (8, 8),
        _ => return Err(CborError::Invalid { offset: pos }),
    };
    if extra == 0 {
        return Ok((major, n, 1));
    }
    let bytes = buf.get(pos + 1..pos + 1 + extra).ok_or(CborError::Truncated { offset: pos + 1 })?;
    let arg = bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    Ok((major, arg, 1 + extra))
}

/// The value of text key `key` of the CBOR map at the start of `buf`, when that value is a text string;
/// `None` when `buf` does not start with a map, the key is absent, or its value is not text. Walks the
/// map skipping values by their length ([`item_len`]), without decoding them, so finding the `did`
/// of a stored frame costs a few bytes' work, not a decode of its blocks.
pub fn map_text<'a>(buf: &'a [u8], key: &str) -> Option<&'a str> {
    let value = map_value(buf, key)?;
    let (vmajor, vlen, vhl) = head(value, 0).ok()?;
    if vmajor != 3 {
        return None;
    }
    let v = value.get(vhl..vhl.checked_add(usize::try_from(vlen).ok()?)?)?;
    std::str::from_utf8(v).ok()
}

/// The value of text key `key` of the CBOR map at the start of `buf`, when that value is an unsigned
/// integer; `None` otherwise (see [`map_text`]).
pub fn map_uint(buf: &[u8], key: &str) -> Option<u64> {
    let (major, n, _) = head(map_value(buf, key)?, 0).ok()?;
    (major == 0).then_some(n)
}

/// The bytes from the value of text key `key` of the map at the start of `buf` to the end of `buf`.
fn map_value<'a>(buf: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let (major, entries, mut pos) = head(buf, 0).ok()?;
    if major != 5 {
        return None;
    }
    for _ in 0..entries {
        let (kmajor, klen, khl) = head(buf, pos).ok()?;
        if kmajor != 3 {
            return None;
        }
        let kstart = pos.checked_add(khl)?;
        let kend = kstart.checked_add(usize::try_from(klen).ok()?)?;
        let k = buf.get(kstart..kend)?;
        pos = kend;
        let rest = buf.get(pos..)?;
        if k == key.as_bytes() {
            return Some(rest);
        }
        pos = pos.checked_add(item_len(rest).ok()?)?;
    }
    None
}

/// Whether `buf` starts with the head of a CBOR map (major type 5).
pub fn is_map(buf: &[u8]) -> bool {
    buf.first().is_some_and(|b| b >> 5 == 5)
}

/// Returns the byte length of the single CBOR item that starts at `buf[0]`.
///
/// Used to split an event-stream frame into its header and body. Only definite-length items are
/// accepted (DAG-CBOR forbids the others); nesting deeper than [`MAX_DEPTH`] is rejected.
///
/// # Errors
/// [`CborError::Truncated`] when `buf` ends inside the item, [`CborError::Invalid`] for indefinite
/// lengths, reserved additional-info values or excessive nesting.
pub fn item_len(buf: &[u8]) -> Result<usize, CborError> {
    // Iterative walk: `pending` counts the items still to read at each open level.
    let mut pos = 0usize;
    let mut pending: Vec<u64> = vec![1];
    while let Some(top) = pending.last_mut() {
        if *top == 0 {
            pending.pop();
            continue;
        }
        *top -= 1;
        let (major, arg, hl) = head(buf, pos)?;
        pos += hl;
        match major {
            0 | 1 | 7 => {}
            2 | 3 => {
                let len = usize::try_from(arg).map_err(|_| CborError::Invalid { offset: pos })?;
                let end = pos.checked_add(len).ok_or(CborError::Invalid { offset: pos })?;
                if end > buf.len() {
                    return Err(CborError::Truncated { offset: buf.len() });
                }
                pos = end;
            }
            4 | 5 => {
                if pending.len() >= MAX_DEPTH {
                    return Err(CborError::Invalid { offset: pos - hl });
                }
                let items = if major == 5 { arg.checked_mul(2) } else { Some(arg) };
                let items = items.ok_or(CborError::Invalid { offset: pos - hl })?;
                // Every item needs at least one byte: reject counts the buffer cannot hold.
                if items > (buf.len() - pos) as u64 {
                    return Err(CborError::Truncated { offset: buf.len() });
                }
                pending.push(items);
            }
            6 => {
                if pending.len() >= MAX_DEPTH {
                    return Err(CborError::Invalid { offset: pos - hl });
                }
                pending.push(1);
            }
            _ => return Err(CborError::Invalid { offset: pos - hl }),
        }
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_len_of_nested_values() {
        let v = to_vec(&serde_json::json!({"a": [1, 2, {"b": "xyz"}], "c": null})).unwrap();
        let mut buf = v.clone();
        buf.extend_from_slice(&[0xa0, 0x01]);
        assert_eq!(item_len(&buf).unwrap(), v.len());
    }

    #[test]
    fn item_len_rejects_bad_input() {
        assert!(matches!(item_len(&[]), Err(CborError::Truncated { .. })));
        assert!(matches!(item_len(&[0x9f]), Err(CborError::Invalid { .. }))); // indefinite array
        assert!(matches!(item_len(&[0x5a, 0xff, 0xff, 0xff, 0xff]), Err(CborError::Truncated { .. })));
        assert!(matches!(
            item_len(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(CborError::Truncated { .. })
        ));
        let deep = vec![0x81u8; 300];
        assert!(matches!(item_len(&deep), Err(CborError::Invalid { .. })));
    }

    #[test]
    fn map_text_finds_a_text_value_without_decoding_the_rest() {
        let v = to_vec(&serde_json::json!({"blocks": [1, 2, {"x": "y"}], "did": "did:plc:abc", "n": 5})).unwrap();
        assert_eq!(map_text(&v, "did"), Some("did:plc:abc"));
        assert_eq!(map_text(&v, "n"), None, "not text");
        assert_eq!(map_text(&v, "missing"), None);
        assert_eq!(map_text(&to_vec(&serde_json::json!([1])).unwrap(), "did"), None);
        for cut in 0..v.len() {
            let _ = map_text(&v[..cut], "did");
        }
    }

    #[test]
    fn uint_heads_are_shortest() {
        for (v, want) in [(0u64, 1usize), (23, 1), (24, 2), (255, 2), (256, 3), (65536, 5), (1 << 32, 9)] {
            let out = to_vec(&v).unwrap();
            assert_eq!(out.len(), want, "{v}");
            assert_eq!(item_len(&out).unwrap(), want);
        }
    }
}
