//! `ketch-shim`: what ketch leaves running beside its containers — a
//! container's monitor (`ketch-shim monitor`), a pod's PID 1 when the pod
//! shares a PID namespace (`ketch-shim pause`) — and the helper that execs
//! into a container (`ketch-shim exec`), in a binary of their own.
//!
//! The daemon's binary carries the gRPC server, the registry client and
//! TLS: a monitor exec'd from it relocated half a MiB of its data (private
//! to each process) and faulted in megabytes of its text. This binary
//! links only the code these processes run, and the daemon's binary does
//! not link it. The daemon runs it from beside its own executable (see
//! `Runtime::new`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ketch-shim",
    version,
    about = "ketch's per-container processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A container's monitor (started by the daemon).
    Monitor(ketch::monitor::MonitorArgs),
    /// PID 1 of a pod's shared PID namespace (started by the daemon).
    Pause(ketch::monitor::pause::PauseArgs),
    /// A process exec'd into a running container (started by the daemon).
    Exec(ketch::executor::exec::ExecArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Monitor(args) => ketch::monitor::main(&args),
        Command::Pause(args) => ketch::monitor::pause::main(&args),
        Command::Exec(args) => ketch::executor::exec::main(&args),
    }
}
