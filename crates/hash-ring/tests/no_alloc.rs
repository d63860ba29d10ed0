//! Point lookups must not allocate. A counting global allocator wraps the
//! system one; this file is its own test binary so nothing else runs in it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use hash_ring::{HashAlgorithm, HashRing, NodeSpec, RingConfig};

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: forwards every call unchanged to `System`; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn point_lookup_does_not_allocate() {
    let host_200 = "h".repeat(200);
    for hash in HashAlgorithm::ALL {
        let ring = HashRing::new(
            RingConfig {
                hash,
                ..RingConfig::default()
            },
            (1..=10).map(|i| NodeSpec::new(format!("broker-{i}"))),
        )
        .unwrap();
        let hosts = ["host-1", "", host_200.as_str()];
        let before = allocations();
        for host in hosts {
            for ts in [0, -1, 1_640_995_200, i64::MIN, i64::MAX] {
                std::hint::black_box(ring.owner_of_point(host, ts));
                std::hint::black_box(ring.owner_index_of_point(host, ts));
                std::hint::black_box(ring.hash_point(host, ts));
                // up to 64 nodes the whole fallback order is allocation-free
                for i in ring.owners_of_point(host, ts) {
                    std::hint::black_box(i);
                }
            }
        }
        assert_eq!(allocations(), before, "{hash}: lookup allocated");
    }
}

#[test]
fn long_crc32_host_ids_do_not_allocate_either() {
    let host = "h".repeat(10_000);
    let ring = HashRing::new(RingConfig::default(), [NodeSpec::new("broker-1")]).unwrap();
    let before = allocations();
    std::hint::black_box(ring.owner_of_point(&host, 1));
    assert_eq!(allocations(), before);
}

#[test]
fn first_owner_of_a_large_ring_does_not_allocate() {
    let ring = HashRing::new(
        RingConfig {
            vnodes: 4,
            ..RingConfig::default()
        },
        (1..=100).map(|i| NodeSpec::new(format!("broker-{i}"))),
    )
    .unwrap();
    let before = allocations();
    let mut owners = ring.owners_of_point("host-1", 1);
    std::hint::black_box(owners.next());
    assert_eq!(allocations(), before);
    // the rest of the order needs a bitset of 100 bits
    assert_eq!(owners.count(), 99);
}
