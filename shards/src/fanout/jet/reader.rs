//! A Jetstream subscriber's reader: answers pings (in order with the messages), notices its close,
//! and applies v1 `options_update` messages (text or binary, possibly fragmented, up to
//! `wire::jetstream::MAX_OPTIONS_UPDATE_BYTES`) to its filter. An invalid message closes the
//! connection (`bad_message`), as Jetstream does; v2 subscribers have nothing to send, and their
//! data messages are ignored.

use std::cell::Cell;
use std::rc::Rc;

use futures_lite::AsyncReadExt;
use futures_lite::io::ReadHalf;
use glommio::net::TcpStream;
use wire::jetstream::{MAX_OPTIONS_UPDATE_BYTES, apply_options_update};
use wire::ws::{self, Opcode};

use super::super::queue::{Outgoing, Queue};
use super::{JetFormat, JetSub};

pub(super) async fn read_client(
    mut rd: ReadHalf<TcpStream>,
    queue: Rc<Queue<wire::jetstream::JetSeq>>,
    sub: Rc<JetSub>,
    mut buf: Vec<u8>,
    bad_message: Rc<Cell<bool>>,
) {
    let mut chunk = vec![0u8; 16 * 1024];
    // A data message being reassembled from fragments.
    let mut message: Vec<u8> = Vec::new();
    let mut in_message = false;
    loop {
        loop {
            match ws::decode_client_frame_limited(&buf, MAX_OPTIONS_UPDATE_BYTES) {
                Ok(Some((frame, used))) => {
                    buf.drain(..used);
                    match frame.opcode {
                        Opcode::Ping => {
                            queue.push_control(Outgoing::Control(ws::encode_frame(Opcode::Pong, &frame.payload).into()))
                        }
                        Opcode::Close => {
                            queue.close();
                            return;
                        }
                        Opcode::Pong => {}
                        Opcode::Text | Opcode::Binary | Opcode::Continuation => {
                            if frame.opcode == Opcode::Continuation && !in_message {
                                bad_message.set(true);
                                queue.close();
                                return;
                            }
                            if frame.opcode != Opcode::Continuation {
                                message.clear();
                            }
                            message.extend_from_slice(&frame.payload);
                            in_message = !frame.fin;
                            if message.len() > MAX_OPTIONS_UPDATE_BYTES {
                                bad_message.set(true);
                                queue.close();
                                return;
                            }
                            if !in_message && sub.format == JetFormat::V1 {
                                let applied = apply_options_update(&mut sub.filter.borrow_mut(), &message);
                                match applied {
                                    Ok(()) => {
                                        sub.hello.set(true);
                                        queue.notify();
                                    }
                                    Err(e) => {
                                        tracing::debug!(error = %e, "invalid options_update; closing");
                                        bad_message.set(true);
                                        queue.close();
                                        return;
                                    }
                                }
                                message = Vec::new();
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "subscriber protocol error");
                    queue.close();
                    return;
                }
            }
        }
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                queue.close();
                return;
            }
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
}
