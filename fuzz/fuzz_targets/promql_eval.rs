//! Arbitrary text as a PromQL query: parsed with the bounds query-api
//! applies, then evaluated against three hosts' snapshots in memory (the
//! same evaluator as `/api/v1/query_range`, over a `MemorySource`). Every
//! query must answer a value or an error, never panic, and stop by its
//! deadline.
#![no_main]

use libfuzzer_sys::fuzz_target;
use query_api::promql::{self, MemorySource};
use query_api::store::{Frame, HostInfo};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// Snapshots every 5 s for ten minutes ending at `END` (seconds).
const END: i64 = 1_700_000_000;
const SNAPSHOTS: i64 = 120;

static SOURCE: LazyLock<MemorySource> = LazyLock::new(|| {
    let mut hosts = Vec::new();
    let mut frames = std::collections::BTreeMap::new();
    for (i, (id, role)) in [("web-1", "web"), ("web-2", "web"), ("db-1", "db")]
        .into_iter()
        .enumerate()
    {
        let names = ["cpu_user", "net_rx_bytes_total", "req_bucket{le=\"0.5\"}", "req_bucket{le=\"+Inf\"}"];
        hosts.push(HostInfo {
            id: id.to_string(),
            last_seen: END,
            labels: [("role".to_string(), role.to_string())].into(),
            points: SNAPSHOTS as u64,
            series: names.len(),
            metrics: names.iter().map(|n| n.to_string()).collect(),
        });
        // Milliseconds, jittered like real scrapes.
        let timestamps: Vec<i64> = (0..SNAPSHOTS)
            .map(|k| (END - (SNAPSHOTS - 1 - k) * 5) * 1000 + (k * 37 + i as i64 * 11) % 200)
            .collect();
        let metrics = names
            .iter()
            .enumerate()
            .map(|(j, n)| {
                let col = (0..SNAPSHOTS)
                    .map(|k| match (j, k % 17) {
                        (_, 13) => f64::NAN,
                        (0, _) => ((k * 7 + i as i64) % 100) as f64,
                        _ => (k * (j as i64 + 1) * 1_000 + i as i64) as f64,
                    })
                    .collect();
                (n.to_string(), col)
            })
            .collect();
        frames.insert(id.to_string(), Frame { timestamps, metrics });
    }
    MemorySource {
        config: Default::default(),
        hosts: Arc::new(hosts),
        frames,
    }
});

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
});

/// libfuzzer-sys aborts on any panic, even a caught one. query-api catches
/// promql-parser's own panics (and answers 400); the default hook lets
/// that catch work here too, while a panic anywhere else still reaches
/// libfuzzer-sys's catch and aborts.
static DEFAULT_PANIC_HOOK: std::sync::Once = std::sync::Once::new();

fuzz_target!(|data: &[u8]| {
    DEFAULT_PANIC_HOOK.call_once(|| drop(std::panic::take_hook()));
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(expr) = promql::parse_expr(text) else {
        return;
    };
    let steps: Vec<i64> = (0..20).map(|k| (END - 600 + k * 30) * 1000).collect();
    let _ = RUNTIME.block_on(promql::evaluate(&*SOURCE, &expr, steps, Duration::from_secs(2)));
});
