//! A deliberately tiny MQTT 3.1.1 client for the examples: CONNECT,
//! SUBSCRIBE, PUBLISH at QoS 0 and reading one PUBLISH, as raw bytes over any
//! `futures::io` stream. It is independent of midge's own codec.

use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::io;

/// One connection to a broker.
pub struct Client<S> {
    stream: S,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Sends CONNECT (clean session, keepalive 60 s) and checks CONNACK 0.
    pub async fn connect(stream: S, client_id: &str) -> io::Result<Client<S>> {
        let mut client = Client { stream };
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
        body.extend(field(client_id.as_bytes()));
        client.send(0x10, &body).await?;
        let (header, body) = client.recv().await?;
        check(header == 0x20 && body == [0, 0], "CONNACK 0")?;
        Ok(client)
    }

    /// Subscribes to `filter` at QoS 0 and waits for SUBACK.
    pub async fn subscribe(&mut self, filter: &str) -> io::Result<()> {
        let mut body = vec![0, 1];
        body.extend(field(filter.as_bytes()));
        body.push(0);
        self.send(0x82, &body).await?;
        let (header, body) = self.recv().await?;
        check(header == 0x90 && body == [0, 1, 0], "SUBACK granting QoS 0")
    }

    /// Publishes at QoS 0.
    pub async fn publish(&mut self, topic: &str, payload: &[u8]) -> io::Result<()> {
        let mut body = field(topic.as_bytes());
        body.extend_from_slice(payload);
        self.send(0x30, &body).await
    }

    /// Waits for the next PUBLISH and returns its topic and payload.
    pub async fn next_publish(&mut self) -> io::Result<(String, Vec<u8>)> {
        let (header, body) = self.recv().await?;
        check(header >> 4 == 3 && body.len() >= 2, "PUBLISH")?;
        let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let topic = String::from_utf8_lossy(&body[2..2 + len]).into_owned();
        Ok((topic, body[2 + len..].to_vec()))
    }

    async fn send(&mut self, header: u8, body: &[u8]) -> io::Result<()> {
        let mut packet = vec![header];
        let mut len = body.len();
        loop {
            let byte = (len % 128) as u8;
            len /= 128;
            packet.push(if len > 0 { byte | 0x80 } else { byte });
            if len == 0 {
                break;
            }
        }
        packet.extend_from_slice(body);
        self.stream.write_all(&packet).await?;
        self.stream.flush().await
    }

    async fn recv(&mut self) -> io::Result<(u8, Vec<u8>)> {
        let mut byte = [0u8];
        self.stream.read_exact(&mut byte).await?;
        let header = byte[0];
        let mut len = 0usize;
        for shift in [0, 7, 14, 21] {
            self.stream.read_exact(&mut byte).await?;
            len |= usize::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body).await?;
        Ok((header, body))
    }
}

fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

fn check(ok: bool, expected: &str) -> io::Result<()> {
    match ok {
        true => Ok(()),
        false => Err(io::Error::new(io::ErrorKind::InvalidData, format!("expected {expected}"))),
    }
}
