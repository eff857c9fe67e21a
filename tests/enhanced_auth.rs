//! MQTT 5.0 enhanced authentication (section 4.12) through the embedding
//! application's hooks: a challenge–response exchange between CONNECT and
//! CONNACK, re-authentication, and refusals.

use crate::support::TestBroker;
use crate::support::v5::{V5, connect_packet};
use midge::packet::ReasonCode as R;
use midge::security::{AuthExchange, AuthStep, ConnectInfo, Hooks};
use midge::v5::{Auth, Packet, Properties};
use std::sync::Arc;

const METHOD: &str = "midge-challenge";

/// Sends a nonce, accepts "secret:" followed by it.
struct Challenge;

struct Exchange {
    nonce: Option<Vec<u8>>,
}

impl AuthExchange for Exchange {
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep {
        match self.nonce.take() {
            None => {
                let nonce = b"nonce-1".to_vec();
                self.nonce = Some(nonce.clone());
                AuthStep::Continue(nonce)
            }
            Some(nonce) => match data == Some([&b"secret:"[..], &nonce].concat().as_slice()) {
                true => AuthStep::Success(Some(b"welcome".to_vec())),
                false => AuthStep::Fail,
            },
        }
    }
}

impl Hooks for Challenge {
    fn start_auth(&self, method: &str, _: &ConnectInfo<'_>) -> Option<Box<dyn AuthExchange>> {
        (method == METHOD).then(|| Box::new(Exchange { nonce: None }) as Box<dyn AuthExchange>)
    }
}

fn with_hooks(b: &TestBroker) {
    b.broker.set_hooks(Arc::new(Challenge));
}

fn auth(reason: R, method: &str, data: &[u8]) -> Packet {
    let properties =
        Properties { auth_method: Some(method.into()), auth_data: Some(data.to_vec().into()), ..Properties::default() };
    Packet::Auth(Auth { reason, properties })
}

/// Sends CONNECT with the method and answers the challenge with `answer`.
fn connect_answering(b: &TestBroker, id: &str, answer: &[u8]) -> (V5, Packet) {
    let mut c = V5::over(crate::support::client::Raw::connect(b.addr));
    let mut connect = connect_packet(id);
    connect.properties.auth_method = Some(METHOD.into());
    connect.properties.auth_data = Some(b"hello".to_vec().into());
    c.send(&Packet::Connect(Box::new(connect)));
    match c.recv() {
        Packet::Auth(a) => {
            assert_eq!(a.reason, R::CONTINUE_AUTHENTICATION, "MQTT-4.12.0-2");
            assert_eq!(a.properties.auth_method.as_deref(), Some(METHOD), "MQTT-4.12.0-5");
            assert_eq!(a.properties.auth_data.as_deref(), Some(&b"nonce-1"[..]));
        }
        other => panic!("expected AUTH 0x18, got {other:?}"),
    }
    c.send(&auth(R::CONTINUE_AUTHENTICATION, METHOD, answer));
    let answer = c.recv();
    (c, answer)
}

runtime_test!(
    /// MQTT-4.12.0-2, MQTT-4.12.0-5: the server asks for more data with AUTH
    /// 0x18, and the CONNACK that accepts carries the same Authentication
    /// Method (and the exchange's final data).
    mqtt_4_12_0_5_a_challenge_answered_connects_with_the_method_in_connack,
    |b: &TestBroker| {
        with_hooks(b);
        let (mut c, connack) = connect_answering(b, "answers", b"secret:nonce-1");
        let Packet::Connack(connack) = connack else { panic!("expected CONNACK, got {connack:?}") };
        assert_eq!(connack.reason, R::SUCCESS);
        assert_eq!(connack.properties.auth_method.as_deref(), Some(METHOD));
        assert_eq!(connack.properties.auth_data.as_deref(), Some(&b"welcome"[..]));
        c.subscribe("auth/t", 1);
    }
);

