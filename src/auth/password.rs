//! Mosquitto password files (`mosquitto_passwd` format): `user:$7$<iterations>$<salt>$<hash>`
//! (PBKDF2-HMAC-SHA512) or the older `user:$6$<salt>$<sha512(password || salt)>`, standard
//! base64 with padding, 64-byte hashes.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use super::{LoadError, ParseError, SetError};

/// Iterations [`PasswordFile::set`] writes, as current `mosquitto_passwd` does
/// (Debian's 2.0.11 writes 101; any count is read).
pub const ITERATIONS: u32 = 1000;

/// Salt length [`PasswordFile::set`] writes, as `mosquitto_passwd` does.
pub const SALT_LEN: usize = 12;

const HASH_LEN: usize = 64;

/// A parsed password file: verifies credentials and can be edited and
/// written back with comments, blank lines and other users' entries kept
/// as they were.
#[derive(Clone, Default)]
pub struct PasswordFile {
    lines: Vec<Line>,
    index: HashMap<String, usize>,
    /// What an unknown user's password is checked against.
    dummy: Dummy,
}

/// The kind of hash an unknown user name costs: the file's most common one,
/// so that the time a refusal takes does not tell which user names exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Dummy {
    Sha512,
    Pbkdf2 { iterations: u32 },
}

impl Default for Dummy {
    fn default() -> Self {
        Dummy::Pbkdf2 { iterations: ITERATIONS }
    }
}

#[derive(Clone)]
enum Line {
    /// A comment or blank line, written back verbatim.
    Other(String),
    User(Entry),
}

#[derive(Clone)]
struct Entry {
    /// The line as read (or as written by `set`), so untouched entries are
    /// written back byte for byte.
    text: String,
    hash: Hash,
}

#[derive(Clone)]
enum Hash {
    /// `$6$`: SHA-512 of the password followed by the salt.
    Sha512 { salt: Vec<u8>, hash: [u8; HASH_LEN] },
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2 { iterations: u32, salt: Vec<u8>, hash: [u8; HASH_LEN] },
}

impl PasswordFile {
    /// Parses the text of a password file. Blank lines and lines starting
    /// with `#` are ignored; every other line must be a `$6$` or `$7$` entry.
    pub fn parse(text: &str) -> Result<PasswordFile, ParseError> {
        let mut file = PasswordFile::default();
        for (i, raw) in text.lines().enumerate() {
            file.parse_line(i + 1, raw)?;
        }
        file.choose_dummy();
        Ok(file)
    }

    /// Reads and parses the password file at `path`.
    pub fn load(path: &Path) -> Result<PasswordFile, LoadError> {
        Ok(PasswordFile::parse(&super::read(path)?)?)
    }

