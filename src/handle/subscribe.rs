//! SUBSCRIBE and UNSUBSCRIBE.

use super::{Client, Flow};
use crate::broker::Broker;
use crate::packet::{Packet, Pid, QoS};

/// Adds the subscriptions and answers SUBACK with one code per filter, in
/// order (MQTT-3.8.4-1/-5); retained messages follow through the session queue.
pub fn subscribe(client: &Client, broker: &Broker, pid: Pid, filters: &[(String, QoS)], out: &mut Vec<Packet>) -> Flow {
    let Some((codes, ticket)) = broker.subscribe(&client.id, &client.session, client.conn, filters) else {
        return Flow::TakenOver;
    };
    client.wait_for(ticket);
    log::debug!("client {} subscribed to {:?}", client.id, filters);
    out.push(Packet::Suback(pid, codes));
    Flow::Continue
}

/// Removes the subscriptions and answers UNSUBACK, even for filters that were
/// not subscribed (MQTT-3.10.4-4/-5).
pub fn unsubscribe(client: &Client, broker: &Broker, pid: Pid, filters: &[String], out: &mut Vec<Packet>) -> Flow {
    let Some(ticket) = broker.unsubscribe(&client.id, &client.session, client.conn, filters) else {
        return Flow::TakenOver;
    };
    client.wait_for(ticket);
    out.push(Packet::Unsuback(pid));
    Flow::Continue
}
