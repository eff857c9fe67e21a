//! Log output on stdout: pretty lines on a terminal, ndjson otherwise.
//!
//! femme picks its format by build profile (pretty in debug builds, ndjson in
//! release builds), so it is used where that choice matches what stdout is;
//! for the other two combinations a small logger here writes the same
//! formats (femme's ndjson fields: `level`, `time`, `msg`).

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::{SystemTime, UNIX_EPOCH};

/// Starts logging at `level`.
pub fn init(level: LevelFilter) {
    let terminal = std::io::stdout().is_terminal();
    if terminal == cfg!(debug_assertions) {
        femme::with_level(level);
        return;
    }
    if log::set_boxed_logger(Box::new(Logger { pretty: terminal })).is_ok() {
        log::set_max_level(level);
    }
}

struct Logger {
    pretty: bool,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = match self.pretty {
            true => pretty(record),
            false => ndjson(record),
        };
        // A closed stdout must not take the broker down: the line is lost.
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

fn pretty(record: &Record<'_>) -> String {
    let color = match record.level() {
        Level::Error => "\x1b[31m",
        Level::Warn => "\x1b[33m",
        _ => "\x1b[32m",
    };
    format!("{color}\x1b[1m{}\x1b[0m {}\n", record.target(), record.args())
}

fn ndjson(record: &Record<'_>) -> String {
    let level = match record.level() {
        Level::Trace => 10,
        Level::Debug => 20,
        Level::Info => 30,
        Level::Warn => 40,
        Level::Error => 50,
    };
    let time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let mut line = format!("{{\"level\":{level},\"time\":{time},\"msg\":\"");
    for c in record.args().to_string().chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            c if c < ' ' => drop(write!(line, "\\u{:04x}", c as u32)),
            c => line.push(c),
        }
    }
    line.push_str("\"}\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_lines_are_escaped_json() {
        let args = format_args!("client \"a\\b\"\n{}", '\u{1}');
        let record = Record::builder().args(args).level(Level::Warn).target("midge").build();
        let line = ndjson(&record);
        assert!(line.starts_with("{\"level\":40,\"time\":"), "{line}");
        assert!(line.ends_with("\"msg\":\"client \\\"a\\\\b\\\"\\n\\u0001\"}\n"), "{line}");
    }
}
