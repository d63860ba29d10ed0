//! Standalone host-manager binary.

fn main() {
    broker_common::cli::service_main("host-manager", host_manager::run)
}
