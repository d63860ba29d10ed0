//! The standalone host-manager binary: `broker run --service host-manager`.

/// mimalloc, as in every broker binary (see `main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    broker::service_main(broker_common::Service::HostManager)
}
