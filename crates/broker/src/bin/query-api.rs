//! The standalone query-api binary: `broker run --service query-api`.

/// mimalloc, as in every broker binary (see `main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    broker::service_main(broker_common::Service::QueryApi)
}
