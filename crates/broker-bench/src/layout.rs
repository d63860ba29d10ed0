//! What the benchmarks need of the key layouts: pick one by name, seal
//! every open chunk (the chunked layout), and count what Redis holds, so
//! memory per sample is measured on data at rest.

use anyhow::Context;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Instant;
use storage_layout::chunked::OPEN_POINTS_FIELD;
use storage_layout::{ChunkedConfig, ChunkedLayout, Command, Exec, KeyLayout, RangeReq, meta};

/// Hosts per pipeline when counting.
const HOSTS_PER_PIPELINE: usize = 1_000;
/// Hosts per read when reading everything back.
const HOSTS_PER_READ: usize = 50;
/// Hosts sealed at once.
const SEAL_CONCURRENCY: usize = 16;

/// The layout `name`, or an error listing the valid names.
pub fn by_name(name: &str) -> anyhow::Result<Arc<dyn KeyLayout>> {
    storage_layout::by_name(name).with_context(|| {
        format!(
            "--layout {name:?}: valid layouts are {}",
            storage_layout::LAYOUTS.join(", ")
        )
    })
}

/// A client of the bench's Redis.
pub async fn client(url: &str) -> anyhow::Result<fred::clients::Client> {
    use fred::interfaces::ClientLike;
    let config = fred::types::config::Config::from_url(url)?;
    let client = fred::types::Builder::from_config(config).build()?;
    client.init().await?;
    Ok(client)
}

/// Every snapshot of each of `hosts`.
fn all_time(hosts: &[String]) -> Vec<RangeReq> {
    hosts
        .iter()
        .map(|h| RangeReq {
            host: h.clone(),
            start_ms: 0,
            end_ms: i64::MAX,
        })
        .collect()
}

/// Snapshots stored for `hosts`, as the layout counts them.
pub async fn stored_points(
    db: &dyn Exec,
    layout: &dyn KeyLayout,
    hosts: &[String],
) -> anyhow::Result<u64> {
    let mut total = 0;
    for part in hosts.chunks(HOSTS_PER_PIPELINE) {
        total += layout
            .counts(db, &all_time(part))
            .await?
            .iter()
            .sum::<u64>();
    }
    Ok(total)
}

/// Distinct snapshots of `hosts` read back through the layout.
pub async fn read_back(
    db: &dyn Exec,
    layout: &dyn KeyLayout,
    hosts: &[String],
) -> anyhow::Result<u64> {
    let mut total = 0;
    for part in hosts.chunks(HOSTS_PER_READ) {
        let frames = layout.frames(db, &all_time(part), &[], None).await?;
        total += frames
            .iter()
            .map(|f| f.timestamps.len() as u64)
            .sum::<u64>();
    }
    Ok(total)
}

/// Records in the open chunks of `hosts` (chunked layout).
pub async fn open_points(db: &dyn Exec, hosts: &[String]) -> anyhow::Result<u64> {
    let mut total = 0;
    for part in hosts.chunks(HOSTS_PER_PIPELINE) {
        let commands = part
            .iter()
            .map(|h| {
                Command::of(
                    "HGET",
                    &[meta::host_key(h).as_bytes(), OPEN_POINTS_FIELD.as_bytes()],
                )
            })
            .collect();
        for r in db.pipeline(commands).await? {
            total += r.int().unwrap_or(0).max(0) as u64;
        }
    }
    Ok(total)
}

/// Seals every open chunk of `hosts` as the writer's maintainer would;
/// returns the records sealed and the seconds it took.
pub async fn seal_all(
    db: &dyn Exec,
    hosts: &[String],
    ttl_secs: u64,
) -> anyhow::Result<(u64, f64)> {
    let layout = ChunkedLayout::new(ChunkedConfig::default());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let started = Instant::now();
    let layout = &layout;
    let seals: Vec<_> = hosts
        .iter()
        .map(|h| async move {
            let mut n = 0u64;
            loop {
                let sealed = layout.seal(db, h, ttl_secs, now).await?;
                if sealed == 0 {
                    return anyhow::Ok(n);
                }
                n += sealed as u64;
            }
        })
        .collect();
    let mut total = 0;
    let mut done = futures::stream::iter(seals).buffer_unordered(SEAL_CONCURRENCY);
    while let Some(n) = done.next().await {
        total += n?;
    }
    Ok((total, started.elapsed().as_secs_f64()))
}
