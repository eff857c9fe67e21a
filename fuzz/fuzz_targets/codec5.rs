//! Arbitrary bytes into the MQTT 5.0 codec (`midge::v5`), two ways: as a
//! stream of frames cut by `frame_length` (max packet size 4096) and decoded
//! with `decode_frame`, and as one body behind the input's first byte given
//! to `decode` and `decode_from_client`. Nothing may panic.
//!
//! Also checked: whatever decodes encodes to exactly `encoded_len` bytes and
//! decodes again to the same packet, and `encode_within` one byte under that
//! size either writes nothing or a packet that decodes.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use midge::v5::{Packet, decode, decode_frame, decode_from_client, encode, encode_within, encoded_len, frame_length};

const MAX_PACKET_SIZE: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut src = data;
    while let Ok(Some(total)) = frame_length(src, MAX_PACKET_SIZE) {
        let Some((frame, rest)) = src.split_at_checked(total) else { break };
        if let Ok(packet) = decode_frame(Bytes::copy_from_slice(frame)) {
            round_trip(&packet);
        }
        src = rest;
    }
    if let Some((&header, body)) = data.split_first() {
        let body = Bytes::copy_from_slice(body);
        if let Ok(packet) = decode(header, body.clone()) {
            round_trip(&packet);
        }
        if let Ok(packet) = decode_from_client(header, body) {
            round_trip(&packet);
        }
    }
});

fn round_trip(packet: &Packet) {
    let mut bytes = BytesMut::new();
    encode(packet, &mut bytes).expect("a decoded packet encodes");
    assert_eq!(bytes.len(), encoded_len(packet).unwrap());
    let again = decode_frame(bytes.clone().freeze()).expect("what the encoder writes decodes");
    assert_eq!(&again, packet);
    let mut smaller = BytesMut::new();
    match encode_within(packet, bytes.len() - 1, &mut smaller).unwrap() {
        true => {
            assert!(smaller.len() < bytes.len());
            decode_frame(smaller.freeze()).expect("a thinned packet decodes");
        }
        false => assert!(smaller.is_empty()),
    }
}
