//! Inbound PUBLISH at QoS 0, 1 and 2.

use super::{Client, Flow};
use crate::broker::Broker;
use crate::error::Violation;
use crate::packet::{Ack, Packet, Protocol, Publish, QoS, ReasonCode};
use crate::security::ClientInfo;
use crate::session::Message;
use crate::stats::DropCause;
use crate::store::Persistence;
use crate::topic;
use std::sync::{Arc, PoisonError};

/// Routes an inbound PUBLISH and queues its acknowledgement: PUBACK for
/// QoS 1 (MQTT-4.3.2-2), PUBREC for QoS 2 (MQTT-4.3.3-2), where a QoS 2
/// message re-sent before PUBREL is acknowledged but not routed again. A
/// topic deeper than `max_topic_levels`, or a retained PUBLISH while
/// `retain_available` is false, closes the connection.
///
/// A 5.0 PUBLISH first has its Topic Alias resolved (MQTT-3.3.2-8 to -12),
/// and its acknowledgement carries a reason code: 0x10 when no subscriber
/// matched, 0x87 when the ACL refused it, 0x99 when its payload is not the
/// UTF-8 its Payload Format Indicator promises.
pub fn publish(client: &Client, broker: &Broker, mut p: Publish, out: &mut Vec<Packet>) -> Result<Flow, Violation> {
    broker.stats().received(p.qos as usize, p.payload.len());
    let v5 = client.protocol == Protocol::V5;
    if v5 {
        resolve_alias(client, &mut p)?;
    }
    check_depth(broker, &p.topic)?;
    check_retain(broker, p.retain)?;
    let expires = p.expiry.map(crate::packet::expires_in);
    let utf8_ok = p.properties.as_ref().is_none_or(|props| props.payload_format_utf8 != Some(true))
        || std::str::from_utf8(&p.payload).is_ok();
    let message = Message { properties: p.properties, expires, ..Message::new(p.topic, p.payload, p.qos, p.retain) };
    let reason = |routed: Routed| match (v5, routed) {
        (false, _) | (true, Routed::To(1..)) => ReasonCode::SUCCESS,
        (true, Routed::To(0)) => ReasonCode::NO_MATCHING_SUBSCRIBERS,
        (true, Routed::Refused) => ReasonCode::NOT_AUTHORIZED,
        (true, Routed::Invalid) => ReasonCode::PAYLOAD_FORMAT_INVALID,
        (true, Routed::Dropped) => ReasonCode::SUCCESS,
    };
    let route = |message: Message| match utf8_ok {
        true => route(client, broker, message, p.retain),
        false => {
            crate::limited!(
                "bad payload format",
                log::Level::Info,
                "client {}: PUBLISH to {} says its payload is UTF-8 and it is not: not delivered (0x99)",
                client.id(),
                message.topic
            );
            Routed::Invalid
        }
    };
    match (p.qos, p.pid) {
        (QoS::AtLeastOnce, Some(pid)) => {
            let routed = route(message);
            out.push(Packet::Puback(Ack { pid, reason: reason(routed) }));
        }
        (QoS::ExactlyOnce, Some(pid)) => {
            // The packet id and the routed copies commit together: a crash
            // between them would keep the id, and the publisher's re-sent
            // PUBLISH would be taken for a duplicate of a message never stored.
            let _hold = broker.store().map(Persistence::hold);
            // MQTT-3.3.4-8: no more unacknowledged QoS 2 PUBLISHes than the
            // Receive Maximum announced in CONNACK (checked before the id
            // is kept). QoS 1 ones are acknowledged as they are handled.
            let max = client.v5.as_ref().map_or(usize::MAX, |v5| usize::from(v5.receive_maximum));
            let Some(new) = client.with_session(|s| s.receive_qos2_within(pid, max)) else {
                return Ok(Flow::TakenOver);
            };
            let Some(new) = new else {
                return Err(Violation::V5(
                    ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    "MQTT-3.3.4-8",
                    "more unacknowledged QoS 2 PUBLISHes than the Receive Maximum",
                ));
            };
            let routed = match new {
                true => route(message),
                false => Routed::To(1),
            };
            let reason = reason(routed);
            if reason.0 >= 0x80 {
                // An error PUBREC ends the exchange: no PUBREL will free the id.
                client.with_session(|s| s.forget_incoming(Some(pid)));
            }
            out.push(Packet::Pubrec(Ack { pid, reason }));
        }
        _ => drop(route(message)),
    }
    Ok(Flow::Continue)
}

