//! Jetstream messages encoded once: each event's JSON in the format a subscriber speaks, framed as a
//! websocket message, and zstd-compressed with the relay's dictionary when asked, each at most once
//! per event per fanout shard however many subscribers get it.
//!
//! The dictionary (`zstd_dictionary.bin`, 64 KiB) was trained by `relay-bench
//! jetstream-dictionary` on generated Jetstream traffic (bench/README.md says how to retrain it);
//! it is served at `/xrpc/network.bsky.jetstream.getZstdDictionary` and its ID is the one a v2
//! client passes as `zstdDictionary`. Every compressed message is one zstd frame naming that ID.

use std::cell::{OnceCell, RefCell};
use std::sync::LazyLock;

use bytes::Bytes;
use wire::jetstream::JetEvent;
use wire::ws::{self, Opcode};
use zstd::dict::EncoderDictionary;

use super::JetFormat;
use crate::metrics::Metrics;

/// The relay's zstd dictionary for Jetstream messages (RFC 8878 §5 format).
pub const DICTIONARY: &[u8] = include_bytes!("zstd_dictionary.bin");

/// zstd level for Jetstream messages: the default, a few µs for a message of a few hundred bytes.
const LEVEL: i32 = 3;

static ENCODER_DICTIONARY: LazyLock<EncoderDictionary<'static>> =
    LazyLock::new(|| EncoderDictionary::copy(DICTIONARY, LEVEL));

/// The ID of [`DICTIONARY`] (bytes 4-8 of its header, little-endian), or 0 if it has none.
pub fn dictionary_id() -> u32 {
    DICTIONARY.get(4..8).and_then(|b| <[u8; 4]>::try_from(b).ok()).map_or(0, u32::from_le_bytes)
}

/// A fanout shard's compressor (one per executor: it is not shared across threads).
pub(crate) struct Codec {
    compressor: RefCell<zstd::bulk::Compressor<'static>>,
}

impl Codec {
    /// A compressor loaded with the dictionary.
    ///
    /// # Errors
    /// When zstd cannot allocate its context.
    pub(crate) fn new() -> std::io::Result<Self> {
        let compressor = zstd::bulk::Compressor::with_prepared_dictionary(&ENCODER_DICTIONARY)?;
        Ok(Self { compressor: RefCell::new(compressor) })
    }

    /// `json` as one zstd frame with the dictionary; `None` if zstd fails (not expected).
    pub(crate) fn compress(&self, json: &[u8]) -> Option<Vec<u8>> {
        self.compressor.borrow_mut().compress(json).ok()
    }
}

/// One event's message in one format: its JSON length (what `maxMessageSizeBytes` is compared with),
/// the text websocket frame, and the compressed binary frame once someone asked for it.
pub(crate) struct Encoded {
    json: Vec<u8>,
    text: Bytes,
    zstd: OnceCell<Option<Bytes>>,
}

/// A Jetstream event with its messages, encoded on first use.
pub(crate) struct Prepared {
    pub(crate) event: JetEvent,
    v1: OnceCell<Option<Encoded>>,
    v2: OnceCell<Option<Encoded>>,
}

impl Prepared {
    pub(crate) fn new(event: JetEvent) -> Self {
        Self { event, v1: OnceCell::new(), v2: OnceCell::new() }
    }

    fn encoded(&self, format: JetFormat, metrics: &Metrics) -> Option<&Encoded> {
        let (cell, label) = match format {
            JetFormat::V1 => (&self.v1, "v1"),
            JetFormat::V2 => (&self.v2, "v2"),
        };
        cell.get_or_init(|| {
            let json = match format {
                JetFormat::V1 => self.event.v1_json()?,
                JetFormat::V2 => self.event.v2_json(),
            };
            Metrics::inc(&metrics.jetstream_encoded, "encoding", label);
            let text = Bytes::from(ws::encode_frame(Opcode::Text, &json));
            Some(Encoded { json, text, zstd: OnceCell::new() })
        })
        .as_ref()
    }

    /// The websocket frame for a subscriber of `format` (compressed when `codec` is given) and the
    /// JSON's length; `None` when the format has no form for the event (`#sync` on v1).
    pub(crate) fn frame(&self, format: JetFormat, codec: Option<&Codec>, metrics: &Metrics) -> Option<(Bytes, usize)> {
        let enc = self.encoded(format, metrics)?;
        let Some(codec) = codec else { return Some((enc.text.clone(), enc.json.len())) };
        let zstd = enc.zstd.get_or_init(|| {
            let compressed = codec.compress(&enc.json)?;
            let label = match format {
                JetFormat::V1 => "v1_zstd",
                JetFormat::V2 => "v2_zstd",
            };
            Metrics::inc(&metrics.jetstream_encoded, "encoding", label);
            Some(Bytes::from(ws::encode_frame(Opcode::Binary, &compressed)))
        });
        zstd.as_ref().map(|z| (z.clone(), enc.json.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_compress_with_the_dictionary_and_decompress_with_it() {
        assert!(dictionary_id() >= 32_768, "a trained dictionary's ID");
        let codec = Codec::new().unwrap();
        let json = br#"{"did":"did:plc:aaaaaaaaaaaaaaaaaaaaaaaa","time_us":1700000000000000,"kind":"commit","commit":{"rev":"3l3qo2vutsw2b","operation":"create","collection":"app.bsky.feed.like","rkey":"3l3qo2vuowo2b","record":{"$type":"app.bsky.feed.like","createdAt":"2024-09-09T19:46:02.102Z","subject":{"cid":"bafyreidc6sydkkbchcyg62v77wbhzvb2mvytlmsychqgwf2xojjtirmzj4","uri":"at://did:plc:wa7b35aakoll7hugkrjtf3xf/app.bsky.feed.post/3l3pte3p2e325"}},"cid":"bafyreidwaivazkwu67xztlmuobx35hs2lnfh3kolmgfmucldvhd3sgzcqi"}}"#;
        let z = codec.compress(json).unwrap();
        assert!(z.len() < json.len() / 2, "{} -> {}", json.len(), z.len());
        let mut d = zstd::bulk::Decompressor::with_dictionary(DICTIONARY).unwrap();
        assert_eq!(d.decompress(&z, 1 << 20).unwrap(), json);
        assert!(zstd::bulk::decompress(&z, 1 << 20).is_err(), "the frame needs the dictionary");
    }
}
