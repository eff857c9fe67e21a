//! Mosquitto-compatible authentication: [`PasswordFile`] (`password_file`) checks CONNECT credentials and [`Acl`] (`acl_file`) checks each PUBLISH and delivery; both read Mosquitto's files unchanged.

pub mod acl;
pub mod password;

pub use acl::Acl;
pub use password::PasswordFile;

use std::fmt;

/// A line of a password or ACL file that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number in the file.
    pub line: usize,
    /// What is wrong, in lowercase, e.g. `unknown keyword "topci"`.
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(line: usize, message: impl Into<String>) -> Self {
        ParseError { line, message: message.into() }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Why a password or ACL file could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read.
    Io(std::io::Error),
    /// The file was read but one of its lines is malformed.
    Parse(ParseError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Io(e) => write!(f, "cannot read file: {e}"),
            LoadError::Parse(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Io(e) => Some(e),
            LoadError::Parse(e) => Some(e),
        }
    }
}

impl From<std::io::Error> for LoadError {
    fn from(e: std::io::Error) -> Self {
        LoadError::Io(e)
    }
}

impl From<ParseError> for LoadError {
    fn from(e: ParseError) -> Self {
        LoadError::Parse(e)
    }
}

/// Why [`PasswordFile::set`] refused to store a password.
#[derive(Debug)]
pub enum SetError {
    /// The username cannot be written to a password file (empty, contains
    /// `:` or a line break, starts with `#`, or has surrounding whitespace).
    InvalidUsername(String),
    /// The operating system's random number generator failed.
    Random(getrandom::Error),
}

impl fmt::Display for SetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetError::InvalidUsername(u) => write!(f, "invalid username {u:?}"),
            SetError::Random(e) => write!(f, "cannot generate a salt: {e}"),
        }
    }
}

impl std::error::Error for SetError {}

/// Reads a file to a string, for the `load` constructors.
pub(crate) fn read(path: &std::path::Path) -> Result<String, LoadError> {
    Ok(std::fs::read_to_string(path)?)
}
