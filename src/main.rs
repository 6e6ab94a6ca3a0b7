//! The `sessionward` command: run, check, demo and sessions.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sessionward::clock::SystemClock;
use sessionward::config::{Config, ConfigError, StoreConfig};
use sessionward::server::StopHandle;
use sessionward::session::{Expiry, KeyHash, Record, SessionKey};
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
    /// Inspect and manage the sessions in the configured store (SQLite or
    /// Redis: the memory store lives inside the running proxy, and the
    /// cookie store's sessions live in the browsers).
    Sessions {
        /// The YAML configuration file.
        #[arg(short, long, env = "SESSIONWARD_CONFIG")]
        config: PathBuf,
        #[command(subcommand)]
        action: SessionsAction,
    },
    /// Same as `sessions --config FILE purge` (kept for existing scripts).
    #[command(hide = true)]
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

#[derive(Debug, Subcommand)]
enum SessionsAction {
    /// One line per live session: id, subject, created, last seen, expires,
    /// bytes; oldest first.
    List {
        /// At most this many (any of them when there are more; SQLite takes
        /// them in id order, Redis in its scan order).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One session as JSON, its data included. ID is what `list` prints, or
    /// the session cookie's value.
    Show {
        /// The session's id (64 hex digits) or cookie value.
        id: String,
    },
    /// Deletes one session: its cookie stops working at once.
    Delete {
        /// The session's id (64 hex digits) or cookie value.
        id: String,
    },
    /// Deletes every session of one subject (what the app set with
    /// `X-Session-Subject`): a user logged out everywhere at once.
    RevokeSubject {
        /// The subject, for example a user id.
        subject: String,
    },
    /// Removes expired sessions now (SQLite sweeps them every
    /// `purge_interval` too; Redis and the cookie store need no sweeping).
    Purge,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => report(runtime().and_then(|rt| rt.block_on(run(config)))),
        Command::Demo { listen } => report(runtime().and_then(|rt| rt.block_on(demo(listen)))),
        Command::Purge { config } => {
            report(runtime().and_then(|rt| rt.block_on(sessions(config, SessionsAction::Purge))))
        }
        Command::Sessions { config, action } => {
            report(runtime().and_then(|rt| rt.block_on(sessions(config, action))))
        }
    }
}

async fn sessions(path: PathBuf, action: SessionsAction) -> anyhow::Result<()> {
    let config = Config::load(&path).with_context(|| format!("loading {}", path.display()))?;
    if matches!(config.store, StoreConfig::Memory { .. }) {
        anyhow::bail!(
            "the memory store lives inside the running proxy and expires sessions by itself; \
             another process cannot reach it (use store.kind sqlite or redis to manage sessions from outside)"
        );
    }
    let store = sessionward::build_store(&config, Arc::new(SystemClock))?;
    let idle = config.session.idle_timeout;
    match action {
        SessionsAction::List { limit, json } => {
            let limit = limit as usize;
            // One more than shown tells whether there are more.
            let mut listed = store.list(limit + 1).await?;
            let more = listed.len() > limit;
            listed.truncate(limit);
            listed.sort_by_key(|(_, r)| r.created_at);
            if !json {
                println!(
                    "{:<64}  {:<20}  {:<20}  {:<20}  {:>7}  SUBJECT",
                    "ID", "CREATED", "LAST SEEN", "EXPIRES", "BYTES"
                );
            }
            for (id, record) in &listed {
                if json {
                    let mut line = describe(id, record, idle);
                    if let Some(o) = line.as_object_mut() {
                        o.remove("data");
                    }
                    println!("{line}");
                } else {
                    println!(
                        "{}  {:<20}  {:<20}  {:<20}  {:>7}  {}",
                        id.to_hex(),
                        timestamp(record.created_at),
                        timestamp(record.seen_at),
                        timestamp(record.deadline(idle)),
                        record.data.len(),
                        record.subject.as_deref().unwrap_or("-")
                    );
                }
            }
            if more {
                eprintln!("(more than {limit} live sessions; --limit shows more)");
            }
        }
        SessionsAction::Show { id } => {
            let id = session_id(&id)?;
            let record = store
                .peek(&id)
                .await?
                .with_context(|| format!("no live session with id {}", id.to_hex()))?;
            println!("{:#}", describe(&id, &record, idle));
        }
        SessionsAction::Delete { id } => {
            let id = session_id(&id)?;
            if !store.delete_id(&id).await? {
                anyhow::bail!("no live session with id {}", id.to_hex());
            }
            println!("deleted session {}", id.to_hex());
        }
        SessionsAction::RevokeSubject { subject } => {
            let n = store.revoke_subject(&subject).await?;
            println!("revoked {n} session(s) of {subject:?}");
        }
        SessionsAction::Purge => {
            let purged = store.purge().await?;
            println!("purged {purged} expired session(s)");
        }
    }
    Ok(())
}

/// What an operator may pass for a session: the id `list` prints, or the
/// cookie value (hashed here, as the proxy does).
fn session_id(text: &str) -> anyhow::Result<KeyHash> {
    KeyHash::from_hex(text)
        .or_else(|| SessionKey::parse(text).map(|k| k.hash()))
        .with_context(|| {
            format!(
                "{text:?} is not a session id (the 64 hex digits `sessions list` prints) or a session cookie value"
            )
        })
}

/// A session as JSON: times in RFC 3339 UTC, its data parsed.
fn describe(id: &KeyHash, record: &Record, idle: Option<u64>) -> serde_json::Value {
    let expiry = match record.expiry {
        Expiry::Default => serde_json::json!("default"),
        Expiry::BrowserClose => serde_json::json!("browser-close"),
        Expiry::Idle(secs) => serde_json::json!(secs),
    };
    let data = serde_json::from_str::<serde_json::Value>(&record.data)
        .unwrap_or_else(|_| serde_json::Value::String(record.data.to_string()));
    serde_json::json!({
        "id": id.to_hex(),
        "subject": record.subject.as_deref(),
        "created": timestamp(record.created_at),
        "last_seen": timestamp(record.seen_at),
        "expires": timestamp(record.deadline(idle)),
        "expiry": expiry,
        "bytes": record.data.len(),
        "data": data,
    })
}

/// Unix seconds as RFC 3339 UTC (the raw number if out of range).
fn timestamp(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
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
