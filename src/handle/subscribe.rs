//! SUBSCRIBE and UNSUBSCRIBE.

use super::{Client, Flow};
use crate::broker::Broker;
use crate::packet::{Packet, Pid, QoS, SubackCode};
use crate::topic;

/// Adds the subscriptions and answers SUBACK with one code per filter, in
/// order (MQTT-3.8.4-1/-5); retained messages follow through the session queue.
/// A filter deeper than `max_topic_levels` is refused (0x80).
pub fn subscribe(client: &Client, broker: &Broker, pid: Pid, filters: &[(String, QoS)], out: &mut Vec<Packet>) -> Flow {
    let guards = broker.guards();
    let max_levels = broker.config().max_topic_levels;
    let allowed: Vec<bool> = filters
        .iter()
        .map(|(f, q)| {
            if topic::deeper_than(f, max_levels) {
                let id = &client.id;
                crate::limited!(
                    "deep filter",
                    log::Level::Warn,
                    "client {id} subscribed to a filter deeper than max_topic_levels ({max_levels}): refused (0x80)"
                );
                return false;
            }
            guards.allow_subscribe(&client.info(), f, *q)
        })
        .collect();
    let granted: Vec<(String, QoS)> =
        filters.iter().zip(&allowed).filter(|(_, ok)| **ok).map(|(f, _)| f.clone()).collect();
    let mut pressed = Vec::new();
    let subscribed = broker.subscribe(&client.id, &client.session, client.conn, &granted, &mut pressed);
    let Some((granted_codes, ticket)) = subscribed else {
        return Flow::TakenOver;
    };
    client.wait_for(ticket);
    client.press(pressed);
    let mut granted_codes = granted_codes.into_iter();
    let codes = allowed.iter().map(|ok| match ok {
        true => granted_codes.next().unwrap_or(SubackCode::Failure),
        false => SubackCode::Failure,
    });
    let codes: Vec<SubackCode> = codes.collect();
    for ((filter, _), ok) in filters.iter().zip(&allowed) {
        match ok {
            true => log::debug!("client {} subscribed to {filter}", client.id),
            false if topic::deeper_than(filter, max_levels) => {}
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
