//! cargo run --example embed_auth --features smol
//!
//! An application decides who may connect and what may be published, with
//! midge's `Hooks` instead of (or on top of) Mosquitto's password and ACL
//! files: it lets in only the user "sensor", keeps it to `sensors/...`, and
//! drops readings that are not numbers before they are routed.

#[path = "support/mini_client.rs"]
mod mini_client;

use midge::packet::{ConnectCode, QoS};
use midge::security::{ClientInfo, ConnectInfo, Hooks};
use midge::session::Message;
use midge::{Broker, Config, Server, Smol};
use mini_client::Client;
use smol::net::TcpStream;
use std::{io, sync::Arc};

/// The application's rules.
struct SensorsOnly;

impl Hooks for SensorsOnly {
    fn authenticate(&self, connect: &ConnectInfo<'_>) -> Result<(), ConnectCode> {
        match connect.username {
            Some("sensor") | None => Ok(()),
            Some(_) => Err(ConnectCode::NotAuthorized),
        }
    }

    fn authorize_publish(&self, client: &ClientInfo<'_>, topic: &str) -> bool {
        client.username != Some("sensor") || topic.starts_with("sensors/")
    }

    fn authorize_subscribe(&self, _: &ClientInfo<'_>, filter: &str, _: QoS) -> bool {
        filter.starts_with("sensors/")
    }

    fn on_message(&self, _: &ClientInfo<'_>, message: &Message) -> bool {
        std::str::from_utf8(&message.payload).is_ok_and(|s| s.parse::<f64>().is_ok())
    }
}

fn main() -> io::Result<()> {
    femme::with_level(log::LevelFilter::Info);
    let config = Config { data_dir: None, ..Config::listening_on("127.0.0.1:0".parse().unwrap()) };
    let broker = Broker::open(config).map_err(io::Error::other)?;
    broker.set_hooks(Arc::new(SensorsOnly));
    let rt = Smol::with_threads(2);
    futures::executor::block_on(async {
        let server = Server::start(rt, broker).await?;
        let addr = server.local_addrs()[0];
        let mut dashboard = Client::connect(TcpStream::connect(addr).await?, "dashboard").await?;
        dashboard.subscribe("sensors/#").await?;
        let mut sensor = Client::connect(TcpStream::connect(addr).await?, "probe-1").await?;
        sensor.publish("sensors/temp", b"not a number").await?; // dropped by on_message
        sensor.publish("sensors/temp", b"21.5").await?;
        let (topic, payload) = dashboard.next_publish().await?;
        println!("dashboard got {topic}: {}", String::from_utf8_lossy(&payload));
        assert_eq!(payload, b"21.5");
        server.shutdown().await;
        Ok(())
    })
}
