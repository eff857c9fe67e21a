//! cargo run --example embed_enhanced_auth --features smol
//!
//! MQTT 5.0 enhanced authentication (AUTH packets) decided by the
//! application: the method "demo-challenge" sends the client a nonce and
//! accepts the SHA-256 of a shared secret followed by that nonce. A client
//! that knows the secret connects; one that does not gets CONNACK 0x87.

use futures::{AsyncReadExt, AsyncWriteExt};
use midge::security::{AuthExchange, AuthStep, ConnectInfo, Hooks};
use midge::v5::{Auth, Connect, Packet, Properties, ReasonCode};
use midge::{Broker, Config, Server, Smol};
use sha2::{Digest, Sha256};
use smol::net::TcpStream;
use std::{io, sync::Arc};

const METHOD: &str = "demo-challenge";
const SECRET: &[u8] = b"correct horse battery staple";

/// The application's rules: one challenge–response method.
struct ChallengeResponse;

/// One exchange: the nonce sent, once sent.
struct Exchange {
    nonce: Option<[u8; 16]>,
}

fn answer(secret: &[u8], nonce: &[u8]) -> Vec<u8> {
    Sha256::new().chain_update(secret).chain_update(nonce).finalize().to_vec()
}

impl AuthExchange for Exchange {
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep {
        match self.nonce {
            None => {
                let mut nonce = [0; 16];
                getrandom::fill(&mut nonce).expect("random nonce");
                self.nonce = Some(nonce);
                AuthStep::Continue(nonce.to_vec())
            }
            Some(nonce) if data == Some(answer(SECRET, &nonce).as_slice()) => AuthStep::Success(None),
            Some(_) => AuthStep::Fail,
        }
    }
}

impl Hooks for ChallengeResponse {
    fn start_auth(&self, method: &str, connect: &ConnectInfo<'_>) -> Option<Box<dyn AuthExchange>> {
        println!("client {} starts {method}", connect.client_id);
        (method == METHOD).then(|| Box::new(Exchange { nonce: None }) as Box<dyn AuthExchange>)
    }
}

/// Writes one packet.
async fn send(stream: &mut TcpStream, packet: &Packet) -> io::Result<()> {
    let mut buf = bytes::BytesMut::new();
    midge::v5::encode(packet, &mut buf).map_err(io::Error::other)?;
    stream.write_all(&buf).await
}

/// Reads one packet (small ones: this client expects only AUTH and CONNACK).
async fn recv(stream: &mut TcpStream) -> io::Result<Packet> {
    let mut head = [0; 2];
    stream.read_exact(&mut head).await?;
    let mut body = vec![0; usize::from(head[1])];
    stream.read_exact(&mut body).await?;
    midge::v5::decode(head[0], body.into()).map_err(io::Error::other)
}

/// Connects as `client_id`, answering the challenge with `secret`; the
/// CONNACK reason code.
async fn connect(addr: std::net::SocketAddr, client_id: &str, secret: &[u8]) -> io::Result<ReasonCode> {
    let mut stream = TcpStream::connect(addr).await?;
    let properties = Properties { auth_method: Some(METHOD.into()), ..Properties::default() };
    let connect = Connect {
        keep_alive: 60,
        client_id: client_id.into(),
        clean_start: true,
        properties,
        will: None,
        username: None,
        password: None,
    };
    send(&mut stream, &Packet::Connect(Box::new(connect))).await?;
    loop {
        match recv(&mut stream).await? {
            Packet::Auth(challenge) => {
                let nonce = challenge.properties.auth_data.unwrap_or_default();
                let properties = Properties {
                    auth_method: Some(METHOD.into()),
                    auth_data: Some(answer(secret, &nonce).into()),
                    ..Properties::default()
                };
                let reason = ReasonCode::CONTINUE_AUTHENTICATION;
                send(&mut stream, &Packet::Auth(Auth { reason, properties })).await?;
            }
            Packet::Connack(connack) => return Ok(connack.reason),
            other => return Err(io::Error::other(format!("unexpected {}", other.name()))),
        }
    }
}

fn main() -> io::Result<()> {
    femme::with_level(log::LevelFilter::Info);
    let config = Config { data_dir: None, ..Config::listening_on("127.0.0.1:0".parse().unwrap()) };
    let broker = Broker::open(config).map_err(io::Error::other)?;
    broker.set_hooks(Arc::new(ChallengeResponse));
    let rt = Smol::with_threads(2);
    futures::executor::block_on(async {
        let server = Server::start(rt, broker).await?;
        let addr = server.local_addrs()[0];
        let knows = connect(addr, "knows-the-secret", SECRET).await?;
        let guesses = connect(addr, "guesses", b"hunter2").await?;
        println!("with the secret: CONNACK {knows}; without: CONNACK {guesses}");
        assert_eq!((knows, guesses), (ReasonCode::SUCCESS, ReasonCode::NOT_AUTHORIZED));
        server.shutdown().await;
        Ok(())
    })
}
