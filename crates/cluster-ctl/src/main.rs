//! Standalone cluster-ctl binary.

fn main() {
    broker_common::cli::service_main("cluster-ctl", cluster_ctl::run)
}
