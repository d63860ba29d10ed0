//! Standalone shard-router binary.

fn main() {
    broker_common::cli::service_main("shard-router", shard_router::run)
}
