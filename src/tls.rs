//! TLS for listeners: rustls (ring provider) through futures-rustls, so one
//! implementation serves every runtime adapter.
//!
//! A [`TlsAcceptor`] is built from a listener's [`TlsFiles`] and can be
//! rebuilt in place on SIGHUP ([`TlsAcceptor::reload`]): connections already
//! open keep the configuration they were accepted with, new ones get the new
//! one. [`TlsAcceptor::accept`] runs the handshake and reports the client
//! certificate's Common Name for `use_identity_as_username`.

use crate::config::TlsFiles;
use futures::io::{AsyncRead, AsyncWrite};
use futures_rustls::rustls::{
    self, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

/// Why a listener's TLS files cannot be used.
#[derive(Debug)]
pub enum TlsError {
    /// One file is unreadable or holds nothing usable.
    File {
        /// The configuration key naming the file: `certfile`, `keyfile` or `cafile`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The files do not make a valid configuration together.
    Config(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::File { key, path, problem } => write!(f, "{key} {}: {problem}", path.display()),
            TlsError::Config(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for TlsError {}

fn file_error(key: &'static str, path: &Path, problem: impl Into<String>) -> TlsError {
    TlsError::File { key, path: path.to_owned(), problem: problem.into() }
}

/// Describes a PEM error; `wanted` names what the file should hold.
fn pem_problem(error: rustls::pki_types::pem::Error, wanted: &str) -> String {
    use rustls::pki_types::pem::Error;
    match error {
        Error::Io(e) => format!("cannot read: {e}"),
        Error::NoItemsFound => format!("no {wanted} found"),
        e => format!("bad PEM: {e}"),
    }
}

/// Reads every certificate of a PEM file; at least one is required.
fn load_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let wanted = "PEM certificate (BEGIN CERTIFICATE)";
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(key, path, pem_problem(e, wanted)))?;
    if certs.is_empty() {
        return Err(file_error(key, path, format!("no {wanted} found")));
    }
    Ok(certs)
}

/// Builds a server configuration from a listener's files.
fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = load_certs("certfile", &files.certfile)?;
    let key = PrivateKeyDer::from_pem_file(&files.keyfile).map_err(|e| {
        file_error("keyfile", &files.keyfile, pem_problem(e, "PEM private key (PKCS#8, PKCS#1 or SEC1)"))
    })?;
    // Loaded here first so an unusable key is blamed on the key file alone.
    provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| file_error("keyfile", &files.keyfile, format!("unusable private key: {e}")))?;

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(format!("tls: {e}")))?;
    let builder = match &files.cafile {
        None if files.require_certificate => {
            return Err(TlsError::Config("require_certificate needs a cafile to check client certificates".into()));
        }
        None => builder.with_no_client_auth(),
        Some(cafile) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs("cafile", cafile)? {
                roots.add(cert).map_err(|e| file_error("cafile", cafile, format!("unusable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if files.require_certificate { verifier } else { verifier.allow_unauthenticated() };
            let verifier = verifier.build().map_err(|e| file_error("cafile", cafile, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder.with_single_cert(certs, key).map_err(|e| {
        TlsError::Config(format!("certfile {} with keyfile {}: {e}", files.certfile.display(), files.keyfile.display()))
    })
}

/// Accepts TLS connections for one listener; its configuration can be
/// replaced at run time.
pub struct TlsAcceptor {
    config: RwLock<Arc<ServerConfig>>,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor").finish_non_exhaustive()
    }
}

/// An accepted TLS connection.
#[derive(Debug)]
pub struct TlsConnection<S> {
    /// The encrypted stream; read and write it like the plain one.
    pub stream: futures_rustls::server::TlsStream<S>,
    /// The Common Name of the client certificate's subject, if the client
    /// presented a certificate (only asked for when the listener has a
    /// `cafile`) and its subject has a Common Name.
    pub identity: Option<String>,
}

impl TlsAcceptor {
    /// Loads the certificate chain (`certfile`), its private key (`keyfile`:
    /// PKCS#8, PKCS#1 or SEC1, PEM) and, with a `cafile`, the CA
    /// certificates that client certificates must chain to. Clients are asked
    /// for a certificate only when there is a `cafile`; with
    /// `require_certificate` a client without a valid one fails the
    /// handshake, otherwise it may connect without one (but a client
    /// presenting an invalid certificate always fails). `require_certificate`
    /// without a `cafile` is an error. TLS 1.2 and 1.3 are offered.
    pub fn new(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
        Ok(TlsAcceptor { config: RwLock::new(Arc::new(server_config(files)?)) })
    }

    /// Re-reads the files (SIGHUP). On an error the configuration in force
    /// stays and the error is returned. Connections already open are not
    /// affected either way.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), TlsError> {
        let config = Arc::new(server_config(files)?);
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    /// The configuration new connections are accepted with.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Runs the server side of the TLS handshake on `stream`.
    ///
    /// This has no time limit of its own: a client that connects and sends
    /// nothing keeps it waiting forever, so the caller must race it against
    /// a timeout (e.g. the CONNECT timeout) and drop it when that fires.
    /// Errors (a plain-text client, a refused or missing client certificate,
    /// no shared cipher suite) are the client's fault or a closed socket;
    /// log them and drop the connection.
    pub async fn accept<S>(&self, stream: S) -> io::Result<TlsConnection<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = futures_rustls::TlsAcceptor::from(self.config()).accept(stream).await?;
        let identity =
            stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()).and_then(|leaf| common_name(leaf));
        Ok(TlsConnection { stream, identity })
    }
}

/// DER tags this module looks at.
mod tag {
    pub const INTEGER: u8 = 0x02;
    pub const OID: u8 = 0x06;
    pub const UTF8_STRING: u8 = 0x0c;
    pub const PRINTABLE_STRING: u8 = 0x13;
    pub const TELETEX_STRING: u8 = 0x14;
    pub const IA5_STRING: u8 = 0x16;
    pub const UNIVERSAL_STRING: u8 = 0x1c;
    pub const BMP_STRING: u8 = 0x1e;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;
    /// `[0] EXPLICIT`, the optional version of a TBSCertificate.
    pub const VERSION: u8 = 0xa0;
}

/// The DER encoding of OID 2.5.4.3 (id-at-commonName), without tag and length.
const COMMON_NAME_OID: &[u8] = &[0x55, 0x04, 0x03];

/// Splits one DER element off `input`: its tag, its contents and what follows.
/// `None` on anything malformed or truncated (and on high tag numbers,
/// which nothing this module reads uses).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None; // indefinite length (not DER) or absurdly long
        }
        let (bytes, after) = rest.split_at_checked(count)?;
        rest = after;
        bytes.iter().fold(0usize, |len, &b| (len << 8) | usize::from(b))
    };
    let (contents, after) = rest.split_at_checked(len)?;
    Some((tag, contents, after))
}

/// Splits off one element that must have tag `want`, returning its contents
/// and what follows.
fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, contents, rest) = der_element(input)?;
    (tag == want).then_some((contents, rest))
}

