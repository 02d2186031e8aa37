//! Stop signals as images and the CRI name them: `SIGTERM`, `TERM`,
//! `term`, `15`, and the real-time signals `SIGRTMIN+3` or `RTMAX-1`
//! (systemd images stop with `STOPSIGNAL SIGRTMIN+3`). The numbers are the
//! C library's: glibc keeps two real-time signals for itself, so
//! `SIGRTMIN` is 34 and `SIGRTMAX` 64 (signal(7)).

use nix::sys::signal::Signal;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown stop signal {0:?}")]
pub struct SignalError(pub String);

/// The number of the signal `name` names; empty is SIGTERM, the default.
pub fn parse(name: &str) -> Result<i32, SignalError> {
    let unknown = || SignalError(name.to_owned());
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Ok(Signal::SIGTERM as i32);
    }
    if let Ok(n) = trimmed.parse::<i32>() {
        return valid(n).ok_or_else(unknown);
    }
    let upper = trimmed.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(n) = realtime(bare) {
        return n.ok_or_else(unknown);
    }
    format!("SIG{bare}")
        .parse::<Signal>()
        .map(|s| s as i32)
        .map_err(|_| unknown())
}

/// The canonical name of the signal `name` names: `SIGTERM`,
/// `SIGRTMIN+3`, `SIGRTMAX-1`; real-time signals are named from the
/// nearer end, as the CRI's `Signal` enum does (`SIGRTMIN+15` up to 49,
/// `SIGRTMAX-14` from 50 on with glibc's numbers).
pub fn canonical_name(name: &str) -> Result<String, SignalError> {
    let n = parse(name)?;
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    if n >= min {
        let from_min = n - min;
        return Ok(match (from_min, max - n) {
            (0, _) => "SIGRTMIN".to_owned(),
            (_, 0) => "SIGRTMAX".to_owned(),
            (k, _) if k <= 15 => format!("SIGRTMIN+{k}"),
            (_, k) => format!("SIGRTMAX-{k}"),
        });
    }
    Signal::try_from(n)
        .map(|s| s.as_str().to_owned())
        .map_err(|_| SignalError(name.to_owned()))
}

/// `RTMIN`, `RTMIN+n`, `RTMAX`, `RTMAX-n`: `None` when `bare` is not of
/// that form, `Some(None)` when it is but out of range.
fn realtime(bare: &str) -> Option<Option<i32>> {
    let (base, rest) = if let Some(rest) = bare.strip_prefix("RTMIN") {
        (libc::SIGRTMIN(), rest)
    } else if let Some(rest) = bare.strip_prefix("RTMAX") {
        (libc::SIGRTMAX(), rest)
    } else {
        return None;
    };
    let offset = match rest {
        "" => Some(0),
        _ if base == libc::SIGRTMIN() => rest.strip_prefix('+').and_then(|n| n.parse().ok()),
        _ => rest
            .strip_prefix('-')
            .and_then(|n| n.parse::<i32>().ok())
            .map(|n| -n),
    };
    Some(
        offset
            .map(|o| base + o)
            .filter(|n| (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(n)),
    )
}

/// A signal number the kernel knows (1..=SIGRTMAX).
fn valid(n: i32) -> Option<i32> {
    (1..=libc::SIGRTMAX()).contains(&n).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses() {
        assert_eq!(parse("SIGUSR1"), Ok(libc::SIGUSR1));
        assert_eq!(parse("usr1"), Ok(libc::SIGUSR1));
        assert_eq!(parse("SigQuit"), Ok(libc::SIGQUIT));
        assert_eq!(parse("15"), Ok(libc::SIGTERM));
        assert_eq!(parse(""), Ok(libc::SIGTERM));
    }

    #[test]
    fn realtime_signals_parse() {
        let min = libc::SIGRTMIN();
        let max = libc::SIGRTMAX();
        assert_eq!(parse("SIGRTMIN+3"), Ok(min + 3));
        assert_eq!(parse("RTMIN+3"), Ok(min + 3));
        assert_eq!(parse("sigrtmin"), Ok(min));
        assert_eq!(parse("SIGRTMAX-1"), Ok(max - 1));
        assert_eq!(parse("SIGRTMAX"), Ok(max));
        assert_eq!(parse(&(min + 3).to_string()), Ok(min + 3));
    }

    #[test]
    fn canonical_names() {
        assert_eq!(canonical_name("term").unwrap(), "SIGTERM");
        assert_eq!(canonical_name("9").unwrap(), "SIGKILL");
        assert_eq!(canonical_name("RTMIN+3").unwrap(), "SIGRTMIN+3");
        assert_eq!(
            canonical_name(&libc::SIGRTMIN().to_string()).unwrap(),
            "SIGRTMIN"
        );
        assert_eq!(canonical_name("SIGRTMAX-1").unwrap(), "SIGRTMAX-1");
        assert_eq!(canonical_name("SIGRTMIN+16").unwrap(), "SIGRTMAX-14");
        assert!(canonical_name("nope").is_err());
    }

    #[test]
    fn unknown_and_out_of_range_signals_are_refused() {
        for bad in [
            "SIGNOPE",
            "0",
            "65",
            "-9",
            "SIGRTMIN+99",
            "SIGRTMAX+1",
            "SIGRTMIN-1",
            "RTMIN+x",
        ] {
            assert_eq!(parse(bad), Err(SignalError(bad.into())), "{bad}");
        }
    }
}
