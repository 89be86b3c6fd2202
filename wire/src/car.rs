//! CAR v1 reader over an in-memory slice (the `blocks` field of `#commit` and `#sync`), with every
//! block's CID checked against its bytes.
//!
//! Format per <https://ipld.io/specs/transport/car/carv1/> and
//! <https://atproto.com/specs/repository#car-file-serialization>: a varint-length-prefixed DAG-CBOR
//! header `{version: 1, roots: [cid]}`, then sections of `varint(len) ‖ CID ‖ block bytes`.
//! Accepted CIDs: version 1, sha2-256 (32-byte digest), codec dag-cbor (0x71) or raw (0x55).

use cid::Cid;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::cbor;

/// Multicodec of DAG-CBOR blocks.
pub const CODEC_DAG_CBOR: u64 = 0x71;
/// Multicodec of raw blocks (blobs).
pub const CODEC_RAW: u64 = 0x55;
/// Multihash code of sha2-256.
pub const HASH_SHA2_256: u64 = 0x12;

/// Why a CAR slice was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CarError {
    /// The input ended inside a varint, header or section.
    #[error("truncated CAR at offset {offset}")]
    Truncated {
        /// Byte offset where more input was needed.
        offset: usize,
    },
    /// A varint longer than 9 bytes or not minimal.
    #[error("bad varint at offset {offset}")]
    Varint {
        /// Byte offset of the varint.
        offset: usize,
    },
    /// The header is not `{version: 1, roots: [...]}`.
    #[error("bad CAR header: {0}")]
    Header(String),
    /// A section's CID does not parse.
    #[error("bad CID in section at offset {offset}")]
    Cid {
        /// Byte offset of the section.
        offset: usize,
    },
    /// A CID with a version, codec or hash this relay does not accept.
    #[error("unsupported CID {cid} at offset {offset}")]
    UnsupportedCid {
        /// The CID as text.
        cid: String,
        /// Byte offset of the section.
        offset: usize,
    },
    /// A block whose sha2-256 does not match its CID.
    #[error("block {cid} does not hash to its CID")]
    HashMismatch {
        /// The claimed CID as text.
        cid: String,
    },
}

#[derive(Deserialize)]
struct CarHeader {
    version: u64,
    roots: Vec<Cid>,
}

/// A parsed, verified CAR slice borrowing the input bytes.
#[derive(Debug, Clone)]
pub struct Car<'a> {
    /// The header's roots (for atproto: exactly the commit CID).
    pub roots: Vec<Cid>,
    blocks: Vec<(Cid, &'a [u8])>,
}

impl<'a> Car<'a> {
    /// The bytes of the block with CID `cid`, if present.
    pub fn get(&self, cid: &Cid) -> Option<&'a [u8]> {
        self.blocks.iter().find(|(c, _)| c == cid).map(|(_, b)| *b)
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether the CAR has no blocks.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Iterates over (CID, bytes) in file order.
    pub fn blocks(&self) -> impl Iterator<Item = (&Cid, &'a [u8])> {
        self.blocks.iter().map(|(c, b)| (c, *b))
    }
}

/// Reads an unsigned LEB128 varint (at most 9 bytes, minimal) at `pos`; returns (value, length).
///
/// # Errors
/// [`CarError::Truncated`] or [`CarError::Varint`].
pub fn read_varint(buf: &[u8], pos: usize) -> Result<(u64, usize), CarError> {
    let mut v = 0u64;
    for i in 0..9 {
        let b = *buf.get(pos + i).ok_or(CarError::Truncated { offset: pos + i })?;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return Err(CarError::Varint { offset: pos });
            }
            return Ok((v, i + 1));
        }
    }
    Err(CarError::Varint { offset: pos })
}

/// Hashes `data` into a CIDv1 with sha2-256 and the given codec.
pub fn cid_for(codec: u64, data: &[u8]) -> Cid {
    let digest = Sha256::digest(data);
    // A 32-byte digest always fits the 64-byte multihash.
    let mh = cid::multihash::Multihash::<64>::wrap(HASH_SHA2_256, &digest).unwrap_or_default();
    Cid::new_v1(codec, mh)
}

