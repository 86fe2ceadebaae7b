use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use binaryrepo::cli::{self, ClientArgs};
use binaryrepo::config::{Config, Overrides};

/// binaryrepo: a binary repository manager. A pull-through cache of upstream registries
/// (remote repositories) and a hosted registry (local repositories); package formats are
/// WebAssembly plugins.
///
/// `serve` runs the server; the other commands manage a running one over its API (`--server`,
/// credentials from BINARYREPO_TOKEN, or BINARYREPO_USER and BINARYREPO_PASSWORD).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// TOML configuration file; BINARYREPO_* environment variables override it, flags given
        /// here override both.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Address for the main listener (API and every repository) [default: 0.0.0.0:8081].
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Where blobs, metadata and repository definitions live [default: ./data].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Directory of format plugins (*.wasm) [default: plugins/ next to the executable].
        #[arg(long, value_name = "DIR")]
        plugin_dir: Option<PathBuf>,
    },
    /// Remove blobs no repository needs any more: on the running server (POST /api/gc, progress
    /// shown while it runs), or with --offline (or --config/--data-dir) on a data directory whose
    /// server is stopped (the metadata store allows one process).
    Gc {
        /// Collect in this process, on the data directory, with the server stopped.
        #[arg(long)]
        offline: bool,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long, value_name = "DIR")]
        plugin_dir: Option<PathBuf>,
        /// Keep unreferenced blobs younger than this [default: gc_grace_seconds, 3600].
        #[arg(long, value_name = "SECONDS")]
        grace_seconds: Option<u64>,
    },
    /// Repositories: list, show, create, update, delete.
    #[command(subcommand)]
    Repo(cli::RepoCommand),
    /// The format plugins the server loaded (and the files it refused).
    Plugins,
    /// Users (admins only).
    #[command(subcommand)]
    User(cli::UserCommand),
    /// Your API tokens (an admin's list shows every user's).
    #[command(subcommand)]
    Token(cli::TokenCommand),
}

fn load_config(config: Option<PathBuf>, overrides: Overrides) -> Result<(Config, Vec<String>), ExitCode> {
    match Config::load(config.as_deref(), overrides) {
        Ok((config, loaded)) => Ok((config, loaded.unknown_env)),
        Err(e) => {
            eprintln!("binaryrepo: {e}");
            Err(ExitCode::from(2))
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // Access lines and request metrics of reads are done when a worker runs out of work.
    binaryrepo::server::account::hooks(&mut builder).enable_all().build().map_err(|e| {
        eprintln!("binaryrepo: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

/// Lines (tracing's and the access log's) go to stderr in batches written by a background thread:
/// see `logging`. The guard writes what is still batched at exit.
fn start_logging(config: &Config, unknown_env: &[String]) -> Result<binaryrepo::logging::FlushGuard, ExitCode> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let (sink, guard) = binaryrepo::logging::Sink::start(std::io::stderr(), ansi).map_err(|e| {
        eprintln!("binaryrepo: cannot start the log writer: {e}");
        ExitCode::FAILURE
    })?;
    sink.install(config.log_format, &config.log_level);
    for name in unknown_env {
        tracing::warn!(variable = %name, "environment variable is not a configuration key; ignored");
    }
    Ok(guard)
}

fn main() -> ExitCode {
    binaryrepo::tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, listen, data_dir, plugin_dir } => {
            let (config, unknown_env) = match load_config(config, Overrides { listen, data_dir, plugin_dir }) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let _flush_at_exit = match start_logging(&config, &unknown_env) {
                Ok(g) => g,
                Err(code) => return code,
            };
            let runtime = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match runtime.block_on(binaryrepo::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("binaryrepo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Gc { offline, config, data_dir, plugin_dir, grace_seconds } => {
            if offline || config.is_some() || data_dir.is_some() || plugin_dir.is_some() {
                offline_gc(config, Overrides { listen: None, data_dir, plugin_dir }, grace_seconds)
            } else {
                cli::run(&cli.client, cli::Action::Gc { grace_seconds })
            }
        }
        Command::Repo(c) => cli::run(&cli.client, cli::Action::Repo(c)),
        Command::Plugins => cli::run(&cli.client, cli::Action::Plugins),
        Command::User(c) => cli::run(&cli.client, cli::Action::User(c)),
        Command::Token(c) => cli::run(&cli.client, cli::Action::Token(c)),
    }
}

fn offline_gc(config: Option<PathBuf>, overrides: Overrides, grace_seconds: Option<u64>) -> ExitCode {
    let (mut config, unknown_env) = match load_config(config, overrides) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let _flush_at_exit = match start_logging(&config, &unknown_env) {
        Ok(g) => g,
        Err(code) => return code,
    };
    if let Some(s) = grace_seconds {
        config.gc_grace = std::time::Duration::from_secs(s);
    }
    // No listener: the certificate is not needed (nor required to be readable).
    (config.tls_cert, config.tls_key) = (None, None);
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let grace = config.gc_grace;
    let result = runtime.block_on(async move {
        let app = binaryrepo::build(config).await.map_err(|e| e.to_string())?;
        binaryrepo::gc::collect(&app, grace).await.map_err(|e| e.to_string())
    });
    match result {
        Ok(report) => {
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("binaryrepo gc: {e}");
            ExitCode::FAILURE
        }
    }
}
