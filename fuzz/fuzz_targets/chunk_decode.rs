//! Arbitrary bytes as what the chunked layout reads back from Redis: an
//! open chunk (appended records) and a sealed chunk (pco columns). Decoding
//! must answer an error, never panic; an open chunk that decodes must seal
//! into a chunk that decodes to the same values, bit for bit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use storage_layout::chunk::{self, Table};
use storage_layout::frame::FrameBuilder;

fuzz_target!(|data: &[u8]| {
    let mut frame = FrameBuilder::new(i64::MIN, i64::MAX, &[]);
    let _ = chunk::read_chunk(data, &mut frame);
    let _ = chunk::merge_chunk(data, &mut Table::new());
    let mut frame = FrameBuilder::new(i64::MIN, i64::MAX, &[]);
    let _ = chunk::read_records(data, &mut frame);
    let mut table = Table::new();
    if chunk::merge_records(data, &mut table).is_ok() && !table.is_empty() {
        let rows: Vec<(i64, &[f64])> = table.rows().collect();
        let blob = chunk::encode_chunk(&table, &rows);
        let mut back = Table::new();
        chunk::merge_chunk(&blob, &mut back).expect("a sealed chunk decodes");
        assert_eq!(back.len(), table.len());
        for (t, row) in table.rows() {
            for name in table.names_at(t) {
                let (a, b) = (table.get(t, name), back.get(t, name));
                assert_eq!(a.map(f64::to_bits), b.map(f64::to_bits), "{name} at {t}");
            }
            assert_eq!(back.names_at(t).len(), table.names_at(t).len(), "{row:?}");
        }
    }
});
