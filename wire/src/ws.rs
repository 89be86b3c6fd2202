//! Server side of the websocket protocol (RFC 6455): the handshake accept key, unmasked server frames
//! encoded once and written to every subscriber, and a parser for the masked frames subscribers send
//! (pings and closes).

use base64::Engine;
use sha1::{Digest, Sha1};

/// The GUID appended to `Sec-WebSocket-Key` (RFC 6455 §1.3).
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest control or data frame payload accepted from a firehose subscriber, in bytes. Firehose
/// subscribers only send control frames (at most 125 bytes); anything larger is a protocol error.
/// Endpoints that take messages (Jetstream's `options_update`) pass their own limit to
/// [`decode_client_frame_limited`].
pub const MAX_CLIENT_PAYLOAD: usize = 4096;

/// Frame opcodes (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// 0x0
    Continuation,
    /// 0x1
    Text,
    /// 0x2
    Binary,
    /// 0x8
    Close,
    /// 0x9
    Ping,
    /// 0xA
    Pong,
}

impl Opcode {
    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    fn from_bits(b: u8) -> Option<Self> {
        Some(match b {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }
}

/// A protocol violation by the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// Reserved bits or opcode, or a fragmented control frame.
    #[error("websocket protocol error")]
    Protocol,
    /// A client frame without the mask bit (RFC 6455 §5.1 requires it).
    #[error("unmasked client frame")]
    Unmasked,
    /// A payload larger than [`MAX_CLIENT_PAYLOAD`].
    #[error("client frame too large")]
    TooLarge,
}

/// Computes `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(client_key: &str) -> String {
    let mut h = Sha1::new();
    h.update(client_key.trim().as_bytes());
    h.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Appends the header of an unmasked server frame (FIN set) with a `len`-byte payload.
pub fn push_frame_header(out: &mut Vec<u8>, opcode: Opcode, len: usize) {
    out.push(0x80 | opcode.bits());
    if len < 126 {
        out.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Encodes one complete, unmasked server frame (FIN set).
pub fn encode_frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    push_frame_header(&mut out, opcode, payload.len());
    out.extend_from_slice(payload);
    out
}

/// Encodes a close frame with a status code and reason (reason cut to fit 123 bytes).
pub fn encode_close(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(reason.as_bytes().get(..end).unwrap_or_default());
    encode_frame(Opcode::Close, &payload)
}

/// A frame received from a subscriber, unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFrame {
    /// FIN bit.
    pub fin: bool,
    /// The opcode.
    pub opcode: Opcode,
    /// The unmasked payload.
    pub payload: Vec<u8>,
}

/// Parses one masked client frame from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, or the frame and the number of bytes it used.
///
/// # Errors
/// [`WsError`] on a protocol violation; the connection should then be closed with code 1002.
pub fn decode_client_frame(buf: &[u8]) -> Result<Option<(ClientFrame, usize)>, WsError> {
    decode_client_frame_limited(buf, MAX_CLIENT_PAYLOAD)
}

/// [`decode_client_frame`] with payloads up to `max_payload` bytes.
///
/// # Errors
/// [`WsError`] on a protocol violation, [`WsError::TooLarge`] past `max_payload`.
pub fn decode_client_frame_limited(buf: &[u8], max_payload: usize) -> Result<Option<(ClientFrame, usize)>, WsError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_bits(b0 & 0x0f).ok_or(WsError::Protocol)?;
    let is_control = matches!(opcode, Opcode::Close | Opcode::Ping | Opcode::Pong);
    if b1 & 0x80 == 0 {
        return Err(WsError::Unmasked);
    }
    let (len, mut pos) = match b1 & 0x7f {
        126 => match buf.get(2..4).and_then(|b| <[u8; 2]>::try_from(b).ok()) {
            Some(b) => (u64::from(u16::from_be_bytes(b)), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (b.iter().fold(0u64, |a, x| (a << 8) | u64::from(*x)), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if is_control && (!fin || len > 125) {
        return Err(WsError::Protocol);
    }
    if len > max_payload as u64 {
        return Err(WsError::TooLarge);
    }
    let len = len as usize;
    let Some(mask) = buf.get(pos..pos + 4).and_then(|m| <[u8; 4]>::try_from(m).ok()) else {
        return Ok(None);
    };
    pos += 4;
    let Some(data) = buf.get(pos..pos + len) else {
        return Ok(None);
    };
    let payload = data.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m).collect();
    Ok(Some((ClientFrame { fin, opcode, payload }, pos + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_accept_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn frame_lengths() {
        for (len, header) in [(0usize, 2usize), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let f = encode_frame(Opcode::Binary, &vec![7u8; len]);
            assert_eq!(f.len(), len + header);
            assert_eq!(f[0], 0x82);
        }
    }

    #[test]
    fn client_frames() {
        // RFC 6455 §5.7: a masked "Hello".
        let masked = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let (f, used) = decode_client_frame(&masked).unwrap().unwrap();
        assert_eq!((f.opcode, f.payload.as_slice(), used), (Opcode::Text, &b"Hello"[..], 11));
        for cut in 0..masked.len() {
            assert_eq!(decode_client_frame(&masked[..cut]), Ok(None));
        }
        assert_eq!(decode_client_frame(&[0x81, 0x05, 1, 2, 3, 4, 5]), Err(WsError::Unmasked));
        assert_eq!(decode_client_frame(&[0x09, 0x80, 0, 0, 0, 0]), Err(WsError::Protocol));
        assert_eq!(decode_client_frame(&[0x83, 0x80, 0, 0, 0, 0]), Err(WsError::Protocol));
    }
}