/// The Common Name (the first one, as OpenSSL and Mosquitto take it) of a
/// DER certificate's subject. `None` if there is none, it is not valid text,
/// it contains a NUL, or the certificate is malformed; never panics.
pub fn common_name(cert: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    let (certificate, _) = expect(cert, tag::SEQUENCE)?;
    let (tbs, _) = expect(certificate, tag::SEQUENCE)?;
    // TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber,
    //     signature, issuer, validity, subject, ... }
    let (first, _, _) = der_element(tbs)?;
    let tbs = if first == tag::VERSION { der_element(tbs)?.2 } else { tbs };
    let (_, tbs) = expect(tbs, tag::INTEGER)?;
    let (_, tbs) = expect(tbs, tag::SEQUENCE)?; // signature algorithm
    let (_, tbs) = expect(tbs, tag::SEQUENCE)?; // issuer
    let (_, tbs) = expect(tbs, tag::SEQUENCE)?; // validity
    let (mut rdns, _) = expect(tbs, tag::SEQUENCE)?; // subject
    // Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }
    while !rdns.is_empty() {
        let (mut attributes, rest) = expect(rdns, tag::SET)?;
        rdns = rest;
        while !attributes.is_empty() {
            let (attribute, rest) = expect(attributes, tag::SEQUENCE)?;
            attributes = rest;
            let (oid, value) = expect(attribute, tag::OID)?;
            if oid == COMMON_NAME_OID {
                let (string_tag, bytes, _) = der_element(value)?;
                return directory_string(string_tag, bytes).filter(|name| !name.contains('\0'));
            }
        }
    }
    None
}

