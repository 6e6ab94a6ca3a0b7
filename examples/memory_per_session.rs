//! Memory per stored session in the memory store: fills it with N sessions
//! of a 100-byte payload and prints the growth of the resident set size.
//!
//! `cargo run --release --example memory_per_session -- [N]` (default 1,000,000).
//! Uses the same allocator as the binary, since that is what an operator runs.

use std::sync::Arc;

use sessionward::clock::{Clock, SystemClock};
use sessionward::session::memory::MemoryStore;
use sessionward::session::{Expiry, Keyed, Record, SessionStore};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Bytes of session data per session, as the issue's target states it.
const PAYLOAD: usize = 100;

fn rss_bytes() -> u64 {
    // statm's second field is resident pages.
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let clock = Arc::new(SystemClock);
    let now = clock.now();
    let store = Keyed::new(
        MemoryStore::new(n * 2, None, clock.clone()),
        None,
        clock,
        None,
    );
    // {"v":"xxx..."} padded to exactly PAYLOAD bytes.
    let data = format!(r#"{{"v":"{}"}}"#, "x".repeat(PAYLOAD - 8));
    assert_eq!(data.len(), PAYLOAD);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let before = rss_bytes();
    runtime.block_on(async {
        for _ in 0..n {
            let record = Record {
                data: data.as_str().into(),
                created_at: now,
                expires_at: now + 3600,
                expiry: Expiry::Default,
                seen_at: now,
                subject: None,
            };
            store.create(record).await.expect("create");
        }
        assert_eq!(store.count().await.expect("count"), n);
    });
    let after = rss_bytes();
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    println!(
        "sessions={n} payload={PAYLOAD}B rss_before={:.1}MiB rss_after={:.1}MiB per_session={per:.0}B overhead_beyond_payload={:.0}B",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per - PAYLOAD as f64
    );
}
