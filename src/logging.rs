//! Logs: `tracing` to stderr, set up once by the binary.
//!
//! Cold module. The environment chooses:
//!
//! * `SLUICE_LOG`: an `EnvFilter` directive (default `info`). One that does
//!   not parse is reported in one warning line naming it, and `info` is kept.
//! * `SLUICE_LOG_FORMAT`: `text` (default) or `json` (one JSON object per
//!   line: `timestamp`, `level`, `fields`, `target`).
//! * `JOURNAL_STREAM`: set by systemd when stderr goes to the journal. When
//!   it names our stderr (its `device:inode`), every line starts with a
//!   syslog priority prefix (`<3>` error … `<7>` debug and trace) that the
//!   journal turns into the entry's priority, and lines carry no timestamp
//!   (the journal stamps them).
//!
//! Access lines (`target: "sluice::access"`) are [`crate::server::access`]'s.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The level kept when `SLUICE_LOG` is unset or invalid.
pub const DEFAULT_FILTER: &str = "info";

/// What the environment asked for, and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSetup {
    pub filter: String,
    pub json: bool,
    pub journal: bool,
    /// Warnings to log once the subscriber is up.
    pub warnings: Vec<String>,
}

impl LogSetup {
    /// Reads `SLUICE_LOG`, `SLUICE_LOG_FORMAT` and `JOURNAL_STREAM`.
    pub fn from_env() -> LogSetup {
        let var = |name| std::env::var(name).ok();
        LogSetup::from_values(
            var("SLUICE_LOG").as_deref(),
            var("SLUICE_LOG_FORMAT").as_deref(),
            var("JOURNAL_STREAM").as_deref(),
            stderr_identity(),
        )
    }

    /// The setup for these variables' values; `stderr` is our stderr's
    /// `(device, inode)`.
    pub fn from_values(
        log: Option<&str>,
        format: Option<&str>,
        journal_stream: Option<&str>,
        stderr: Option<(u64, u64)>,
    ) -> LogSetup {
        let mut warnings = Vec::new();
        let filter = match log.map(str::trim).filter(|s| !s.is_empty()) {
            None => DEFAULT_FILTER.to_string(),
            Some(s) => match EnvFilter::builder().parse(s) {
                Ok(_) => s.to_string(),
                Err(e) => {
                    warnings.push(format!(
                        "SLUICE_LOG={s:?} is not a valid filter ({e}); logging at {DEFAULT_FILTER}"
                    ));
                    DEFAULT_FILTER.to_string()
                }
            },
        };
        let json = match format.map(str::trim) {
            None | Some("") | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                warnings.push(format!(
                    "SLUICE_LOG_FORMAT={other:?} is not text or json; logging text"
                ));
                false
            }
        };
        let journal = journal_stream
            .and_then(parse_journal_stream)
            .is_some_and(|id| Some(id) == stderr);
        LogSetup {
            filter,
            json,
            journal,
            warnings,
        }
    }
}

/// `JOURNAL_STREAM`'s `device:inode`.
fn parse_journal_stream(s: &str) -> Option<(u64, u64)> {
    let (dev, ino) = s.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Our stderr's `(device, inode)`.
fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    // /proc/self/fd/2 follows to stderr's file, pipe or socket; its metadata
    // is fstat(2)'s.
    let m = std::fs::metadata("/proc/self/fd/2").ok()?;
    Some((m.dev(), m.ino()))
}

/// Installs the global subscriber (once per process) and logs what was
/// wrong with the environment.
pub fn init() {
    let setup = LogSetup::from_env();
    let filter = EnvFilter::builder()
        .parse(&setup.filter)
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let ansi =
        !setup.journal && !setup.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let journal = setup.journal;
    let done = match (setup.json, journal) {
        (true, _) => {
            let format = tracing_subscriber::fmt::format().json();
            if journal {
                registry
                    .with(layer.json().event_format(Priority(format.without_time())))
                    .try_init()
            } else {
                registry.with(layer.json().event_format(format)).try_init()
            }
        }
        (false, true) => registry
            .with(layer.event_format(Priority(tracing_subscriber::fmt::format().without_time())))
            .try_init(),
        (false, false) => registry.with(layer).try_init(),
    };
    if done.is_ok() {
        for w in &setup.warnings {
            tracing::warn!("{w}");
        }
    }
}

/// The syslog priority of a level (`sd-daemon(3)`).
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Prefixes each line of an inner format with its syslog priority.
struct Priority<F>(F);

impl<S, N, F> FormatEvent<S, N> for Priority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_filter_is_named_and_info_kept() {
        let s = LogSetup::from_values(Some("sluice=loud"), None, None, None);
        assert_eq!(s.filter, "info");
        assert_eq!(s.warnings.len(), 1);
        assert!(
            s.warnings[0].contains("SLUICE_LOG=\"sluice=loud\""),
            "{:?}",
            s.warnings
        );
        let s = LogSetup::from_values(Some("sluice=debug,warn"), None, None, None);
        assert_eq!(s.filter, "sluice=debug,warn");
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn journal_prefixes_only_when_journal_stream_is_our_stderr() {
        let ours = Some((12, 345));
        assert!(LogSetup::from_values(None, None, Some("12:345"), ours).journal);
        assert!(!LogSetup::from_values(None, None, Some("12:346"), ours).journal);
        assert!(!LogSetup::from_values(None, None, Some("junk"), ours).journal);
        assert!(!LogSetup::from_values(None, None, None, ours).journal);
    }

    #[test]
    fn format_is_text_json_or_a_warning() {
        assert!(LogSetup::from_values(None, Some("json"), None, None).json);
        let s = LogSetup::from_values(None, Some("yaml"), None, None);
        assert!(!s.json);
        assert_eq!(s.warnings.len(), 1);
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
    }
}
