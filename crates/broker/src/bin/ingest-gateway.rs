//! The standalone ingest-gateway binary: `broker run --service ingest-gateway`.

/// mimalloc, as in every broker binary (see `main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    broker::service_main(broker_common::Service::IngestGateway)
}
