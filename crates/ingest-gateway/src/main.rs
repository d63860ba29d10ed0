//! Standalone ingest-gateway binary.

fn main() {
    broker_common::cli::service_main("ingest-gateway", ingest_gateway::run)
}
