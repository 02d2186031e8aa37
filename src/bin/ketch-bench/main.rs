//! ketch-bench: measures a CRI runtime through its socket, the same code for
//! any runtime, so ketch and containerd are compared call for call.
//!
//! - `run`: drives one endpoint through every scenario, prints its table
//!   and writes its raw samples as JSON.
//! - `report`: pools the JSON of several runs (of several runtimes, taken
//!   in turns) and prints one table with the ratios of the first label to
//!   the second, and writes it as JSON.
//! - `push-images`: builds the benchmark's images and pushes them to a
//!   loopback registry.
//! - `up`: starts pods with one container each and leaves them running,
//!   to profile a runtime by hand (`perf`, `strace`, `/proc/<pid>/smaps`);
//!   `sweep` removes them.
//! - `sweep`: removes whatever pods and containers a run left behind.
//! - `free-port`: prints a free loopback TCP port.
//! - `host`: prints the header line about the machine: kernel, cgroup
//!   layout and whether `favordynmods` is on (`host`).
//! - `critest-import`: turns the results files of `critest -benchmark
//!   --benchmarking-output-dir` into a run file, for `report`.
//!
//! `benches/run.sh` (`make bench`) sets up both runtimes and runs all of it.

mod bench;
mod client;
mod host;
mod images;
mod objects;
mod procs;
mod registry;
mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use ketch::cri::api::VersionRequest;

use crate::client::{Cri, socket_path, timed};

#[derive(Debug, Parser)]
#[command(
    name = "ketch-bench",
    version,
    about = "Benchmark a CRI runtime over its socket"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure one endpoint.
    Run(Box<RunArgs>),
    /// Merge run files into one table and JSON.
    Report(ReportArgs),
    /// Build the benchmark images and push them to a registry.
    PushImages(PushArgs),
    /// Start pods with one container each and leave them running.
    Up(UpArgs),
    /// Remove every pod and container made by a benchmark run.
    Sweep(SweepArgs),
    /// Print a free TCP port on 127.0.0.1.
    FreePort,
    /// Print the kernel, the cgroup layout and the favordynmods state.
    Host,
    /// Turn critest's benchmark results into a run file.
    CritestImport(CritestImportArgs),
}

