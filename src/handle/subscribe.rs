//! SUBSCRIBE and UNSUBSCRIBE.

use super::{Client, Flow};
use crate::broker::Broker;
use crate::packet::{Packet, Pid, Protocol, ReasonCode, Subscribe, Subscription};
use crate::topic;

/// Adds the subscriptions and answers SUBACK with one code per filter, in
/// order (MQTT-3.8.4-1/-5); retained messages follow through the session queue.
/// A filter deeper than `max_topic_levels` is refused (0x80; 5.0: 0x8F),
/// one the ACL refuses too (0x80; 5.0: 0x87). Shared subscriptions
/// (`$share/{name}/{filter}`) work for 3.1.1 clients too, as in Mosquitto.
pub fn subscribe(client: &Client, broker: &Broker, sub: Subscribe, out: &mut Vec<Packet>) -> Flow {
    let guards = broker.guards();
    let max_levels = broker.config().max_topic_levels;
    let id = client.id();
    let refusals: Vec<Option<ReasonCode>> = sub
        .filters
        .iter()
        .map(|(f, options)| {
            if topic::deeper_than(f, max_levels) {
                crate::limited!(
                    "deep filter",
                    log::Level::Warn,
                    "client {id} subscribed to a filter deeper than max_topic_levels ({max_levels}): refused"
                );
                return Some(ReasonCode::TOPIC_FILTER_INVALID);
            }
            // A shared subscription is checked as the filter it shares.
            let checked = topic::shared(f).map_or(f.as_str(), |(_, inner)| inner);
            if !guards.allow_subscribe(&client.info(), checked, options.qos) {
                crate::limited!("denied subscribe", log::Level::Info, "client {id} may not subscribe to {f}: refused");
                return Some(ReasonCode::NOT_AUTHORIZED);
            }
            None
        })
        .collect();
    let granted: Vec<(String, Subscription)> = sub
        .filters
        .iter()
        .zip(&refusals)
        .filter(|(_, refused)| refused.is_none())
        .map(|((f, options), _)| (f.clone(), Subscription { options: *options, id: sub.id }))
        .collect();
    let mut pressed = Vec::new();
    let subscribed = broker.subscribe(client.id(), &client.session, client.conn, &granted, &mut pressed);
    let Some((granted_codes, ticket)) = subscribed else {
        return Flow::TakenOver;
    };
    client.wait_for(ticket);
    client.press(pressed);
    for (filter, _) in &granted {
        log::debug!("client {id} subscribed to {filter}");
    }
    let mut granted_codes = granted_codes.into_iter();
    let codes = refusals.iter().map(|refused| match refused {
        None => granted_codes.next().unwrap_or(ReasonCode::UNSPECIFIED_ERROR),
        Some(code) => *code,
    });
    out.push(Packet::Suback(sub.pid, codes.collect()));
    Flow::Continue
}

/// Removes the subscriptions and answers UNSUBACK, even for filters that were
/// not subscribed (MQTT-3.10.4-4/-5); 5.0 says which ones were not (0x11).
pub fn unsubscribe(client: &Client, broker: &Broker, pid: Pid, filters: &[String], out: &mut Vec<Packet>) -> Flow {
    let Some((existed, ticket)) = broker.unsubscribe(client.id(), &client.session, client.conn, filters) else {
        return Flow::TakenOver;
    };
    client.wait_for(ticket);
    let codes = match client.protocol {
        Protocol::V5 => {
            existed.iter().map(|&e| if e { ReasonCode::SUCCESS } else { ReasonCode::NO_SUBSCRIPTION_EXISTED }).collect()
        }
        _ => Vec::new(),
    };
    out.push(Packet::Unsuback(pid, codes));
    Flow::Continue
}
