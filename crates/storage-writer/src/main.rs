//! Standalone storage-writer binary.

fn main() {
    broker_common::cli::service_main("storage-writer", storage_writer::run)
}
