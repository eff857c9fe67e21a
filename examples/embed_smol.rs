//! cargo run --example embed_smol --features smol
//!
//! An application that owns a smol executor runs midge on it: it starts the
//! broker, sends a message through it with a plain TCP client, receives it,
//! shuts the broker down and exits 0.

#[path = "support/mini_client.rs"]
mod mini_client;

use midge::{Broker, Config, Server, Smol};
use mini_client::Client;
use smol::net::TcpStream;
use std::{io, sync::Arc, thread};

fn main() -> io::Result<()> {
    femme::with_level(log::LevelFilter::Info);

    // The application's executor, driven by two threads of its own.
    let executor = Arc::new(smol::Executor::new());
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    for _ in 0..2 {
        let (executor, stopped) = (executor.clone(), stopped.clone());
        thread::spawn(move || smol::block_on(executor.run(stopped.recv())));
    }

    let app = async {
        let config = Config::listening_on("127.0.0.1:0".parse().unwrap());
        let server = Server::start(
            Smol::with_executor(executor.clone()),
            Broker::in_memory(config).map_err(std::io::Error::other)?,
        )
        .await?;
        let addr = server.local_addrs()[0];

        let mut subscriber = Client::connect(TcpStream::connect(addr).await?, "subscriber").await?;
        subscriber.subscribe("greetings/#").await?;
        let mut publisher = Client::connect(TcpStream::connect(addr).await?, "publisher").await?;
        publisher.publish("greetings/world", b"hello from smol").await?;
        let (topic, payload) = subscriber.next_publish().await?;
        println!("received on {topic}: {}", String::from_utf8_lossy(&payload));
        assert_eq!(payload, b"hello from smol");

        server.shutdown().await;
        Ok(())
    };
    let result = smol::block_on(executor.run(app));
    stop.close();
    result
}
