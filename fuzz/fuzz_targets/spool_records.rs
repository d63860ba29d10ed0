//! Arbitrary bytes as spool records: whatever a record holds, reading the
//! spool must not panic; a record that does not decode is reported as
//! corrupt rather than stopping the replay.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    // The spool stores prost-encoded MetricBatch records; decoding is the
    // only step that reads untrusted bytes.
    if let Ok(batch) = broker_proto::v1::MetricBatch::decode(data) {
        // Whatever decodes must re-encode and decode to the same value.
        let again = broker_proto::v1::MetricBatch::decode(batch.encode_to_vec().as_slice())
            .expect("re-encoded batch decodes");
        assert_eq!(again.points.len(), batch.points.len());
        let mut commands = Vec::new();
        use storage_writer::layout::KeyLayout;
        storage_writer::layout::SeedLayout::default().write_commands(
            &[&batch],
            604_800,
            1_700_000_000,
            &mut commands,
        );
    }
});
