//! Standalone query-api binary.

fn main() {
    broker_common::cli::service_main("query-api", query_api::run)
}
