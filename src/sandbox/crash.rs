//! Test hook: named crash points.
//!
//! With `KETCH_TEST_CRASH_POINT=<name>` in its environment, the daemon
//! kills itself with SIGKILL (exactly what `kill -9` does: no destructor,
//! no cleanup) when it reaches the point of that name. The end-to-end tests
//! use it to prove that a crash in the middle of an operation leaves
//! nothing half made after a restart. Without the variable a crash point
//! is one cached lookup.
//!
//! Points: `run-pod-after-record`, `run-pod-after-namespaces`,
//! `run-pod-after-pid-holder` (holder running, not yet recorded),
//! `run-pod-after-pid-holder-record` (only for a holder that joined no
//! pinned namespace: one that did is found by them, not recorded here),
//! `run-pod-after-cni-add` (CNI ADD done, its result not yet persisted),
//! `run-pod-after-network`, `run-pod-before-ready`;
//! `stop-pod-after-not-ready` (NOTREADY committed, holder still running),
//! `stop-pod-after-pid-holder` (holder killed, network not yet down).

use std::sync::OnceLock;

pub const CRASH_POINT_ENV: &str = "KETCH_TEST_CRASH_POINT";

pub(crate) fn crash_point(name: &str) {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    let point = POINT.get_or_init(|| std::env::var(CRASH_POINT_ENV).ok());
    if point.as_deref() == Some(name) {
        tracing::error!(point = name, "{CRASH_POINT_ENV}: crashing on purpose");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
        std::process::abort();
    }
}