/// Decodes an X.520 DirectoryString (or IA5String) to text.
fn directory_string(string_tag: u8, bytes: &[u8]) -> Option<String> {
    match string_tag {
        tag::UTF8_STRING => String::from_utf8(bytes.to_vec()).ok(),
        tag::PRINTABLE_STRING | tag::IA5_STRING => {
            bytes.is_ascii().then(|| bytes.iter().map(|&b| char::from(b)).collect())
        }
        // T.61 in theory; Latin-1 in practice (as OpenSSL reads it).
        tag::TELETEX_STRING => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        tag::BMP_STRING => {
            let units = bytes.chunks(2).map(|pair| match pair {
                &[hi, lo] => Some(u16::from_be_bytes([hi, lo])),
                _ => None,
            });
            let units: Option<Vec<u16>> = units.collect();
            char::decode_utf16(units?).collect::<Result<String, _>>().ok()
        }
        tag::UNIVERSAL_STRING => bytes
            .chunks(4)
            .map(|quad| <[u8; 4]>::try_from(quad).ok().and_then(|q| char::from_u32(u32::from_be_bytes(q))))
            .collect(),
        _ => None,
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use async_io::Async;
    use futures::io::{AsyncReadExt, AsyncWriteExt};
    use futures_rustls::rustls::{ClientConfig, pki_types::ServerName};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const ALICE: Option<(&str, &str)> = Some(("client.pem", "client.key"));

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name)
    }

    fn server_files() -> TlsFiles {
        TlsFiles {
            certfile: fixture("server.pem"),
            keyfile: fixture("server.key"),
            cafile: None,
            require_certificate: false,
            use_identity_as_username: false,
        }
    }

    fn mutual_files(require_certificate: bool) -> TlsFiles {
        TlsFiles { cafile: Some(fixture("ca.pem")), require_certificate, ..server_files() }
    }

    /// A file in the temporary directory, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn with(contents: &[u8]) -> TempFile {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!("midge-tls-{}-{}.pem", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn error_of(files: &TlsFiles) -> String {
        TlsAcceptor::new(files).expect_err("should fail").to_string()
    }

    /// A client trusting the test CA, presenting `certificate` (cert and key
    /// fixture names) if given.
    fn client_config(certificate: Option<(&str, &str)>) -> ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(fixture("ca.pem")).unwrap()).unwrap();
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        if let Some((cert, key)) = certificate {
            let chain = load_certs("certfile", &fixture(cert)).unwrap();
            let key = PrivateKeyDer::from_pem_file(fixture(key)).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        } else {
            builder.with_no_client_auth()
        }
    }

    /// Runs both sides of a handshake over a socket pair. The server sends
    /// "ok" once accepted; the client's result is whether it read it.
    fn handshake(
        acceptor: &TlsAcceptor,
        client: ClientConfig,
    ) -> (io::Result<TlsConnection<Async<UnixStream>>>, io::Result<()>) {
        let (a, b) = UnixStream::pair().unwrap();
        let (server_io, client_io) = (Async::new(a).unwrap(), Async::new(b).unwrap());
        futures::executor::block_on(async {
            let server = async {
                let mut conn = acceptor.accept(server_io).await?;
                conn.stream.write_all(b"ok").await?;
                conn.stream.flush().await?;
                Ok(conn)
            };
            let client = async {
                let connector = futures_rustls::TlsConnector::from(Arc::new(client));
                let name = ServerName::try_from("localhost").unwrap();
                let mut stream = connector.connect(name, client_io).await?;
                let mut buf = [0; 2];
                stream.read_exact(&mut buf).await?;
                assert_eq!(&buf, b"ok");
                Ok(())
            };
            futures::join!(server, client)
        })
    }

    #[test]
    fn loads_good_files() {
        TlsAcceptor::new(&server_files()).unwrap();
        TlsAcceptor::new(&mutual_files(true)).unwrap();
        TlsAcceptor::new(&mutual_files(false)).unwrap();
        // PKCS#1 and SEC1 keys
        TlsAcceptor::new(&TlsFiles { keyfile: fixture("server-rsa.key"), ..server_files() }).unwrap();
        let client = TlsFiles { certfile: fixture("client.pem"), keyfile: fixture("client.key"), ..server_files() };
        TlsAcceptor::new(&client).unwrap();
        // a chain: leaf then CA
        let mut chain = std::fs::read(fixture("server.pem")).unwrap();
        chain.extend(std::fs::read(fixture("ca.pem")).unwrap());
        let chain = TempFile::with(&chain);
        TlsAcceptor::new(&TlsFiles { certfile: chain.0.clone(), ..server_files() }).unwrap();
    }

    #[test]
    fn errors_name_the_file() {
        let missing = fixture("missing.pem");
        let message = error_of(&TlsFiles { certfile: missing.clone(), ..server_files() });
        assert!(message.starts_with(&format!("certfile {}: cannot read: ", missing.display())), "{message}");

        let message = error_of(&TlsFiles { keyfile: missing.clone(), ..server_files() });
        assert!(message.starts_with(&format!("keyfile {}: cannot read: ", missing.display())), "{message}");

        let garbage = TempFile::with(b"this is not a key\n");
        let message = error_of(&TlsFiles { keyfile: garbage.0.clone(), ..server_files() });
        assert_eq!(
            message,
            format!("keyfile {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) found", garbage.0.display())
        );

        let bad_base64 = TempFile::with(b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n");
        let message = error_of(&TlsFiles { keyfile: bad_base64.0.clone(), ..server_files() });
        assert!(message.starts_with(&format!("keyfile {}: bad PEM: ", bad_base64.0.display())), "{message}");

        let not_a_key = TempFile::with(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        let message = error_of(&TlsFiles { keyfile: not_a_key.0.clone(), ..server_files() });
        assert!(
            message.starts_with(&format!("keyfile {}: unusable private key: ", not_a_key.0.display())),
            "{message}"
        );

        let message = error_of(&TlsFiles { certfile: fixture("server.key"), ..server_files() });
        assert!(message.contains("no PEM certificate"), "{message}");
        assert!(message.starts_with("certfile "), "{message}");

        let message = error_of(&TlsFiles { cafile: Some(fixture("client.key")), ..server_files() });
        assert!(message.starts_with(&format!("cafile {}: no PEM certificate", fixture("client.key").display())));

        let message = error_of(&TlsFiles { keyfile: fixture("client.key"), ..server_files() });
        assert!(message.starts_with("certfile ") && message.contains("with keyfile "), "{message}");

        let message = error_of(&TlsFiles { require_certificate: true, ..server_files() });
        assert_eq!(message, "require_certificate needs a cafile to check client certificates");
    }

    #[test]
    fn server_only_handshake() {
        let acceptor = TlsAcceptor::new(&server_files()).unwrap();
        let (server, client) = handshake(&acceptor, client_config(None));
        client.unwrap();
        assert_eq!(server.unwrap().identity, None);
        // The server does not ask for a certificate, so none is sent.
        let (server, client) = handshake(&acceptor, client_config(ALICE));
        client.unwrap();
        assert_eq!(server.unwrap().identity, None);
    }

    #[test]
    fn required_client_certificate() {
        let acceptor = TlsAcceptor::new(&mutual_files(true)).unwrap();
        let (server, client) = handshake(&acceptor, client_config(None));
        let refused = server.expect_err("no client certificate").to_string();
        assert_eq!(refused, "peer sent no certificates");
        assert_eq!(client.expect_err("refused").to_string(), "received fatal alert: CertificateRequired");
        let (server, client) = handshake(&acceptor, client_config(ALICE));
        client.unwrap();
        assert_eq!(server.unwrap().identity.as_deref(), Some("alice"));
    }

    #[test]
    fn optional_client_certificate() {
        let acceptor = TlsAcceptor::new(&mutual_files(false)).unwrap();
        let (server, client) = handshake(&acceptor, client_config(None));
        client.unwrap();
        assert_eq!(server.unwrap().identity, None);
        let (server, client) = handshake(&acceptor, client_config(ALICE));
        client.unwrap();
        assert_eq!(server.unwrap().identity.as_deref(), Some("alice"));
        // An invalid certificate is refused even though none is required:
        // the server's own certificate is not for client authentication.
        let (server, _) = handshake(&acceptor, client_config(Some(("server.pem", "server.key"))));
        let refused = server.expect_err("certificate without clientAuth").to_string();
        assert!(refused.contains("invalid peer certificate"), "{refused}");
    }

    #[test]
    fn reload_keeps_old_config_on_error() {
        let acceptor = TlsAcceptor::new(&server_files()).unwrap();
        let before = acceptor.config();
        let bad = TlsFiles { keyfile: fixture("missing.key"), ..mutual_files(true) };
        let message = acceptor.reload(&bad).unwrap_err().to_string();
        assert!(message.starts_with("keyfile "), "{message}");
        assert!(Arc::ptr_eq(&before, &acceptor.config()));
        let (server, client) = handshake(&acceptor, client_config(None));
        client.unwrap();
        server.unwrap();

        // A good reload takes effect for the next connection.
        acceptor.reload(&mutual_files(true)).unwrap();
        assert!(!Arc::ptr_eq(&before, &acceptor.config()));
        let (server, _) = handshake(&acceptor, client_config(None));
        assert!(server.is_err());
    }

    #[test]
    fn plain_text_client_fails() {
        let acceptor = TlsAcceptor::new(&server_files()).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let (server_io, mut client_io) = (Async::new(a).unwrap(), Async::new(b).unwrap());
        futures::executor::block_on(async {
            // An MQTT CONNECT where a ClientHello should be.
            client_io.write_all(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00").await.unwrap();
            assert!(acceptor.accept(server_io).await.is_err());
        });
    }

    fn der(name: &str) -> Vec<u8> {
        CertificateDer::from_pem_file(fixture(name)).unwrap().to_vec()
    }

    #[test]
    fn common_name_of_real_certificates() {
        assert_eq!(common_name(&der("client.pem")).as_deref(), Some("alice"));
        assert_eq!(common_name(&der("server.pem")).as_deref(), Some("localhost"));
        assert_eq!(common_name(&der("ca.pem")).as_deref(), Some("midge test CA"));
    }

    #[test]
    fn common_name_never_panics_on_malformed_input() {
        let cert = der("client.pem");
        for len in 0..cert.len() {
            assert_eq!(common_name(&cert[..len]), None, "truncated to {len}");
        }
        for i in 0..cert.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = cert.clone();
                bad[i] ^= flip;
                let _ = common_name(&bad);
            }
        }
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(common_name(&[0x30, 0x80, 0x00, 0x00]), None);
        assert_eq!(common_name(&[0x30, 0x85, 1, 2, 3, 4, 5]), None);
        assert_eq!(common_name(&[0x1f, 0x01, 0x00]), None);
    }

    /// A minimal certificate whose subject is `subject` (already DER).
    fn cert_with_subject(subject: &[u8]) -> Vec<u8> {
        fn wrap(tag: u8, contents: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            if contents.len() < 0x80 {
                out.push(contents.len() as u8);
            } else {
                out.extend([0x82, (contents.len() >> 8) as u8, contents.len() as u8]);
            }
            out.extend(contents);
            out
        }
        let tbs = [
            wrap(0x02, &[1]), // serial, no version
            wrap(0x30, &[]),  // algorithm
            wrap(0x30, &[]),  // issuer
            wrap(0x30, &[]),  // validity
            subject.to_vec(), // subject
            wrap(0x30, &[]),  // subjectPublicKeyInfo
        ]
        .concat();
        wrap(0x30, &[wrap(0x30, &tbs), wrap(0x30, &[]), wrap(0x03, &[0])].concat())
    }

    fn name(attributes: &[(&[u8], u8, &[u8])]) -> Vec<u8> {
        let mut rdns = Vec::new();
        for &(oid, string_tag, value) in attributes {
            let mut atv = vec![0x06, oid.len() as u8];
            atv.extend(oid);
            atv.extend([string_tag, value.len() as u8]);
            atv.extend(value);
            let mut seq = vec![0x30, atv.len() as u8];
            seq.extend(atv);
            rdns.extend([0x31, seq.len() as u8]);
            rdns.extend(seq);
        }
        let mut out = vec![0x30, rdns.len() as u8];
        out.extend(rdns);
        out
    }

    #[test]
    fn common_name_string_types() {
        const O: &[u8] = &[0x55, 0x04, 0x0a];
        let cn = |tag, value: &[u8]| {
            common_name(&cert_with_subject(&name(&[(O, 0x0c, b"org"), (COMMON_NAME_OID, tag, value)])))
        };
        assert_eq!(cn(0x0c, "zoë".as_bytes()).as_deref(), Some("zoë"));
        assert_eq!(cn(0x13, b"bob").as_deref(), Some("bob"));
        assert_eq!(cn(0x16, b"bob").as_deref(), Some("bob"));
        assert_eq!(cn(0x14, b"zo\xeb").as_deref(), Some("zoë"));
        assert_eq!(cn(0x1e, &[0, b'z', 0, b'o', 0, 0xeb]).as_deref(), Some("zoë"));
        assert_eq!(cn(0x1c, &[0, 0, 0, b'z', 0, 0, 0, 0xeb]).as_deref(), Some("zë"));
        assert_eq!(cn(0x1e, &[0, b'z', 0]), None); // odd length
        assert_eq!(cn(0x1e, &[0xd8, 0x00]), None); // lone surrogate
        assert_eq!(cn(0x0c, b"\xff"), None); // not UTF-8
        assert_eq!(cn(0x13, b"\xe9"), None); // not ASCII
        assert_eq!(cn(0x0c, b"al\0ice"), None); // embedded NUL
        assert_eq!(cn(0x04, b"alice"), None); // OCTET STRING
        // no Common Name at all; the first of two wins
        assert_eq!(common_name(&cert_with_subject(&name(&[(O, 0x0c, b"org")]))), None);
        let two = name(&[(COMMON_NAME_OID, 0x0c, b"first"), (COMMON_NAME_OID, 0x0c, b"second")]);
        assert_eq!(common_name(&cert_with_subject(&two)).as_deref(), Some("first"));
        // (the fixtures cover certificates with a version field)
    }
}

