//! SUBSCRIBE and UNSUBSCRIBE.

use super::{Client, Flow};
use crate::broker::Broker;
use crate::packet::{Packet, Pid, QoS, SubackCode};

/// Adds the subscriptions and answers SUBACK with one code per filter, in
/// order (MQTT-3.8.4-1/-5); retained messages follow through the session queue.
pub fn subscribe(client: &Client, broker: &Broker, pid: Pid, filters: &[(String, QoS)], out: &mut Vec<Packet>) -> Flow {
    let guards = broker.guards();
    let allowed: Vec<bool> = filters.iter().map(|(f, q)| guards.allow_subscribe(&client.info(), f, *q)).collect();
    let granted: Vec<(String, QoS)> =
        filters.iter().zip(&allowed).filter(|(_, ok)| **ok).map(|(f, _)| f.clone()).collect();
    let Some((granted_codes, ticket)) = broker.subscribe(&client.id, &client.session, client.conn, &granted) else {
        return Flow::TakenOver;
    };
    client.wait_for(ticket);
    let mut granted_codes = granted_codes.into_iter();
    let codes = allowed.iter().map(|ok| match ok {
        true => granted_codes.next().unwrap_or(SubackCode::Failure),
        false => SubackCode::Failure,
    });
    let codes: Vec<SubackCode> = codes.collect();
    for ((filter, _), ok) in filters.iter().zip(&allowed) {
        match ok {
            true => log::debug!("client {} subscribed to {filter}", client.id),
            false => {
                let id = &client.id;
                crate::limited!(
                    "denied subscribe",
                    log::Level::Info,
                    "client {id} may not subscribe to {filter}: refused (0x80)"
                )
            }
        }
    }
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
