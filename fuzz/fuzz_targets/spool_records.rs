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
        // A replayed record is written by whichever layout is configured
        // (as a late write; the same batch live must not panic either).
        for name in storage_layout::LAYOUTS {
            let layout = storage_layout::by_name(name).expect("a known layout");
            for arrival in [storage_layout::Arrival::Late, storage_layout::Arrival::Live] {
                let mut commands = Vec::new();
                layout.write_commands(&[&batch], arrival, 604_800, 1_700_000_000, &mut commands);
            }
        }
    }
});
