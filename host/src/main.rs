use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use binaryrepo::config::{Config, FileConfig, Overrides};

/// binaryrepo: a binary repository manager. A pull-through cache of upstream registries
/// (remote repositories) and a hosted registry (local repositories); package formats are
/// WebAssembly plugins.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// TOML configuration file; flags given here override it.
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
    /// Remove blobs no repository needs any more (with the server stopped: the metadata
    /// store allows one process; a running server collects with POST /api/gc).
    Gc {
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
}

fn load_config(config: Option<PathBuf>, overrides: Overrides) -> Result<Config, ExitCode> {
    match config.as_deref().map(FileConfig::load).transpose() {
        Ok(f) => Ok(Config::resolve(f.unwrap_or_default(), overrides)),
        Err(e) => {
            eprintln!("binaryrepo: {e}");
            Err(ExitCode::from(2))
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| {
        eprintln!("binaryrepo: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    binaryrepo::tune_allocator();
    // Lines (tracing's and the access log's) go to stderr in batches written by a background
    // thread: see `logging`. The guard writes what is still batched at exit.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (sink, _flush_at_exit) = match binaryrepo::logging::Sink::start(std::io::stderr(), ansi) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("binaryrepo: cannot start the log writer: {e}");
            return ExitCode::FAILURE;
        }
    };
    sink.install_for_access();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(sink)
        .with_ansi(ansi)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, listen, data_dir, plugin_dir } => {
            let config = match load_config(config, Overrides { listen, data_dir, plugin_dir }) {
                Ok(c) => c,
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
        Command::Gc { config, data_dir, plugin_dir, grace_seconds } => {
            let mut config = match load_config(config, Overrides { listen: None, data_dir, plugin_dir }) {
                Ok(c) => c,
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
    }
}
