//! Inbound PUBLISH at QoS 0, 1 and 2.

use super::{Client, Flow};
use crate::broker::Broker;
use crate::error::Violation;
use crate::packet::{Packet, Publish, QoS};
use crate::security::ClientInfo;
use crate::session::Message;
use crate::stats::DropCause;
use crate::store::Persistence;
use crate::topic;

/// Routes an inbound PUBLISH and queues its acknowledgement: PUBACK for
/// QoS 1 (MQTT-4.3.2-2), PUBREC for QoS 2 (MQTT-4.3.3-2), where a QoS 2
/// message re-sent before PUBREL is acknowledged but not routed again. A
/// topic deeper than `max_topic_levels`, or a retained PUBLISH while
/// `retain_available` is false, closes the connection.
pub fn publish(client: &Client, broker: &Broker, p: Publish, out: &mut Vec<Packet>) -> Result<Flow, Violation> {
    broker.stats().received(p.qos as usize, p.payload.len());
    check_depth(broker, &p.topic)?;
    check_retain(broker, p.retain)?;
    let message = Message { topic: p.topic, payload: p.payload, qos: p.qos, retain: p.retain };
    match (p.qos, p.pid) {
        (QoS::AtLeastOnce, Some(pid)) => {
            route(client, broker, message, p.retain);
            out.push(Packet::Puback(pid));
        }
        (QoS::ExactlyOnce, Some(pid)) => {
            // The packet id and the routed copies commit together: a crash
            // between them would keep the id, and the publisher's re-sent
            // PUBLISH would be taken for a duplicate of a message never stored.
            let _hold = broker.store().map(Persistence::hold);
            let Some(new) = client.with_session(|s| s.receive_qos2(pid)) else {
                return Ok(Flow::TakenOver);
            };
            if new {
                route(client, broker, message, p.retain);
            }
            out.push(Packet::Pubrec(pid));
        }
        _ => route(client, broker, message, p.retain),
    }
    Ok(Flow::Continue)
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
fn route(client: &Client, broker: &Broker, message: Message, retain: bool) {
    if let Some(limit) = broker.config().message_size_limit
        && message.payload.len() > limit
    {
        let (id, topic, size) = (&client.id, &message.topic, message.payload.len());
        crate::limited!(
            "too large publish",
            log::Level::Info,
            "client {id}: PUBLISH to {topic} of {size} bytes dropped, larger than message_size_limit {limit}"
        );
        return;
    }
    if !allowed(broker, &client.info(), &message, false) {
        return;
    }
    let mut pressed = Vec::new();
    client.wait_for(broker.publish_from(message, retain, &mut pressed));
    client.press(pressed);
}
