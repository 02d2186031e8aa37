//! Structured logs through `tracing`: text or JSON on stderr.
//!
//! Filtered by target and level (`tracing_subscriber::filter::Targets`,
//! the `RUST_LOG` syntax without span and field filters), not by
//! `EnvFilter`: that one compiles its directive regexes at start-up, which
//! maps the code of a regex engine into the daemon for a filter that never
//! needs one.

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Installs the global subscriber. `level` applies to ketch's own events;
/// libraries log warnings only. `RUST_LOG`, when set and valid, wins.
pub fn init(level: &str, format: LogFormat) {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref(), level);
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    // A second init (tests, re-exec) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Text => registry.with(layer).try_init(),
        LogFormat::Json => registry.with(layer.json()).try_init(),
    };
}

/// The filter: `rust_log` when it parses (`target=level` pairs and a bare
/// default level, comma-separated), else warnings from libraries and
/// `level` from ketch.
fn filter(rust_log: Option<&str>, level: &str) -> Targets {
    if let Some(parsed) = rust_log.and_then(|directives| directives.parse::<Targets>().ok()) {
        return parsed;
    }
    format!("warn,ketch={level}")
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::WARN))
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing_subscriber::filter::LevelFilter;

    use super::*;

    #[test]
    fn the_level_is_ketchs_and_libraries_log_warnings() {
        let f = filter(None, "debug");
        assert!(f.would_enable("ketch::sandbox", &Level::DEBUG));
        assert!(!f.would_enable("ketch::sandbox", &Level::TRACE));
        assert!(f.would_enable("h2::proto", &Level::WARN));
        assert!(!f.would_enable("h2::proto", &Level::INFO));
    }

    #[test]
    fn rust_log_wins_when_it_parses() {
        let f = filter(Some("info,h2=trace"), "error");
        assert!(f.would_enable("h2::codec", &Level::TRACE));
        assert!(f.would_enable("ketch::image", &Level::INFO));
        assert!(!f.would_enable("ketch::image", &Level::DEBUG));
        // Not a filter: the configured level stands.
        let f = filter(Some("ketch=loud"), "error");
        assert!(f.would_enable("ketch", &Level::ERROR));
        assert!(!f.would_enable("ketch", &Level::WARN));
        assert_eq!(f.default_level(), Some(LevelFilter::WARN));
    }
}
