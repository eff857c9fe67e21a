//! cargo run --example embed_async_std --features async-std
//!
//! An async-std application runs midge on async-std's executor: it starts the
//! broker, sends a message through it with a plain TCP client, receives it,
//! shuts the broker down and exits 0.

#[path = "support/mini_client.rs"]
mod mini_client;

use async_std::net::TcpStream;
use midge::{AsyncStd, Broker, Config, Server};
use mini_client::Client;
use std::io;

fn main() -> io::Result<()> {
    femme::with_level(log::LevelFilter::Info);
    async_std::task::block_on(app())
}

async fn app() -> io::Result<()> {
    let config = Config::listening_on("127.0.0.1:0".parse().unwrap());
    let server = Server::start(AsyncStd, Broker::in_memory(config).map_err(std::io::Error::other)?).await?;
    let addr = server.local_addrs()[0];

    let mut subscriber = Client::connect(TcpStream::connect(addr).await?, "subscriber").await?;
    subscriber.subscribe("greetings/#").await?;
    let mut publisher = Client::connect(TcpStream::connect(addr).await?, "publisher").await?;
    publisher.publish("greetings/world", b"hello from async-std").await?;
    let (topic, payload) = subscriber.next_publish().await?;
    println!("received on {topic}: {}", String::from_utf8_lossy(&payload));
    assert_eq!(payload, b"hello from async-std");

    server.shutdown().await;
    Ok(())
}
