//! Command-line interface: `ketch [serve]` runs the daemon; the other
//! subcommands are tools around it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{CgroupDriver, Config, DEFAULT_CONFIG_PATH, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "ketch",
    version,
    about = "A Kubernetes container runtime (CRI v1)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `serve`, also accepted without the subcommand.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve CRI v1 on a unix socket (the default).
    Serve(ServeArgs),
    /// Manage the image store.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Load images from an OCI image layout (a directory or a tar of one)
    /// or a `docker save` tar into the store. Works while ketch serves.
    Import {
        /// The layout directory or archive.
        path: PathBuf,
        /// Config file; a missing default file means built-in defaults.
        #[arg(long, env = "KETCH_CONFIG")]
        config: Option<PathBuf>,
        /// Persistent state directory (`root_dir`).
        #[arg(long)]
        root_dir: Option<PathBuf>,
    },
}

/// Flags of the daemon. Each one overrides the config file's key of the
/// same name.
#[derive(Debug, Clone, Args, Default)]
pub struct ServeArgs {
    /// Config file; a missing default file means built-in defaults.
    #[arg(long, env = "KETCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Persistent state directory (`root_dir`).
    #[arg(long)]
    pub root_dir: Option<PathBuf>,
    /// Volatile state directory (`state_dir`).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// CRI socket path (`listen`).
    #[arg(long)]
    pub listen: Option<PathBuf>,
    /// Log level (`log_level`).
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log format, text or json (`log_format`).
    #[arg(long)]
    pub log_format: Option<LogFormat>,
    /// Cgroup driver reported to kubelet (`cgroup_driver`).
    #[arg(long)]
    pub cgroup_driver: Option<CgroupDriver>,
    /// Address and port of the Prometheus `/metrics` endpoint
    /// (`metrics.listen`).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// CNI config directory (`cni.conf_dirs`; repeat for several).
    #[arg(long = "cni-conf-dir")]
    pub cni_conf_dirs: Vec<PathBuf>,
    /// CNI plugin directory (`cni.bin_dirs`; repeat for several).
    #[arg(long = "cni-bin-dir")]
    pub cni_bin_dirs: Vec<PathBuf>,
}

impl ServeArgs {
    /// These flags, each missing one taken from `outer`: the flags given
    /// before the subcommand (`ketch --config X serve`).
    pub fn or(self, outer: &ServeArgs) -> ServeArgs {
        let pick_vec = |own: Vec<PathBuf>, outer: &Vec<PathBuf>| {
            if own.is_empty() { outer.clone() } else { own }
        };
        ServeArgs {
            config: self.config.or_else(|| outer.config.clone()),
            root_dir: self.root_dir.or_else(|| outer.root_dir.clone()),
            state_dir: self.state_dir.or_else(|| outer.state_dir.clone()),
            listen: self.listen.or_else(|| outer.listen.clone()),
            log_level: self.log_level.or_else(|| outer.log_level.clone()),
            log_format: self.log_format.or(outer.log_format),
            cgroup_driver: self.cgroup_driver.or(outer.cgroup_driver),
            metrics_listen: self.metrics_listen.or_else(|| outer.metrics_listen.clone()),
            cni_conf_dirs: pick_vec(self.cni_conf_dirs, &outer.cni_conf_dirs),
            cni_bin_dirs: pick_vec(self.cni_bin_dirs, &outer.cni_bin_dirs),
        }
    }

    /// The config file with these flags laid over it.
    pub fn resolve(&self) -> Result<Config, crate::config::ConfigError> {
        let (path, required) = match &self.config {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let mut config = Config::load(&path, required)?;
        if let Some(v) = &self.root_dir {
            config.root_dir = v.clone();
        }
        if let Some(v) = &self.state_dir {
            // The socket follows the state dir unless placed explicitly.
            if self.listen.is_none() && config.listen == Config::default().listen {
                config.listen = v.join("ketch.sock");
            }
            config.state_dir = v.clone();
        }
        if let Some(v) = &self.listen {
            config.listen = v.clone();
        }
        if let Some(v) = &self.log_level {
            config.log_level = v.clone();
        }
        if let Some(v) = self.log_format {
            config.log_format = v;
        }
        if let Some(v) = self.cgroup_driver {
            config.cgroup_driver = v;
        }
        if let Some(v) = &self.metrics_listen {
            config.metrics.listen = v.clone();
        }
        if !self.cni_conf_dirs.is_empty() {
            config.cni.conf_dirs = self.cni_conf_dirs.clone();
        }
        if !self.cni_bin_dirs.is_empty() {
            config.cni.bin_dirs = self.cni_bin_dirs.clone();
        }
        config.validate()?;
        Ok(config)
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Serve(args)) => serve(&args.or(&cli.serve)),
        Some(Command::Image { command }) => image(command),
        None => serve(&cli.serve),
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let config = match args.resolve() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ketch: {e}");
            return ExitCode::from(2);
        }
    };
    crate::memory::reexec_with_malloc_tunables();
    crate::logging::init(&config.log_level, config.log_format);
    crate::memory::tune_malloc();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // A burst of pod starts spawns a blocking thread per call, each
        // with its stack and malloc cache (~0.2 MiB resident): let them
        // go a second after the burst instead of tokio's ten.
        .thread_keep_alive(crate::memory::BLOCKING_THREAD_KEEP_ALIVE)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ketch: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("ketch: {e}");
            ExitCode::FAILURE
        }
    }
}

fn image(command: ImageCommand) -> ExitCode {
    match command {
        ImageCommand::Import {
            path,
            config,
            root_dir,
        } => {
            let args = ServeArgs {
                config,
                root_dir,
                ..ServeArgs::default()
            };
            let config = match args.resolve() {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("ketch: {e}");
                    return ExitCode::from(2);
                }
            };
            crate::logging::init("warn", config.log_format);
            match crate::image::import_command(&config, &path) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ketch: import {}: {e}", path.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_before_serve_count_as_serve_s() {
        let cli = Cli::try_parse_from([
            "ketch",
            "--config",
            "/etc/x.toml",
            "--cni-conf-dir",
            "/a",
            "serve",
            "--root-dir",
            "/r",
        ])
        .expect("parses");
        let Some(Command::Serve(args)) = cli.command else {
            panic!("serve expected");
        };
        let args = args.or(&cli.serve);
        assert_eq!(args.config, Some(PathBuf::from("/etc/x.toml")));
        assert_eq!(args.root_dir, Some(PathBuf::from("/r")));
        assert_eq!(args.cni_conf_dirs, vec![PathBuf::from("/a")]);
        // The subcommand's own flag wins.
        let cli = Cli::try_parse_from([
            "ketch",
            "--root-dir",
            "/outer",
            "serve",
            "--root-dir",
            "/inner",
        ])
        .expect("parses");
        let Some(Command::Serve(args)) = cli.command else {
            panic!("serve expected");
        };
        assert_eq!(args.or(&cli.serve).root_dir, Some(PathBuf::from("/inner")));
    }
}