runtime_test!(
    /// MQTT-4.12.0-4: the server may refuse at any step: a wrong answer gets
    /// CONNACK 0x87 and the connection closes.
    mqtt_4_12_0_4_a_wrong_answer_is_refused_and_closed,
    |b: &TestBroker| {
        with_hooks(b);
        let (mut c, connack) = connect_answering(b, "wrong", b"guess");
        let Packet::Connack(connack) = connack else { panic!("expected CONNACK, got {connack:?}") };
        assert_eq!(connack.reason, R::NOT_AUTHORIZED);
        c.expect_closed();
        // Others are not affected.
        V5::client(b.addr, "bystander").ping();
    }
);

runtime_test!(
    /// MQTT-4.12.0-6: without an Authentication Method in CONNECT the server
    /// sends no AUTH and no method in CONNACK (hooks installed or not).
    mqtt_4_12_0_6_no_method_no_auth,
    |b: &TestBroker| {
        with_hooks(b);
        let (mut c, connack) = V5::accepted(b.addr, "plain", |_| {});
        assert_eq!(connack.properties.auth_method, None);
        c.ping();
    }
);

runtime_test!(
    /// 4.12.1: re-authentication with AUTH 0x19 and the same method runs the
    /// exchange again, AUTH 0x00 on success; MQTT-4.12.1-2: a refused one
    /// closes with DISCONNECT 0x87.
    mqtt_4_12_1_2_re_authentication,
    |b: &TestBroker| {
        with_hooks(b);
        let (mut c, _) = connect_answering(b, "again", b"secret:nonce-1");
        c.send(&auth(R::RE_AUTHENTICATE, METHOD, b"hello"));
        let Packet::Auth(challenge) = c.recv() else { panic!("expected AUTH 0x18") };
        assert_eq!(challenge.reason, R::CONTINUE_AUTHENTICATION);
        c.send(&auth(R::CONTINUE_AUTHENTICATION, METHOD, b"secret:nonce-1"));
        let Packet::Auth(done) = c.recv() else { panic!("expected AUTH 0x00") };
        assert_eq!((done.reason, done.properties.auth_method.as_deref()), (R::SUCCESS, Some(METHOD)));
        c.ping();
        c.send(&auth(R::RE_AUTHENTICATE, METHOD, b"hello"));
        assert!(matches!(c.recv(), Packet::Auth(_)));
        c.send(&auth(R::CONTINUE_AUTHENTICATION, METHOD, b"guess"));
        c.expect_disconnect(R::NOT_AUTHORIZED);
    }
);

runtime_test!(
    /// MQTT-4.12.1-1 broken by the client: a re-authentication with another
    /// method is a Protocol Error (DISCONNECT 0x82).
    mqtt_4_12_1_1_re_authentication_with_another_method_gets_0x82,
    |b: &TestBroker| {
        with_hooks(b);
        let (mut c, _) = connect_answering(b, "other", b"secret:nonce-1");
        c.send(&auth(R::RE_AUTHENTICATE, "SCRAM-SHA-256", b"x"));
        c.expect_disconnect(R::PROTOCOL_ERROR);
    }
);

runtime_test!(
    /// MQTT-4.12.0-3 broken by the client: anything but AUTH 0x18 in answer
    /// to the server's AUTH refuses the connection (CONNACK 0x82).
    mqtt_4_12_0_3_a_non_auth_answer_is_a_protocol_error,
    |b: &TestBroker| {
        with_hooks(b);
        let mut c = V5::over(crate::support::client::Raw::connect(b.addr));
        let mut connect = connect_packet("rude");
        connect.properties.auth_method = Some(METHOD.into());
        c.send(&Packet::Connect(Box::new(connect)));
        assert!(matches!(c.recv(), Packet::Auth(_)));
        c.send(&Packet::Pingreq);
        let Packet::Connack(connack) = c.recv() else { panic!("expected CONNACK") };
        assert_eq!(connack.reason, R::PROTOCOL_ERROR);
        c.expect_closed();
    }
);
