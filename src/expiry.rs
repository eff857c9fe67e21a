//! Session expiry: persistent sessions whose client stays away longer than
//! `session_expiry` are removed (Mosquitto's `persistent_client_expiration`).

use crate::broker::Broker;
use crate::runtime::Runtime;
use async_channel::Receiver;
use futures::future::{Either, select};
use futures::pin_mut;
use std::time::Duration;

/// The longest time between two expiry checks.
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// Checks for expired sessions until `stopped` closes; does nothing when
/// expiry is off.
pub async fn run<R: Runtime>(rt: R, broker: Broker, stopped: Receiver<()>) {
    let Some(max_age) = broker.config().session_expiry else { return };
    let interval = (max_age / 4).clamp(Duration::from_millis(100), MAX_CHECK_INTERVAL);
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
