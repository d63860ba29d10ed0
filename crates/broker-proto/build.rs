//! Compiles `proto/` with the pure-Rust `protox` compiler, so no system
//! `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "broker/v1/metrics.proto",
        "broker/v1/internal.proto",
        "broker/v1/bench.proto",
        "broker/v1/dlq.proto",
        "broker/v1/cluster.proto",
        "broker/v1/query.proto",
        "broker/v1/hosts.proto",
        "prometheus/remote.proto",
    ];
    let fds = protox::compile(files, [&root])?;
    tonic_prost_build::configure()
        // tonic-prost's codec, with a batch's counts checked before it is
        // decoded (src/bounded.rs).
        .codec_path("crate::bounded::Codec")
        // Ordered, so a node's status compares and prints the same each time.
        .btree_map(".broker.v1.RaftStatus.peers")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    for f in files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    Ok(())
}