fn section(buf: &[u8], pos: usize) -> Result<(&[u8], usize), CarError> {
    let (len, vl) = read_varint(buf, pos)?;
    let start = pos + vl;
    let len = usize::try_from(len).map_err(|_| CarError::Truncated { offset: start })?;
    let end = start.checked_add(len).ok_or(CarError::Truncated { offset: start })?;
    let bytes = buf.get(start..end).ok_or(CarError::Truncated { offset: buf.len() })?;
    Ok((bytes, end))
}

/// Parses a CAR v1 slice and verifies every block against its CID.
///
/// # Errors
/// The [`CarError`] variant for the first problem found.
pub fn read_car(buf: &[u8]) -> Result<Car<'_>, CarError> {
    let (header_bytes, mut pos) = section(buf, 0)?;
    let header: CarHeader = cbor::from_slice(header_bytes).map_err(|e| CarError::Header(e.to_string()))?;
    if header.version != 1 {
        return Err(CarError::Header(format!("version {}", header.version)));
    }
    let mut blocks = Vec::new();
    while pos < buf.len() {
        let offset = pos;
        let (sec, next) = section(buf, pos)?;
        let mut cursor = std::io::Cursor::new(sec);
        let cid = Cid::read_bytes(&mut cursor).map_err(|_| CarError::Cid { offset })?;
        let data = sec.get(cursor.position() as usize..).ok_or(CarError::Cid { offset })?;
        let mh = cid.hash();
        let supported = cid.version() == cid::Version::V1
            && (cid.codec() == CODEC_DAG_CBOR || cid.codec() == CODEC_RAW)
            && mh.code() == HASH_SHA2_256
            && mh.size() == 32;
        if !supported {
            return Err(CarError::UnsupportedCid { cid: cid.to_string(), offset });
        }
        if Sha256::digest(data).as_slice() != mh.digest() {
            return Err(CarError::HashMismatch { cid: cid.to_string() });
        }
        blocks.push((cid, data));
        pos = next;
    }
    Ok(Car { roots: header.roots, blocks })
}

/// Writes a CAR v1 slice with one root and the given blocks (CIDs computed as DAG-CBOR unless the
/// caller passes them). Used by tests and the load generator.
///
/// # Errors
/// [`crate::cbor::CborError`] only if the header cannot be encoded (not reachable).
pub fn write_car(root: &Cid, blocks: &[(Cid, &[u8])]) -> Result<Vec<u8>, crate::cbor::CborError> {
    #[derive(serde::Serialize)]
    struct H<'a> {
        version: u64,
        roots: &'a [Cid],
    }
    let header = cbor::to_vec(&H { version: 1, roots: std::slice::from_ref(root) })?;
    let mut out = Vec::new();
    write_varint(&mut out, header.len() as u64);
    out.extend_from_slice(&header);
    for (cid, data) in blocks {
        let cb = cid.to_bytes();
        write_varint(&mut out, (cb.len() + data.len()) as u64);
        out.extend_from_slice(&cb);
        out.extend_from_slice(data);
    }
    Ok(out)
}

/// Appends an unsigned LEB128 varint.
pub fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let data = cbor::to_vec(&serde_json::json!({"hello": "world"})).unwrap();
        let cid = cid_for(CODEC_DAG_CBOR, &data);
        let car = write_car(&cid, &[(cid, &data)]).unwrap();
        let parsed = read_car(&car).unwrap();
        assert_eq!(parsed.roots, vec![cid]);
        assert_eq!(parsed.get(&cid), Some(&data[..]));

        let mut bad = car.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(read_car(&bad), Err(CarError::HashMismatch { .. })));
        for cut in 0..car.len() {
            // Every prefix either parses (a shorter but complete CAR) or is an error; never a panic.
            let _ = read_car(&car[..cut]);
        }
        assert!(read_car(&car[..car.len() - 1]).is_err());
    }

    #[test]
    fn varints() {
        for v in [0u64, 1, 127, 128, 300, 1 << 40] {
            let mut out = Vec::new();
            write_varint(&mut out, v);
            assert_eq!(read_varint(&out, 0).unwrap(), (v, out.len()));
        }
        assert!(matches!(read_varint(&[0x80, 0x00], 0), Err(CarError::Varint { .. })));
        assert!(matches!(read_varint(&[0x80], 0), Err(CarError::Truncated { .. })));
    }
}
