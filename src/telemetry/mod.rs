//! Logging setup: human-readable lines on a terminal, one JSON object per
//! line in a cluster. Logs go to stderr, so `zonewise mutate` output on
//! stdout stays clean. `ZONEWISE_LOG` (an env-filter directive such as
//! `info,zonewise=debug`) overrides the default level.
//!
//! The server logs one line per review, so logging is on the admission path
//! and was measured there (BENCHMARKS.md):
//! - lines are formatted by [`JsonLines`], which writes fields straight into
//!   the line buffer; tracing-subscriber's own JSON formatter collects every
//!   field into a map of `serde_json::Value`s first, and cost about 19 µs of
//!   CPU per review;
//! - writes never block an async worker: a full pipe to the container
//!   runtime, or the kernel throttling dirty pages, would stall every
//!   connection on that worker (seen as 13–16 ms p99.9 spikes). Lines go
//!   into a bounded buffer that a writer thread empties in batches
//!   ([`sink`]); if it is ever full, lines are dropped rather than delaying
//!   admission.

pub mod metrics;
pub mod sink;

use std::fmt::{self, Write as _};

use clap::ValueEnum;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Installs the global subscriber. Keep the returned guard alive until
/// exit: dropping it writes the queued lines.
pub fn init(format: LogFormat) -> Option<sink::Guard> {
    let filter = EnvFilter::try_from_env("ZONEWISE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Without a writer thread there is no logging; the program still runs.
    let (writer, guard) = sink::start(std::io::stderr()).ok()?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(ansi);
    // A second init (tests) is harmless: keep the first subscriber.
    let installed = match format {
        LogFormat::Pretty => builder.compact().try_init(),
        LogFormat::Json => builder.event_format(JsonLines).try_init(),
    };
    installed.ok().map(|()| guard)
}

/// One JSON object per event: `timestamp`, `level`, `message`, then the
/// event's fields, flat. Spans are not used by zonewise.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let now = time::OffsetDateTime::now_utc();
        let mut line = String::with_capacity(320);
        line.push_str("{\"timestamp\":\"");
        let _ = write!(
            line,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            now.microsecond()
        );
        line.push_str("\",\"level\":\"");
        line.push_str(event.metadata().level().as_str());
        line.push('"');
        let mut fields = JsonFields { out: &mut line };
        event.record(&mut fields);
        line.push_str("}\n");
        w.write_str(&line)
    }
}

struct JsonFields<'a> {
    out: &'a mut String,
}

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        self.out.push_str(",\"");
        escape_into(self.out, field.name());
        self.out.push_str("\":");
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        self.out.push('"');
        escape_into(self.out, value);
        self.out.push('"');
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else {
            self.out.push_str("null");
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.out.push('"');
        // Escaped as it is written, without a copy per field (`%` fields,
        // five per review line, arrive here).
        let _ = write!(Escaping(self.out), "{value:?}");
        self.out.push('"');
    }
}

/// Writes into a JSON string body, escaping as it goes (escaping is per
/// character, so pieces can be escaped one at a time).
struct Escaping<'a>(&'a mut String);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

/// JSON string escaping (RFC 8259). Our own because serde_json escapes only
/// whole quoted strings, and `Escaping` writes a value's pieces as they come.
fn escape_into(out: &mut String, s: &str) {
    // Most values (uids, names, rule names) need no escaping: one copy.
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_are_valid_json_with_flat_fields() {
        let buf = Buf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let name = "we\"ird\nname";
            tracing::info!(uid = %"abc", name, dry_run = true, micros = 42u64, ratio = 0.5, "review");
            tracing::warn!(error = %std::io::Error::other("bad \\ thing"), detail = ?vec![1, 2], "refused");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["message"], "review");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["uid"], "abc");
        assert_eq!(lines[0]["name"], "we\"ird\nname");
        assert_eq!(lines[0]["dry_run"], true);
        assert_eq!(lines[0]["micros"], 42);
        assert_eq!(lines[0]["ratio"], 0.5);
        assert!(lines[0]["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["error"], "bad \\ thing");
        assert_eq!(lines[1]["detail"], "[1, 2]");
    }
}