/// A bridge's TLS client configuration: the remote's certificate must chain
/// to `bridge_cafile` (or a CA in `bridge_capath`) and, unless
/// `bridge_insecure`, name the host; `bridge_certfile` and `bridge_keyfile`
/// give a client certificate.
pub fn client_config(tls: &crate::config::BridgeTls) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    if let Some(cafile) = &tls.cafile {
        for cert in load_certs("bridge_cafile", cafile)? {
            roots
                .add(cert)
                .map_err(|e| file_error("bridge_cafile", cafile, format!("unusable CA certificate: {e}")))?;
        }
    }
    if let Some(capath) = &tls.capath {
        let entries = std::fs::read_dir(capath).map_err(|e| file_error("bridge_capath", capath, e.to_string()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "pem" || x == "crt") {
                for cert in load_certs("bridge_capath", &path)? {
                    roots.add(cert).map_err(|e| file_error("bridge_capath", &path, format!("unusable CA: {e}")))?;
                }
            }
        }
    }
    if roots.is_empty() {
        return Err(TlsError::Config("bridge TLS needs bridge_cafile or bridge_capath with a CA certificate".into()));
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(format!("bridge_cafile: {e}")))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(format!("tls: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(BridgeVerifier { inner: verifier, insecure: tls.insecure }));
    let config = match (&tls.certfile, &tls.keyfile) {
        (Some(certfile), Some(keyfile)) => {
            let certs = load_certs("bridge_certfile", certfile)?;
            let key = PrivateKeyDer::from_pem_file(keyfile)
                .map_err(|e| file_error("bridge_keyfile", keyfile, pem_problem(e, "PEM private key")))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                TlsError::Config(format!(
                    "bridge_certfile {} with bridge_keyfile {}: {e}",
                    certfile.display(),
                    keyfile.display()
                ))
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::Config("bridge_certfile and bridge_keyfile go together".into())),
    };
    Ok(Arc::new(config))
}

/// The webpki verifier, which with `bridge_insecure` lets a certificate for
/// another host name through (its chain and dates are still checked).
#[derive(Debug)]
struct BridgeVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    insecure: bool,
}

impl rustls::client::danger::ServerCertVerifier for BridgeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(NotValidForName | NotValidForNameContext { .. }))
                if self.insecure =>
            {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
