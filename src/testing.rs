//! Helpers for the unit tests.

/// Whether the test runs as root. Tests that mount, make namespaces, chown
/// or write cgroups call it first and return when it says no: it says on
/// stderr what the test needed, so a skipped test is never taken for a
/// passed one (`make unit` runs without root too).
pub fn root_or_skip(needs: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: needs root ({needs})");
    false
}
