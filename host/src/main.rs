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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, listen, data_dir, plugin_dir } => {
            let file = match config.as_deref().map(FileConfig::load).transpose() {
                Ok(f) => f.unwrap_or_default(),
                Err(e) => {
                    eprintln!("binaryrepo: {e}");
                    return ExitCode::from(2);
                }
            };
            let config = Config::resolve(file, Overrides { listen, data_dir, plugin_dir });
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("binaryrepo: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(binaryrepo::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("binaryrepo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