/// Resolves a 5.0 PUBLISH's Topic Alias: a topic with an alias (re)sets
/// it, an empty topic takes the alias's. Alias 0 (refused by the decoder)
/// or above the Topic Alias Maximum is 0x94 (MQTT-3.3.2-9/-10); an empty
/// topic with an alias never set is a Protocol Error (3.3.2.3.4).
fn resolve_alias(client: &Client, p: &mut Publish) -> Result<(), Violation> {
    let Some(alias) = p.topic_alias.take() else { return Ok(()) };
    // A 3.1.1 client has no aliases: any alias is above its maximum (0).
    let mut none = Vec::new();
    let mut guard = client.v5.as_ref().map(|v5| v5.aliases.lock().unwrap_or_else(PoisonError::into_inner));
    let aliases = guard.as_deref_mut().unwrap_or(&mut none);
    let Some(slot) = usize::from(alias).checked_sub(1).and_then(|i| aliases.get_mut(i)) else {
        return Err(Violation::V5(
            ReasonCode::TOPIC_ALIAS_INVALID,
            "MQTT-3.3.2-9",
            "topic alias above the Topic Alias Maximum",
        ));
    };
    match (p.topic.is_empty(), &*slot) {
        (false, _) => *slot = Some(p.topic.clone()),
        // A topic of its own, as a PUBLISH with the topic written out has:
        // one shared by every message of this publisher would have every
        // subscriber's session, on every core, touching its count.
        (true, Some(topic)) => p.topic = Arc::from(&**topic),
        (true, None) => {
            return Err(Violation::V5(
                ReasonCode::PROTOCOL_ERROR,
                "3.3.2.3.4",
                "empty topic with a topic alias that was never set",
            ));
        }
    }
    Ok(())
}

/// What became of a PUBLISH's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// Routed to this many sessions.
    To(usize),
    /// The ACL or a hook refused it (or it was on `$SYS`).
    Refused,
    /// Larger than `message_size_limit`.
    Dropped,
    /// Its payload is not the UTF-8 its Payload Format Indicator says.
    Invalid,
}

/// Refuses a PUBLISH or will topic deeper than `max_topic_levels`.
pub fn check_depth(broker: &Broker, topic: &str) -> Result<(), Violation> {
    let max = broker.config().max_topic_levels;
    match topic::deeper_than(topic, max) {
        true => Err(Violation::TopicTooDeep),
        false => Ok(()),
    }
}

/// Refuses a retained PUBLISH or will while `retain_available` is false
/// (Mosquitto closes an MQTT 3.1.1 client that sends one).
pub fn check_retain(broker: &Broker, retain: bool) -> Result<(), Violation> {
    match retain && !broker.config().retain_available {
        true => Err(Violation::RetainNotAvailable),
        false => Ok(()),
    }
}

/// Whether `who` may publish `message` (a PUBLISH, or its will when
/// `will`): not on `$SYS` topics, which only the broker publishes, and not
/// where the ACL or the hooks refuse it. A refusal is logged; a PUBLISH is
/// still acknowledged (MQTT-3.3.5-2).
pub fn allowed(broker: &Broker, who: &ClientInfo<'_>, message: &Message, will: bool) -> bool {
    let (id, topic) = (who.client_id, &message.topic);
    let what = if will { "will" } else { "PUBLISH" };
    if topic.starts_with("$SYS") {
        crate::limited!(
            "$SYS publish",
            log::Level::Info,
            "client {id}: {what} to {topic} ignored, $SYS topics are the broker's"
        );
        return false;
    }
    if !broker.guards().allow_publish(who, message) {
        broker.stats().dropped(DropCause::Acl, 1);
        match will {
            true => crate::limited!(
                "denied will",
                log::Level::Info,
                "client {id}: will on {topic} not allowed, not published"
            ),
            false => crate::limited!(
                "denied publish",
                log::Level::Info,
                "client {id} may not publish to {topic}: not delivered"
            ),
        }
        return false;
    }
    true
}

/// Hands the message to the broker if it is allowed; sessions whose full
/// queues took it are noted for the connection to wait for.
fn route(client: &Client, broker: &Broker, message: Message, retain: bool) -> Routed {
    if let Some(limit) = broker.config().message_size_limit
        && message.payload.len() > limit
    {
        let (id, topic, size) = (client.id(), &message.topic, message.payload.len());
        crate::limited!(
            "too large publish",
            log::Level::Info,
            "client {id}: PUBLISH to {topic} of {size} bytes dropped, larger than message_size_limit {limit}"
        );
        return Routed::Dropped;
    }
    if !allowed(broker, &client.info(), &message, false) {
        return Routed::Refused;
    }
    let mut pressed = Vec::new();
    // A QoS 1 PUBACK may go out once every stored copy is acknowledged,
    // before their commit (see Receipt); a retained message, and a QoS 2
    // one's packet id, wait for theirs.
    // The receipt is made only once a copy is stored.
    let mut receipt = None;
    let counted = (message.qos == QoS::AtLeastOnce && broker.store().is_some()).then_some(&mut receipt);
    let routing = broker.publish_from(Some(client.id()), message, retain, counted, &mut pressed, true);
    client.wait_for(routing.retained);
    if let Some(forwarded) = routing.forwarded {
        client.wait_for_forward(forwarded);
    }
    match receipt {
        Some(receipt) => client.wait_for_copies(routing.copies, receipt),
        None => client.wait_for(routing.copies),
    }
    client.press(pressed);
    Routed::To(routing.routed)
}
