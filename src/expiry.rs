//! Session expiry: persistent sessions whose client stays away longer than
//! `session_expiry` (Mosquitto's `persistent_client_expiration`) or their
//! own 5.0 Session Expiry Interval are removed.

use crate::broker::Broker;
use crate::runtime::Runtime;
use async_channel::Receiver;
use futures::future::{Either, select};
use futures::pin_mut;
use std::time::Duration;

/// The longest time between two expiry checks: a 5.0 session's expiry
/// interval is in seconds, so it ends within a second of it.
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Checks for expired sessions until `stopped` closes.
pub async fn run<R: Runtime>(rt: R, broker: Broker, stopped: Receiver<()>) {
    let max_age = broker.config().session_expiry;
    let interval =
        max_age.map_or(MAX_CHECK_INTERVAL, |max| (max / 4).clamp(Duration::from_millis(100), MAX_CHECK_INTERVAL));
    loop {
        let tick = rt.sleep(interval);
        let stop = stopped.recv();
        pin_mut!(tick, stop);
        if let Either::Right(_) = select(tick, stop).await {
            return;
        }
        broker.expire_sessions(max_age);
    }
}
