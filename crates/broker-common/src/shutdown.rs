//! Shutdown signalling.

use std::future::Future;
use std::time::Duration;

/// Resolves on the first SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => tracing::info!(signal = "SIGINT", "shutting down"),
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Runs `work` to completion or until `grace` elapses, whichever is first.
/// Returns false when the grace period ran out.
/// Longest a stopping process waits for Redis to answer QUIT. The data is
/// flushed by then; QUIT only closes politely, and fred sometimes waits its
/// whole internal command timeout (10 s) for the answer on one connection
/// of a pool.
pub const REDIS_QUIT_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn within_grace<F: Future<Output = ()>>(grace: Duration, work: F) -> bool {
    match tokio::time::timeout(grace, work).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(grace = ?grace, "grace period elapsed before work drained");
            false
        }
    }
}
