//! The `sessionward` command: run, check and demo.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sessionward::clock::SystemClock;
use sessionward::config::{Config, ConfigError, StoreConfig};
use sessionward::server::StopHandle;
use sessionward::telemetry::{self, LogFormat};
use tracing::info;

// glibc's malloc showed up as ~9% of the proxy's CPU (arena locking and
// consolidation of hyper's buffers); mimalloc's thread-local heaps avoid both.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Django-style sessions for any web app, as a reverse proxy.
#[derive(Debug, Parser)]
#[command(name = "sessionward", version, about)]
struct Cli {
    /// Log line format on stderr (the level comes from RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the proxy.
    Run {
        /// The YAML configuration file.
        #[arg(short, long, env = "SESSIONWARD_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file and print every problem (exit code 2 on error).
    Check {
        /// The YAML configuration file.
        #[arg(short, long, env = "SESSIONWARD_CONFIG")]
        config: PathBuf,
    },
    /// Remove expired sessions from the configured store now (SQLite; Redis
    /// and the cookie store expire sessions by themselves).
    Purge {
        /// The YAML configuration file.
        #[arg(short, long, env = "SESSIONWARD_CONFIG")]
        config: PathBuf,
    },
    /// Start the proxy in front of a built-in demo app, with the in-memory store.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => report(runtime().and_then(|rt| rt.block_on(run(config)))),
        Command::Demo { listen } => report(runtime().and_then(|rt| rt.block_on(demo(listen)))),
        Command::Purge { config } => report(runtime().and_then(|rt| rt.block_on(purge(config)))),
    }
}

async fn purge(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path).with_context(|| format!("loading {}", path.display()))?;
    if matches!(config.store, StoreConfig::Memory { .. }) {
        anyhow::bail!(
            "the memory store lives inside the running proxy and expires sessions by itself; there is nothing to purge from outside"
        );
    }
    let store = sessionward::build_store(&config, Arc::new(SystemClock))?;
    let purged = store.purge().await?;
    println!("purged {purged} expired session(s)");
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Workers run their own runtimes; this one only waits for signals.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessionward: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            println!(
                "{}: ok (listen {}, upstream {}, store {:?})",
                path.display(),
                config.listen,
                config.upstream,
                config.store
            );
            ExitCode::SUCCESS
        }
        Err(ConfigError::Invalid(problems)) => {
            eprintln!("{}: {} problem(s)", path.display(), problems.len());
            for p in problems {
                eprintln!("  {p}");
            }
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path).with_context(|| format!("loading {}", path.display()))?;
    let server = sessionward::start(&config, Arc::new(SystemClock)).await?;
    let admin = server
        .admin_addr()
        .map_or_else(|| "off".to_owned(), |a| a.to_string());
    info!(
        listen = %server.local_addr(),
        admin,
        upstream = %config.upstream,
        workers = config.workers,
        store = ?config.store,
        "sessionward is serving"
    );
    stop_on_signal(server.stop_handle());
    if let Some(certs) = server.certificates() {
        reload_on_sighup(certs);
    }
    server.wait().await;
    info!("stopped");
    Ok(())
}

async fn demo(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let demo = sessionward::demo::Demo::start(listen).await?;
    println!();
    println!(
        "  sessionward demo: open http://{}/ in your browser",
        demo.proxy_addr()
    );
    println!(
        "  (the demo app listens on {}; Ctrl-C stops both)",
        demo.app_addr()
    );
    println!();
    stop_on_signal(demo.stop_handle());
    demo.wait().await;
    Ok(())
}

/// SIGHUP: read the TLS certificate and key again (they are also watched).
#[cfg(unix)]
fn reload_on_sighup(certs: Arc<sessionward::tls::Certificates>) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            if let Err(e) = certs.reload() {
                tracing::error!(error = %e, "SIGHUP: the TLS files cannot be used; keeping the old certificate");
            }
        }
    });
}

#[cfg(not(unix))]
fn reload_on_sighup(_certs: Arc<sessionward::tls::Certificates>) {}

/// SIGINT or SIGTERM: stop accepting and drain.
fn stop_on_signal(handle: StopHandle) {
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown signal received");
        handle.stop();
    });
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