    /// Whether `password` is `username`'s password; the hashes are compared
    /// in constant time. Unknown users are refused after the same work as
    /// a known one (the file's most common hash, against a dummy entry), so
    /// that timing does not tell which user names exist.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        match self.entry(username) {
            Some(entry) => entry.hash.verify(password),
            None => {
                let dummy = match self.dummy {
                    Dummy::Sha512 => Hash::Sha512 { salt: vec![0; SALT_LEN], hash: [0; HASH_LEN] },
                    Dummy::Pbkdf2 { iterations } => {
                        Hash::Pbkdf2 { iterations, salt: vec![0; SALT_LEN], hash: [0; HASH_LEN] }
                    }
                };
                let _ = std::hint::black_box(dummy.verify(password));
                false
            }
        }
    }

    /// Whether the file has an entry for `username`.
    pub fn contains(&self, username: &str) -> bool {
        self.index.contains_key(username)
    }

    /// Sets `username`'s password as a new `$7$` entry with a fresh random
    /// salt and [`ITERATIONS`] iterations: in place if the user exists,
    /// appended otherwise.
    pub fn set(&mut self, username: &str, password: &[u8]) -> Result<(), SetError> {
        check_username(username)?;
        let mut salt = vec![0; SALT_LEN];
        getrandom::fill(&mut salt).map_err(SetError::Random)?;
        let hash = Hash::pbkdf2(password, salt, ITERATIONS);
        let line = Line::User(Entry { text: format!("{username}:{}", hash.encode()), hash });
        match self.index.get(username) {
            Some(&i) => self.lines[i] = line,
            None => {
                self.index.insert(username.to_owned(), self.lines.len());
                self.lines.push(line);
            }
        }
        self.choose_dummy();
        Ok(())
    }

    /// The file's text, one line per entry, comment or blank line, in order.
    pub fn to_file_string(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            out.push_str(match line {
                Line::Other(text) => text,
                Line::User(entry) => &entry.text,
            });
            out.push('\n');
        }
        out
    }

    /// Sets the dummy to the most common kind of hash among the entries
    /// (the default PBKDF2 for a file without any).
    fn choose_dummy(&mut self) {
        let mut counts: HashMap<Dummy, usize> = HashMap::new();
        for line in &self.lines {
            if let Line::User(entry) = line {
                let kind = match entry.hash {
                    Hash::Sha512 { .. } => Dummy::Sha512,
                    Hash::Pbkdf2 { iterations, .. } => Dummy::Pbkdf2 { iterations },
                };
                *counts.entry(kind).or_default() += 1;
            }
        }
        // Ties go to the costlier kind, so that the choice is deterministic.
        let cost = |d: &Dummy| match *d {
            Dummy::Sha512 => 0,
            Dummy::Pbkdf2 { iterations } => iterations,
        };
        self.dummy = counts.into_iter().max_by_key(|(d, n)| (*n, cost(d))).map(|(d, _)| d).unwrap_or_default();
    }

    fn entry(&self, username: &str) -> Option<&Entry> {
        match self.lines.get(*self.index.get(username)?)? {
            Line::User(entry) => Some(entry),
            Line::Other(_) => None,
        }
    }

    fn parse_line(&mut self, n: usize, raw: &str) -> Result<(), ParseError> {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            self.lines.push(Line::Other(raw.to_owned()));
            return Ok(());
        }
        let (user, hash) = line.split_once(':').ok_or_else(|| ParseError::new(n, "expected \"username:hash\""))?;
        let user = user.trim();
        if user.is_empty() {
            return Err(ParseError::new(n, "empty username"));
        }
        if self.index.contains_key(user) {
            return Err(ParseError::new(n, format!("duplicate user {user:?}")));
        }
        let hash = Hash::parse(hash.trim()).map_err(|m| ParseError::new(n, format!("user {user:?}: {m}")))?;
        self.index.insert(user.to_owned(), self.lines.len());
        self.lines.push(Line::User(Entry { text: raw.to_owned(), hash }));
        Ok(())
    }
}

impl fmt::Debug for PasswordFile {
    /// Lists the usernames only, never the hashes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<&String> = self.index.keys().collect();
        users.sort();
        f.debug_struct("PasswordFile").field("users", &users).finish()
    }
}

/// Refuses usernames that would not read back as the same entry.
fn check_username(username: &str) -> Result<(), SetError> {
    let bad = username.is_empty()
        || username.contains([':', '\n', '\r'])
        || username.starts_with('#')
        || username.trim() != username;
    if bad { Err(SetError::InvalidUsername(username.to_owned())) } else { Ok(()) }
}

impl Hash {
    fn parse(text: &str) -> Result<Hash, String> {
        if text.starts_with("$argon2") {
            return Err("argon2id hashes are not supported (use mosquitto_passwd -H sha512-pbkdf2)".into());
        }
        let mut parts = text.split('$');
        if parts.next() != Some("") {
            return Err("password is not hashed (run mosquitto_passwd -U)".into());
        }
        let hash = match parts.next() {
            Some("6") => Hash::Sha512 { salt: salt(parts.next())?, hash: digest(parts.next())? },
            Some("7") => Hash::Pbkdf2 {
                iterations: iterations(parts.next())?,
                salt: salt(parts.next())?,
                hash: digest(parts.next())?,
            },
            kind => return Err(format!("unknown hash type \"${}$\"", kind.unwrap_or(""))),
        };
        match parts.next() {
            None => Ok(hash),
            Some(_) => Err("too many \"$\" fields".into()),
        }
    }