#[derive(Debug, Args)]
struct CritestImportArgs {
    /// The runtime's name in the table.
    #[arg(long)]
    label: String,
    /// critest's --benchmarking-output-dir.
    #[arg(long)]
    dir: PathBuf,
    /// The run file to write.
    #[arg(long)]
    json: PathBuf,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// CRI socket (path or unix:// URL).
    #[arg(long)]
    endpoint: String,
    /// Name in the results; the runtime's own name when not given.
    #[arg(long)]
    label: Option<String>,
    /// Image of the benchmark's containers (busybox-like, present or pullable).
    #[arg(long)]
    image: String,
    /// Large image for the cold and warm PullImage figures.
    #[arg(long)]
    pull_image: Option<String>,
    /// Images pulled, untimed, before anything is measured (e.g. a sandbox image).
    #[arg(long)]
    prepull: Vec<String>,
    /// Measured iterations of each call.
    #[arg(long, default_value_t = 20)]
    iterations: usize,
    /// Unrecorded iterations before the measured ones.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Pods started at once, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    concurrency: Vec<usize>,
    /// Measured iterations of each concurrent start.
    #[arg(long, default_value_t = 1)]
    concurrency_iterations: usize,
    /// Cold pulls (each after removing the image).
    #[arg(long, default_value_t = 3)]
    pull_iterations: usize,
    /// Containers present while List calls are timed.
    #[arg(long, default_value_t = 100)]
    list_containers: usize,
    /// Pods running while memory is read.
    #[arg(long, default_value_t = 50)]
    memory_pods: usize,
    /// Pods set up or torn down at once outside timed sections.
    #[arg(long, default_value_t = 8)]
    setup_parallelism: usize,
    /// The daemon's pid, for its resident memory.
    #[arg(long)]
    daemon_pid: Option<u32>,
    /// Substring the per-container processes' executable path and arguments
    /// contain (repeat: all must match), e.g. `containerd-shim-runc-v2`.
    #[arg(long)]
    proc_match: Vec<String>,
    /// Cgroup parent of the benchmark's pods.
    #[arg(long, default_value = "/ketch-bench")]
    cgroup_parent: String,
    /// Directory for pod log directories (a fresh subdirectory, removed after).
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Write the run's samples here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Bound on one CRI call, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// The RuntimeClass handler the pods name (e.g. `runc` for ketch with
    /// `[runtime_handlers.runc]`); empty: the runtime's default.
    #[arg(long, default_value = "")]
    runtime_handler: String,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// Run files written by `run --json`; the first label seen is the
    /// numerator of the ratios.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Write the merged results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct PushArgs {
    /// The registry, host:port.
    #[arg(long)]
    registry: String,
    /// The static busybox binary the images are made of.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// Data layers of the large image.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Gzipped size of each data layer, MiB.
    #[arg(long, default_value_t = 25)]
    layer_mib: usize,
    /// Write the references as shell assignments here (BENCH_IMAGE=...).
    #[arg(long)]
    env_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct UpArgs {
    /// CRI socket (path or unix:// URL).
    #[arg(long)]
    endpoint: String,
    /// Image of the containers (present or pullable).
    #[arg(long)]
    image: String,
    /// Pods to start, one after the other.
    #[arg(long, default_value_t = 1)]
    pods: usize,
    /// Cgroup parent of the pods.
    #[arg(long, default_value = "/ketch-bench")]
    cgroup_parent: String,
    /// Directory for the pods' log directories.
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
}

#[derive(Debug, Args)]
struct SweepArgs {
    #[arg(long)]
    endpoint: String,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Connect(#[from] client::ConnectError),
    #[error("{endpoint} does not answer Version: {source}")]
    Version {
        endpoint: String,
        source: client::OpError,
    },
    #[error(transparent)]
    Report(#[from] report::ReportError),
    #[error(transparent)]
    Image(#[from] images::ImageError),
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error("up failed: {0}")]
    Up(client::OpError),
    #[error("sweep failed: {0}")]
    Sweep(client::OpError),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot find a free port: {0}")]
    Port(std::io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread: the driver waits on the runtime, it does not compete with it.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ketch-bench: {}", Error::Runtime(e));
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run(args) => run(*args).await,
            Command::Report(args) => report_cmd(args),
            Command::PushImages(args) => push_images(args).await,
            Command::Up(args) => up(args).await,
            Command::Sweep(args) => sweep(args).await,
            Command::FreePort => free_port(),
            Command::Host => host_info(),
            Command::CritestImport(args) => critest_import(args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ketch-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn run(args: RunArgs) -> Result<(), Error> {
    let socket = socket_path(&args.endpoint);
    let mut cri = Cri::connect(&socket).await?;
    cri.timeout = Duration::from_secs(args.timeout);
    let mut rt = cri.runtime.clone();
    let (version, _) = timed(
        "Version",
        cri.timeout,
        rt.version(VersionRequest {
            version: "v1".to_owned(),
        }),
    )
    .await
    .map_err(|source| Error::Version {
        endpoint: args.endpoint.clone(),
        source,
    })?;
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| version.runtime_name.clone());
    let run_id = format!("{:08x}", fastrand::u32(..));
    let log_dir = args.work_dir.join(format!("ketch-bench-logs-{run_id}"));
    std::fs::create_dir_all(&log_dir).map_err(|source| Error::Dir {
        path: log_dir.clone(),
        source,
    })?;
    eprintln!(
        "ketch-bench: measuring {label} ({} {}) at {}, run {run_id}",
        version.runtime_name,
        version.runtime_version,
        socket.display()
    );

    let params: BTreeMap<String, String> = [
        ("image", args.image.clone()),
        ("pull_image", args.pull_image.clone().unwrap_or_default()),
        ("iterations", args.iterations.to_string()),
        ("warmup", args.warmup.to_string()),
        ("concurrency", format!("{:?}", args.concurrency)),
        (
            "concurrency_iterations",
            args.concurrency_iterations.to_string(),
        ),
        ("pull_iterations", args.pull_iterations.to_string()),
        ("list_containers", args.list_containers.to_string()),
        ("memory_pods", args.memory_pods.to_string()),
        ("proc_match", args.proc_match.join(" && ")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    let started_unix = unix_now();
    let start = Instant::now();
    let bench = bench::Bench::new(
        cri,
        bench::Params {
            image: args.image,
            pull_image: args.pull_image,
            prepull: args.prepull,
            iterations: args.iterations,
            warmup: args.warmup,
            concurrency: args.concurrency,
            concurrency_iterations: args.concurrency_iterations,
            pull_iterations: args.pull_iterations,
            list_containers: args.list_containers,
            memory_pods: args.memory_pods,
            setup_parallelism: args.setup_parallelism.max(1),
            daemon_pid: args.daemon_pid,
            proc_match: args.proc_match,
            log_dir,
            cgroup_parent: args.cgroup_parent,
            run_id,
            runtime_handler: args.runtime_handler,
        },
    );
    let metrics = bench.run().await.into_metrics();
    let run = report::Run {
        schema: report::SCHEMA.to_owned(),
        label,
        endpoint: socket.display().to_string(),
        runtime_name: version.runtime_name,
        runtime_version: version.runtime_version,
        started_unix,
        duration_secs: start.elapsed().as_secs_f64(),
        params,
        metrics,
    };
    if let Some(path) = &args.json {
        run.save(path)?;
    }
    let merged = report::merge(std::slice::from_ref(&run), unix_now())?;
    print!("{}", merged.table());
    Ok(())
}

fn report_cmd(args: ReportArgs) -> Result<(), Error> {
    let runs = args
        .runs
        .iter()
        .map(|p| report::Run::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    let merged = report::merge(&runs, unix_now())?;
    print!("{}", merged.table());
    if let Some(path) = &args.json {
        merged.save(path)?;
    }
    Ok(())
}

async fn push_images(args: PushArgs) -> Result<(), Error> {
    let reg = registry::Registry::new(&args.registry);
    reg.wait_ready(Duration::from_secs(20)).await?;
    let busybox = args.busybox.clone();
    let (layers, layer_mib) = (args.layers, args.layer_mib);
    let set = tokio::task::spawn_blocking(move || images::build(&busybox, layers, layer_mib))
        .await
        .map_err(|e| images::ImageError::Tar(std::io::Error::other(e)))??;
    for image in [&set.busybox, &set.pause, &set.big] {
        reg.push(image).await?;
        eprintln!(
            "ketch-bench: pushed {} ({} layers, {:.1} MiB)",
            reg.reference(image),
            image.layers.len(),
            image.size() as f64 / (1024.0 * 1024.0)
        );
    }
    let env = format!(
        "BENCH_IMAGE={}\nBENCH_PAUSE_IMAGE={}\nBENCH_PULL_IMAGE={}\nBENCH_PULL_IMAGE_BYTES={}\nBENCH_PULL_IMAGE_LAYERS={}\n",
        reg.reference(&set.busybox),
        reg.reference(&set.pause),
        reg.reference(&set.big),
        set.big.size(),
        set.big.layers.len()
    );
    match &args.env_file {
        Some(path) => std::fs::write(path, env).map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?,
        None => print!("{env}"),
    }
    Ok(())
}

async fn up(args: UpArgs) -> Result<(), Error> {
    let cri = Cri::connect(&socket_path(&args.endpoint)).await?;
    objects::ensure_image(&cri, &args.image)
        .await
        .map_err(Error::Up)?;
    let run_id = format!("{:08x}", fastrand::u32(..));
    let log_dir = args.work_dir.join(format!("ketch-bench-up-{run_id}"));
    std::fs::create_dir_all(&log_dir).map_err(|source| Error::Dir {
        path: log_dir.clone(),
        source,
    })?;
    let specs = objects::Specs {
        image: args.image,
        log_dir,
        cgroup_parent: args.cgroup_parent,
        run_id,
        runtime_handler: String::new(),
    };
    for i in 0..args.pods {
        let (made, result) = objects::start_pod(&cri, &specs, specs.pod(&format!("up{i}"))).await;
        if let Err(e) = result {
            objects::teardown(&cri, made).await;
            return Err(Error::Up(e));
        }
        println!(
            "{} {}",
            made.pod.unwrap_or_default(),
            made.containers.join(" ")
        );
    }
    Ok(())
}

async fn sweep(args: SweepArgs) -> Result<(), Error> {
    let cri = Cri::connect(&socket_path(&args.endpoint)).await?;
    let (pods, containers) = objects::sweep(&cri).await.map_err(Error::Sweep)?;
    if pods + containers > 0 {
        eprintln!("ketch-bench: swept {pods} pods and {containers} containers");
    }
    Ok(())
}

fn host_info() -> Result<(), Error> {
    let read = |path: &str| {
        std::fs::read_to_string(path).map_err(|source| {
            Error::Report(report::ReportError::Read {
                path: path.into(),
                source,
            })
        })
    };
    let kernel = read("/proc/sys/kernel/osrelease")?;
    let mounts = host::cgroup_mounts(&read("/proc/self/mountinfo")?);
    println!(
        "kernel {}, {}",
        kernel.trim(),
        host::cgroup_summary(&mounts)
    );
    Ok(())
}

fn critest_import(args: CritestImportArgs) -> Result<(), Error> {
    let run = host::critest_run(&args.label, &args.dir).map_err(|source| {
        Error::Report(report::ReportError::Read {
            path: args.dir.clone(),
            source,
        })
    })?;
    run.save(&args.json)?;
    Ok(())
}

fn free_port() -> Result<(), Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(Error::Port)?;
    let port = listener.local_addr().map_err(Error::Port)?.port();
    println!("{port}");
    Ok(())
}
