//! Byte builders for client packets, written out by hand so the tests do not
//! share the broker's codec.

/// CONNACK, session present 0, accepted.
pub const CONNACK_ACCEPTED: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
/// CONNACK, session present 1, accepted.
pub const CONNACK_SESSION_PRESENT: [u8; 4] = [0x20, 0x02, 0x01, 0x00];
/// PINGREQ.
pub const PINGREQ: [u8; 2] = [0xc0, 0x00];
/// PINGRESP.
pub const PINGRESP: [u8; 2] = [0xd0, 0x00];
/// DISCONNECT.
pub const DISCONNECT: [u8; 2] = [0xe0, 0x00];

/// A fixed header plus `body`.
pub fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        out.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string or byte field.
pub fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// The options of a CONNECT packet.
#[derive(Clone, Debug)]
pub struct Connect<'a> {
    pub protocol: &'a str,
    pub level: u8,
    pub client_id: &'a str,
    pub clean: bool,
    pub keep_alive: u16,
    /// (topic, message, qos, retain)
    pub will: Option<(&'a str, &'a [u8], u8, bool)>,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    /// Extra flag bits or'ed in (to break rules on purpose).
    pub extra_flags: u8,
}

impl Default for Connect<'_> {
    fn default() -> Self {
        Connect {
            protocol: "MQTT",
            level: 4,
            client_id: "",
            clean: true,
            keep_alive: 60,
            will: None,
            username: None,
            password: None,
            extra_flags: 0,
        }
    }
}

impl Connect<'_> {
    /// The CONNECT packet's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let mut flags = self.extra_flags;
        flags |= u8::from(self.clean) << 1;
        let mut body = field(self.protocol.as_bytes());
        let mut payload = field(self.client_id.as_bytes());
        if let Some((topic, message, qos, retain)) = self.will {
            flags |= 0x04 | qos << 3 | u8::from(retain) << 5;
            payload.extend(field(topic.as_bytes()));
            payload.extend(field(message));
        }
        if let Some(username) = self.username {
            flags |= 0x80;
            payload.extend(field(username.as_bytes()));
        }
        if let Some(password) = self.password {
            flags |= 0x40;
            payload.extend(field(password));
        }
        body.push(self.level);
        body.push(flags);
        body.extend(self.keep_alive.to_be_bytes());
        body.extend(payload);
        packet(0x10, &body)
    }
}

/// A plain MQTT 3.1.1 CONNECT.
pub fn connect(client_id: &str, clean: bool, keep_alive: u16) -> Vec<u8> {
    Connect { client_id, clean, keep_alive, ..Connect::default() }.bytes()
}

/// SUBSCRIBE with (filter, qos) pairs.
pub fn subscribe(pid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    for (filter, qos) in filters {
        body.extend(field(filter.as_bytes()));
        body.push(*qos);
    }
    packet(0x82, &body)
}

/// SUBACK as the broker should send it.
pub fn suback(pid: u16, codes: &[u8]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    body.extend_from_slice(codes);
    packet(0x90, &body)
}

/// UNSUBSCRIBE.
pub fn unsubscribe(pid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    filters.iter().for_each(|f| body.extend(field(f.as_bytes())));
    packet(0xa2, &body)
}

/// PUBLISH with explicit flags.
pub fn publish_with(topic: &str, payload: &[u8], qos: u8, pid: Option<u16>, retain: bool, dup: bool) -> Vec<u8> {
    let header = 0x30 | u8::from(dup) << 3 | qos << 1 | u8::from(retain);
    let mut body = field(topic.as_bytes());
    if let Some(pid) = pid {
        body.extend(pid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(header, &body)
}

/// PUBLISH at QoS 0.
pub fn publish0(topic: &str, payload: &[u8]) -> Vec<u8> {
    publish_with(topic, payload, 0, None, false, false)
}

/// PUBLISH at QoS 1 or 2 with a packet id.
pub fn publish(topic: &str, payload: &[u8], qos: u8, pid: u16) -> Vec<u8> {
    publish_with(topic, payload, qos, Some(pid), false, false)
}

/// An acknowledgement: 0x40 PUBACK, 0x50 PUBREC, 0x62 PUBREL, 0x70 PUBCOMP, 0xb0 UNSUBACK.
pub fn ack(header: u8, pid: u16) -> Vec<u8> {
    packet(header, &pid.to_be_bytes())
}

pub const PUBACK: u8 = 0x40;
pub const PUBREC: u8 = 0x50;
pub const PUBREL: u8 = 0x62;
pub const PUBCOMP: u8 = 0x70;
pub const UNSUBACK: u8 = 0xb0;