    fn pbkdf2(password: &[u8], salt: Vec<u8>, iterations: u32) -> Hash {
        let hash = pbkdf2_sha512(password, &salt, iterations);
        Hash::Pbkdf2 { iterations, salt, hash }
    }

    fn verify(&self, password: &[u8]) -> bool {
        let (computed, stored) = match self {
            Hash::Sha512 { salt, hash } => (sha512(password, salt), hash),
            Hash::Pbkdf2 { iterations, salt, hash } => (pbkdf2_sha512(password, salt, *iterations), hash),
        };
        computed.ct_eq(stored).into()
    }

    fn encode(&self) -> String {
        match self {
            Hash::Sha512 { salt, hash } => {
                format!("$6${}${}", BASE64.encode(salt), BASE64.encode(hash))
            }
            Hash::Pbkdf2 { iterations, salt, hash } => {
                format!("$7${iterations}${}${}", BASE64.encode(salt), BASE64.encode(hash))
            }
        }
    }
}

fn iterations(field: Option<&str>) -> Result<u32, String> {
    let field = field.unwrap_or("");
    match field.parse::<u32>() {
        Ok(n) if n > 0 && field.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!("invalid iteration count {field:?}")),
    }
}

fn salt(field: Option<&str>) -> Result<Vec<u8>, String> {
    match field.map(|f| BASE64.decode(f)) {
        Some(Ok(salt)) if !salt.is_empty() => Ok(salt),
        _ => Err("invalid base64 salt".into()),
    }
}

fn digest(field: Option<&str>) -> Result<[u8; HASH_LEN], String> {
    let bytes = field.map(|f| BASE64.decode(f)).and_then(Result::ok).unwrap_or_default();
    bytes.try_into().map_err(|_| "hash is not 64 bytes of base64".to_owned())
}

fn sha512(password: &[u8], salt: &[u8]) -> [u8; HASH_LEN] {
    #[cfg(test)]
    tests::WORK.with(|w| w.set((w.get().0, w.get().1 + 1)));
    Sha512::new().chain_update(password).chain_update(salt).finalize().into()
}

fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; HASH_LEN] {
    #[cfg(test)]
    tests::WORK.with(|w| w.set((w.get().0 + u64::from(iterations), w.get().1)));
    let mut out = [0; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// Hash work done on this thread: (PBKDF2 iterations, SHA-512 hashes).
        pub(super) static WORK: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }

    /// The hash work `f` does.
    fn work(f: impl FnOnce() -> bool) -> (u64, u64) {
        WORK.with(|w| w.set((0, 0)));
        assert!(!f(), "a refused check");
        WORK.with(Cell::get)
    }

    // Made by Debian's mosquitto_passwd 2.0.11 (`-b`, and `-H sha512` for
    // dave); each checked against Python's hashlib.pbkdf2_hmac / sha512.
    const ALICE: &str = "alice:$7$101$sQ8fuuT8TM5Hk8bl$Q0Rk/rzBQK4Vk6jULPmBA+zaa7cLIwz4pLJjwYL50UueA2mdsa0OsVSK87c3j2Vb6pJhvoTtOvwY+GURAnxeNA==";
    const BOB: &str = "bob:$7$101$5vI6Inh6NPknfmY9$KNMqlxwGMjPvQZhmvADZn2ePgIXNzER2oG7tRGtX9YFKAZ36Uqgh4Rc9NOpEY4d2b4HbIfG5Mcnkz3wpfQ2Ilw==";
    const CAROL: &str = "carol smith:$7$101$KYbpgJfNUW7StV3U$MXc19/tYKblE+CHp9RSU9WvnlJrBARuppCj+AOexGJVn/z7o0jAOvgPEWePHMoMfIgx5u/Ub+kWYFs2dhoeq/g==";
    const DAVE: &str = "dave:$6$coKElr3UL0jDYlYI$T/T1K0vV8Y0XDG9ynk9QOJMne/vj6ugB5JkRWVIgrAyt1LJSs+/Au2AyG0fv+rJ9thYNc67P0kF+nHdph5WOfA==";
    // Python: base64(sha512(b"letmein" + bytes(range(1, 13)))).
    const ERIN: &str = "erin:$6$AQIDBAUGBwgJCgsM$EEGgsn0FNKMBaPzx1IcjhPBslJENVDlqzQaShBKcsmQV2ladOhvjzwJyIsRUxRXTCbALo6GUaNyTyTqyQCi5Xg==";
    // Python: pbkdf2_hmac("sha512", b"open sesame", b"midge-salt12", 1000, 64).
    const FRANK: &str = "frank:$7$1000$bWlkZ2Utc2FsdDEy$UtLztukHV1953M9i3vjD1fW9Wm9zOO/HEEPBp8AQYc0d5Lmvp+ZkO81wk/jBZb1A5HgKhbyJ48XHwrYQS51RTg==";

    fn file() -> PasswordFile {
        let text = ["# users", ALICE, BOB, "", CAROL, DAVE, ERIN, FRANK].join("\n");
        PasswordFile::parse(&text).unwrap()
    }

    fn err(text: &str) -> ParseError {
        PasswordFile::parse(text).unwrap_err()
    }

    #[test]
    fn pbkdf2_entries_from_mosquitto_passwd() {
        let f = file();
        assert!(f.verify("alice", b"correct horse"));
        assert!(f.verify("bob", b"hunter2"));
        assert!(f.verify("carol smith", "pä$$:wörd".as_bytes()));
        assert!(!f.verify("alice", b"hunter2"));
        assert!(!f.verify("bob", b"Hunter2"));
        assert!(!f.verify("alice", b""));
    }

    #[test]
    fn pbkdf2_with_1000_iterations() {
        let f = file();
        assert!(f.verify("frank", b"open sesame"));
        assert!(!f.verify("frank", b"open sesame "));
    }

    #[test]
    fn sha512_entries() {
        let f = file();
        assert!(f.verify("dave", b"old-style"));
        assert!(f.verify("erin", b"letmein"));
        assert!(!f.verify("dave", b"letmein"));
        assert!(!f.verify("erin", b"old-style"));
    }

    #[test]
    fn unknown_user_is_refused() {
        let f = file();
        assert!(!f.verify("mallory", b"correct horse"));
        assert!(!f.verify("", b""));
        assert!(!f.verify("# users", b""));
        assert!(f.contains("alice") && !f.contains("mallory"));
    }

    /// An unknown user name costs the same hash work as a known one with a
    /// wrong password: the file's most common kind of hash (here PBKDF2
    /// with 101 iterations: alice, bob, carol), so a refusal's timing does
    /// not tell which user names exist.
    #[test]
    fn unknown_user_costs_the_same_hash_work() {
        let f = file();
        assert_eq!(work(|| f.verify("alice", b"wrong")), (101, 0));
        assert_eq!(work(|| f.verify("mallory", b"wrong")), (101, 0));
        assert_eq!(work(|| f.verify("", b"")), (101, 0));
        assert_eq!(work(|| f.verify("# users", b"")), (101, 0));
        let old = PasswordFile::parse(&[DAVE, ERIN].join("\n")).unwrap();
        assert_eq!(work(|| old.verify("dave", b"wrong")), (0, 1));
        assert_eq!(work(|| old.verify("mallory", b"wrong")), (0, 1));
        let mut new = PasswordFile::default();
        assert_eq!(work(|| new.verify("mallory", b"x")), (u64::from(ITERATIONS), 0));
        new.set("zed", b"zzz").unwrap();
        assert_eq!(work(|| new.verify("mallory", b"x")), work(|| new.verify("zed", b"x")));
    }

    #[test]
    fn crlf_and_whitespace_are_tolerated() {
        let f = PasswordFile::parse(&format!("  {ALICE}  \r\n\r\n{DAVE}\r\n")).unwrap();
        assert!(f.verify("alice", b"correct horse"));
        assert!(f.verify("dave", b"old-style"));
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let e = err(&format!("{ALICE}\n\nno colon here"));
        assert_eq!((e.line, e.message.as_str()), (3, "expected \"username:hash\""));
        assert_eq!(err(":$6$AAAA$BBBB").to_string(), "line 1: empty username");
        assert_eq!(err("x:plain").to_string(), "line 1: user \"x\": password is not hashed (run mosquitto_passwd -U)");
        assert_eq!(err("x:$5$a$b").to_string(), "line 1: user \"x\": unknown hash type \"$5$\"");
        assert_eq!(err("x:$7$0$AAAA$BBBB").to_string(), "line 1: user \"x\": invalid iteration count \"0\"");
        assert_eq!(err("x:$7$+5$AAAA$BBBB").line, 1);
        assert_eq!(err("x:$6$!!!$BBBB").to_string(), "line 1: user \"x\": invalid base64 salt");
        assert_eq!(err("x:$6$AAAA$BBBB").to_string(), "line 1: user \"x\": hash is not 64 bytes of base64");
        assert_eq!(err(&format!("{DAVE}$x")).to_string(), "line 1: user \"dave\": too many \"$\" fields");
        assert_eq!(err(&format!("{ALICE}\n{ALICE}")).to_string(), "line 2: duplicate user \"alice\"");
    }

    #[test]
    fn argon2id_is_refused_with_its_line() {
        let argon = "eve:$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
        let e = err(&format!("# x\n{ALICE}\n{argon}"));
        assert_eq!(e.line, 3);
        assert!(e.message.starts_with("user \"eve\": argon2id hashes are not supported"), "{e}");
    }

    #[test]
    fn set_round_trips_and_keeps_other_entries() {
        let mut f = file();
        let before = f.to_file_string();
        f.set("bob", b"new secret").unwrap();
        f.set("zed", b"zzz").unwrap();
        let text = f.to_file_string();
        let lines: Vec<&str> = text.lines().collect();
        let old: Vec<&str> = before.lines().collect();
        assert_eq!(lines.len(), old.len() + 1);
        for (i, (new, old)) in lines.iter().zip(&old).enumerate() {
            if i == 2 {
                assert!(new.starts_with("bob:$7$1000$") && *new != *old);
            } else {
                assert_eq!(new, old);
            }
        }
        assert!(lines[lines.len() - 1].starts_with("zed:$7$1000$"));
        let g = PasswordFile::parse(&text).unwrap();
        assert!(g.verify("bob", b"new secret") && !g.verify("bob", b"hunter2"));
        assert!(g.verify("zed", b"zzz"));
        assert!(g.verify("alice", b"correct horse") && g.verify("dave", b"old-style"));
    }

    #[test]
    fn set_uses_a_fresh_12_byte_salt() {
        let mut f = PasswordFile::default();
        f.set("a", b"same").unwrap();
        f.set("b", b"same").unwrap();
        let text = f.to_file_string();
        let salts: Vec<&str> = text.lines().map(|l| l.split('$').nth(3).unwrap()).collect();
        assert_eq!(BASE64.decode(salts[0]).unwrap().len(), SALT_LEN);
        assert_ne!(salts[0], salts[1]);
    }

    #[test]
    fn set_refuses_unwritable_usernames() {
        let mut f = PasswordFile::default();
        for bad in ["", "a:b", "a\nb", "#a", " a", "a "] {
            assert!(matches!(f.set(bad, b"x"), Err(SetError::InvalidUsername(_))), "{bad:?}");
        }
        assert!(f.to_file_string().is_empty());
    }

    #[test]
    fn load_reports_io_and_parse_errors() {
        let missing = Path::new("/nonexistent/midge/pwfile");
        assert!(matches!(PasswordFile::load(missing), Err(LoadError::Io(_))));
        let path = std::env::temp_dir().join(format!("midge-pw-{}", std::process::id()));
        std::fs::write(&path, format!("{ALICE}\nbroken\n")).unwrap();
        let e = PasswordFile::load(&path).unwrap_err();
        std::fs::write(&path, format!("{ALICE}\n")).unwrap();
        let ok = PasswordFile::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(e.to_string(), "line 2: expected \"username:hash\"");
        assert!(ok.verify("alice", b"correct horse"));
    }

    #[test]
    fn debug_hides_hashes() {
        let s = format!("{:?}", file());
        assert!(s.contains("alice") && !s.contains("sQ8fuu"), "{s}");
    }
}
