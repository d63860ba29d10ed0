//! The standalone shard-router binary: `broker run --service shard-router`.

/// mimalloc, as in every broker binary (see `main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    broker::service_main(broker_common::Service::ShardRouter)
}
