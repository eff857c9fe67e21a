//! The MQTT 5.0 packet codec: midge's own sans-IO decoder and encoder (the
//! 3.1.1 and 3.1 codec stays on mqttrs, which has no 5.0). Used for
//! every MQTT 5.0 connection: [`crate::codec`] decodes a 5.0 connection's
//! packets with it into the broker's neutral packets and encodes them back.
//!
//! - [`decode`] reads one packet from its fixed-header byte and its exact
//!   body, in either direction; [`decode_from_client`] adds what a server
//!   must refuse from a client (server-only packets, a Subscription
//!   Identifier in PUBLISH, MQTT-3.3.4-6). [`frame_length`] cuts frames and
//!   refuses one over the maximum packet size from its declared length.
//! - Every error is a [`DecodeError`]: the [`ReasonCode`] to answer with
//!   (0x81 Malformed Packet, 0x82 Protocol Error, 0x84, 0x94 Topic Alias
//!   invalid, 0x95 Packet too large) and the rule, for the Reason String and
//!   the log line. Malformed: wrong fixed-header flags (MQTT-2.1.3-1),
//!   fields past the end or bytes left over, ill-formed UTF-8 or U+0000
//!   (MQTT-1.5.4-1/-2), CONNECT's reserved flag and will flags
//!   (MQTT-3.1.2-3/-11/-12/-13), PUBLISH QoS 3 or DUP at QoS 0
//!   (MQTT-3.3.1-4/-2), reserved subscription option bits (MQTT-3.8.3-5), a
//!   reason code the packet may not carry (2.4). Protocol Error: packet
//!   identifier 0 (MQTT-2.2.1-3), SUBSCRIBE / UNSUBSCRIBE without filters
//!   (MQTT-3.8.3-2, MQTT-3.10.3-2), maximum QoS or Retain Handling 3, No
//!   Local on a shared subscription (MQTT-3.8.3-4), an empty topic without
//!   a Topic Alias (3.3.2.1). CONNECT with a version other than 5 is 0x84.
//! - Properties (section 2.2.2) are one typed [`Properties`] struct; each
//!   packet may carry only the ones the table of 2.2.2.2 allows it. An
//!   unknown identifier, one not allowed in the packet, a property length
//!   that overruns the packet and a five-byte variable byte integer are
//!   Malformed (0x81: section 2.2.2.2 says so of an identifier not valid for
//!   its packet type). A repeated once-only property, Receive Maximum 0,
//!   Maximum Packet Size 0, Subscription Identifier 0 and a byte property
//!   outside 0/1 are Protocol Errors (0x82); Topic Alias 0 is 0x94.
//!   Bounds: at most [`MAX_USER_PROPERTIES`] user-property pairs,
//!   [`MAX_SUBSCRIPTION_IDS`] subscription identifiers and
//!   [`MAX_PROPERTY_BYTES`] of properties per packet (0x95 beyond).
//! - Zero-copy: payload, correlation data, authentication data and
//!   passwords are slices of the frame; a PUBLISH's and a will's message
//!   properties are an `Arc` (a PUBLISH without properties shares one empty
//!   set), so fan-out shares them. Topic Alias and Subscription Identifiers
//!   are per delivery and sit in [`Publish`] itself.
//! - [`encode`] writes any packet in its shortest form; [`encode_within`]
//!   fits a packet to the peer's Maximum Packet Size by dropping the Reason
//!   String, then the User Properties, where the spec allows it.
//!
//! Left to the caller (they need connection state or the broker's rules):
//! wildcards in topic names and filter syntax (see [`crate::topic`]), topic
//! alias resolution and Topic Alias Maximum, Receive Maximum accounting,
//! and authentication. The payload format check (0x99) is offered, not
//! imposed: [`Publish::check_payload_format`].

mod decode;
mod encode;
mod packet;
mod property;
mod reason;

#[cfg(test)]
mod tests;

pub use decode::{DecodeError, decode, decode_frame, decode_from_client, frame_length};
pub use encode::{EncodeError, MAX_REMAINING_LENGTH, encode, encode_within, encoded_len};
pub use packet::*;
pub use property::{
    MAX_PROPERTY_BYTES, MAX_SUBSCRIPTION_IDS, MAX_USER_PROPERTIES, Properties, decode_message_properties,
    encode_message_properties, publish_properties_len, write_publish_properties,
};
pub use reason::ReasonCode;
