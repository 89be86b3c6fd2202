//! Commit checks: any frame that decodes as `#commit` or `#sync` goes through the structural,
//! Sync 1.1 and signature checks without panicking; any bytes go through commit-block decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::commit::SignedCommit;
use wire::crypto::PublicKey;
use wire::frame::{Event, Frame, decode_frame};
use wire::validate::{Limits, check_commit, check_sync};

fuzz_target!(|data: &[u8]| {
    let key = PublicKey::from_did_key("did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme").expect("fixture key");
    if let Ok(signed) = SignedCommit::decode(data) {
        let _ = signed.verify(&key);
    }
    let checked = match decode_frame(data) {
        Ok(Frame::Message(Event::Commit(c))) => check_commit(&c, &Limits::default(), u64::MAX / 2),
        Ok(Frame::Message(Event::Sync(s))) => check_sync(&s, &Limits::default(), u64::MAX / 2),
        _ => return,
    };
    if let Ok(c) = checked {
        let _ = c.signed.verify(&key);
    }
});
