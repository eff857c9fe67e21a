//! Arbitrary bytes into `MqttCodec::decode` (max packet size 4096), fed in
//! chunks whose size is the first input byte (0: all at once), until the
//! decoder errs or waits with nothing left to feed. It must never panic (under
//! libFuzzer even a panic the codec's `catch_unwind` backstop would catch
//! aborts, so an mqttrs panic that `validate` lets through is found too).
//!
//! Also checked: a packet consumes bytes; while waiting, the decoder keeps
//! less than the maximum packet size; and a decoded packet that servers send
//! too (PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP) decodes again, unchanged,
//! from what the codec's encoder writes for it.

#![no_main]

use asynchronous_codec::{Decoder, Encoder};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use midge::codec::MqttCodec;
use midge::packet::Packet;

const MAX_PACKET_SIZE: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else { return };
    let chunk = match chunk {
        0 => input.len().max(1),
        n => usize::from(n),
    };
    let mut codec = MqttCodec::new(MAX_PACKET_SIZE);
    let mut src = BytesMut::new();
    let mut chunks = input.chunks(chunk);
    loop {
        let before = src.len();
        match codec.decode(&mut src) {
            Ok(Some(packet)) => {
                assert!(src.len() < before, "a packet consumed no bytes");
                // A 5.0 connection's packets carry what 3.1.1 cannot say;
                // the codec5 target checks the 5.0 codec's round trips.
                if !codec.speaks_v5() {
                    round_trip(&packet);
                }
            }
            Ok(None) => {
                assert!(src.len() < MAX_PACKET_SIZE, "{} bytes buffered", src.len());
                match chunks.next() {
                    Some(more) => src.extend_from_slice(more),
                    None => return,
                }
            }
            Err(_) => return,
        }
    }
});

fn round_trip(packet: &Packet) {
    let shared = matches!(
        packet,
        Packet::Publish(_) | Packet::Puback(_) | Packet::Pubrec(_) | Packet::Pubrel(_) | Packet::Pubcomp(_)
    );
    if !shared {
        return;
    }
    let mut codec = MqttCodec::new(MAX_PACKET_SIZE);
    let mut bytes = BytesMut::new();
    codec.encode(packet, &mut bytes).expect("the server encodes it");
    let again = codec.decode(&mut bytes).expect("what the server encodes decodes").expect("a whole packet");
    assert_eq!(&again, packet);
    assert!(bytes.is_empty());
}
