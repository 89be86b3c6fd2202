//! Generated Jetstream traffic shaped like the network's (by share of collections: likes, posts,
//! follows, reposts, blocks, profile updates, deletes; identity and account events), used to train
//! the relay's zstd dictionary (`relay-bench jetstream-dictionary`) and to measure it on traffic it
//! was not trained on. Records carry what real ones do: facets, langs, replies, embeds, strong
//! refs, DIDs and TIDs, text in a few languages; the words are drawn from a small vocabulary, so the
//! text compresses somewhat better than real posts do.

use serde_json::{Value, json};
use wire::frame::{AccountEvent, IdentityEvent};
use wire::jetstream::{Body, JetEvent};
use wire::{Did, Tid};

const WORDS: &[&str] = &[
    "the", "a", "and", "to", "of", "is", "in", "that", "it", "for", "you", "this", "on", "with", "my", "so", "just",
    "be", "but", "not", "have", "what", "are", "like", "me", "we", "all", "can", "was", "about", "good", "new",
    "people", "think", "time", "today", "really", "love", "one", "know", "bluesky", "post", "art", "game", "day",
    "very", "thank", "world", "hope", "news", "music", "photo", "cat", "dog", "morning", "night", "week", "year", "de",
    "que", "la", "el", "en", "los", "por", "una", "para", "の", "に", "は", "を", "た", "です", "ます", "und", "der",
    "die", "das", "ist", "nicht", "ein", "mit", "😂", "❤️", "✨", "🙏", "!", "?", "...", "lol",
];

const LANGS: &[&str] = &["en", "ja", "pt", "es", "de", "ko", "fr"];

fn did(rng: &mut fastrand::Rng) -> String {
    const B32: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let id: String = (0..24).map(|_| char::from(B32[rng.usize(..B32.len())])).collect();
    format!("did:plc:{id}")
}

fn tid(rng: &mut fastrand::Rng, now_us: u64) -> String {
    Tid::from_u64((now_us.saturating_sub(rng.u64(0..3_600_000_000))) << 10 | rng.u64(0..1024)).to_string()
}

fn cid(rng: &mut fastrand::Rng) -> String {
    let bytes: Vec<u8> = (0..32).map(|_| rng.u8(..)).collect();
    wire::car::cid_for(0x71, &bytes).to_string()
}

fn datetime(rng: &mut fastrand::Rng, now_us: u64) -> String {
    wire::syntax::datetime_from_unix_us(now_us.saturating_sub(rng.u64(0..5_000_000)) / 1000 * 1000)
}

fn text(rng: &mut fastrand::Rng) -> String {
    let n = rng.usize(1..40);
    (0..n).map(|_| WORDS[rng.usize(..WORDS.len())]).collect::<Vec<_>>().join(" ")
}

fn strong_ref(rng: &mut fastrand::Rng, now_us: u64, collection: &str) -> Value {
    json!({ "cid": cid(rng), "uri": format!("at://{}/{collection}/{}", did(rng), tid(rng, now_us)) })
}

fn record(rng: &mut fastrand::Rng, collection: &str, now_us: u64) -> Value {
    let created = datetime(rng, now_us);
    match collection {
        "app.bsky.feed.like" | "app.bsky.feed.repost" => json!({
            "$type": collection, "createdAt": created, "subject": strong_ref(rng, now_us, "app.bsky.feed.post"),
        }),
        "app.bsky.graph.follow" | "app.bsky.graph.block" => {
            json!({ "$type": collection, "createdAt": created, "subject": did(rng) })
        }
        "app.bsky.actor.profile" => json!({
            "$type": collection, "displayName": text(rng).chars().take(30).collect::<String>(),
            "description": text(rng),
            "avatar": { "$type": "blob", "ref": { "$link": cid(rng) }, "mimeType": "image/jpeg", "size": rng.u32(10_000..900_000) },
        }),
        _ => {
            let body = text(rng);
            let mut post = json!({
                "$type": "app.bsky.feed.post", "createdAt": created, "text": body,
                "langs": [LANGS[rng.usize(..LANGS.len())]],
            });
            if rng.u8(..4) == 0 {
                let parent = strong_ref(rng, now_us, "app.bsky.feed.post");
                post["reply"] = json!({ "parent": parent.clone(), "root": parent });
            }
            if rng.u8(..5) == 0 {
                post["facets"] = json!([{
                    "$type": "app.bsky.richtext.facet",
                    "features": [{ "$type": "app.bsky.richtext.facet#mention", "did": did(rng) }],
                    "index": { "byteEnd": 12, "byteStart": 0 },
                }]);
            }
            if rng.u8(..6) == 0 {
                post["embed"] = json!({
                    "$type": "app.bsky.embed.images",
                    "images": [{ "alt": "", "aspectRatio": { "height": 1080, "width": 1920 },
                        "image": { "$type": "blob", "ref": { "$link": cid(rng) }, "mimeType": "image/jpeg", "size": rng.u32(50_000..900_000) } }],
                });
            }
            post
        }
    }
}

/// `n` Jetstream events from seed `seed`, at times around `now_us`: about 60% likes, 12% posts, 10%
/// follows, 8% reposts, 3% blocks, 2% profiles, 4% deletes, 1% identity/account events.
pub fn events(seed: u64, n: usize, now_us: u64) -> Vec<JetEvent> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let relay_seq = 1_000_000 + i as u64;
        let time_us = now_us + i as u64 * 100;
        let Ok(account) = Did::new(did(&mut rng)) else { continue };
        let roll = rng.u8(..100);
        let body = if roll < 1 {
            let time = datetime(&mut rng, now_us);
            if rng.bool() {
                Body::Identity(IdentityEvent {
                    seq: relay_seq as i64,
                    did: account.clone(),
                    time,
                    handle: Some(format!("{}.bsky.social", WORDS[rng.usize(..40)])),
                })
            } else {
                Body::Account(AccountEvent {
                    seq: relay_seq as i64,
                    did: account.clone(),
                    time,
                    active: true,
                    status: None,
                })
            }
        } else {
            let (collection, operation) = match roll {
                1..=60 => ("app.bsky.feed.like", "create"),
                61..=72 => ("app.bsky.feed.post", "create"),
                73..=82 => ("app.bsky.graph.follow", "create"),
                83..=90 => ("app.bsky.feed.repost", "create"),
                91..=93 => ("app.bsky.graph.block", "create"),
                94..=95 => ("app.bsky.actor.profile", "update"),
                _ => (["app.bsky.feed.like", "app.bsky.feed.post", "app.bsky.graph.follow"][rng.usize(..3)], "delete"),
            };
            let rkey = if collection == "app.bsky.actor.profile" { "self".to_owned() } else { tid(&mut rng, now_us) };
            let deleted = operation == "delete";
            Body::Commit {
                rev: Tid::new(tid(&mut rng, now_us)).unwrap_or_else(|_| Tid::from_u64(now_us << 10)),
                operation: operation.to_owned(),
                collection: collection.to_owned(),
                rkey,
                cid: if deleted { None } else { cid(&mut rng).parse().ok() },
                record: (!deleted).then(|| record(&mut rng, collection, now_us)),
            }
        };
        out.push(JetEvent { did: account, relay_seq, index: 0, time_us, body });
    }
    out
}
