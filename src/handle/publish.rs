//! Inbound PUBLISH at QoS 0, 1 and 2.

use super::{Client, Flow};
use crate::broker::Broker;
use crate::packet::{Packet, Publish, QoS};
use crate::session::Message;

/// Routes an inbound PUBLISH and queues its acknowledgement: PUBACK for
/// QoS 1 (MQTT-4.3.2-2), PUBREC for QoS 2 (MQTT-4.3.3-2), where a QoS 2
/// message re-sent before PUBREL is acknowledged but not routed again.
pub fn publish(client: &Client, broker: &Broker, p: Publish, out: &mut Vec<Packet>) -> Flow {
    broker.stats().received();
    let message = Message { topic: p.topic, payload: p.payload, qos: p.qos, retain: p.retain };
    match (p.qos, p.pid) {
        (QoS::AtLeastOnce, Some(pid)) => {
            route(client, broker, message, p.retain);
            out.push(Packet::Puback(pid));
        }
        (QoS::ExactlyOnce, Some(pid)) => {
            let Some(new) = client.with_session(|s| s.receive_qos2(pid)) else {
                return Flow::TakenOver;
            };
            if new {
                route(client, broker, message, p.retain);
            }
            out.push(Packet::Pubrec(pid));
        }
        _ => route(client, broker, message, p.retain),
    }
    Flow::Continue
}

/// Hands the message to the broker, except on `$SYS` topics, which only the
/// broker publishes, and where the ACL or the hooks refuse it (the PUBLISH
/// is still acknowledged, MQTT-3.3.5-2).
fn route(client: &Client, broker: &Broker, message: Message, retain: bool) {
    if !broker.guards().allow_publish(&client.info(), &message) {
        let (id, topic) = (&client.id, &message.topic);
        crate::limited!("denied publish", log::Level::Info, "client {id} may not publish to {topic}: not delivered");
        return;
    }
    if message.topic.starts_with("$SYS") {
        let (id, topic) = (&client.id, &message.topic);
        crate::limited!(
            "$SYS publish",
            log::Level::Info,
            "client {id} published to {topic}: ignored, $SYS topics are the broker's"
        );
        return;
    }
    client.wait_for(broker.publish(message, retain));
}
