//! The standalone cluster-ctl binary: `broker run --service cluster-ctl`.

/// mimalloc, as in every broker binary (see `main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    broker::service_main(broker_common::Service::ClusterCtl)
}
