//! Arbitrary bytes as an agent message: decoding and validation must never
//! panic, and every point of a decoded batch must end up either accepted or
//! rejected with a reason.
#![no_main]

use broker_common::config::GatewayConfig;
use broker_proto::v1::MetricBatch;
use ingest_gateway::validate::{Limits, validate_batch};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = MetricBatch::decode(data) else {
        return;
    };
    let limits = Limits::new(&GatewayConfig::default(), Duration::from_secs(7 * 86_400));
    let n = batch.points.len();
    match validate_batch(batch, &limits, 1_700_000_000) {
        Ok(v) => {
            assert_eq!(v.batch.points.len() + v.errors.len(), n);
            assert_eq!(v.index_map.len(), v.batch.points.len());
            for p in &v.batch.points {
                assert!(p.values.iter().all(|x| x.is_finite()));
            }
        }
        Err(rej) => assert!(!rej.message.is_empty()),
    }
});
