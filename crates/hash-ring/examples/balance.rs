//! Load balance of the ring for realistic keys.
//!
//! For node counts 3..=10, vnode counts {50, 100, 160, 200, 256, 500} and both
//! hash algorithms, places 200,000 keys `"host-{0..1000}:{ts}"` (200 points
//! per host, `ts` stepping by 5 s) on nodes `broker-1..=broker-N` and prints
//! the max/mean load ratio per node count, the worst one, and the ring build
//! time for 10 nodes. A second table gives the worst max/mean hash-space share
//! for other node naming schemes.
//!
//! ```text
//! cargo run -p hash-ring --release --example balance [-- VNODES,VNODES,...]
//! ```

use std::time::Instant;

use hash_ring::{HashAlgorithm, HashRing, NodeSpec, RingConfig};

const HOSTS: u32 = 1000;
const POINTS_PER_HOST: i64 = 200;
const START_TS: i64 = 1_700_000_000;
const STEP_S: i64 = 5;
const DEFAULT_VNODE_COUNTS: [u32; 6] = [50, 100, 160, 200, 256, 500];
const NODE_COUNTS: std::ops::RangeInclusive<usize> = 3..=10;
const BUILD_REPS: u32 = 20;

type Naming = (&'static str, fn(usize) -> String);

const NAMINGS: [Naming; 4] = [
    ("broker-N", |i| format!("broker-{i}")),
    ("broker-0N", |i| format!("broker-{i:02}")),
    ("10.0.0.N:7000", |i| format!("10.0.0.{}:7000", i + 10)),
    ("node-[a-j]", |i| {
        format!("node-{}", char::from(b'a' + i as u8 - 1))
    }),
];

fn ring(vnodes: u32, hash: HashAlgorithm, n: usize, naming: fn(usize) -> String) -> HashRing {
    let nodes = (1..=n).map(|i| NodeSpec::new(naming(i)));
    HashRing::new(RingConfig { vnodes, hash }, nodes).expect("valid ring config")
}

fn max_share_ratio(ring: &HashRing) -> f64 {
    let max = ring.shares().iter().map(|(_, s)| *s).fold(0f64, f64::max);
    max * ring.nodes().len() as f64
}

fn main() {
    let vnode_counts: Vec<u32> = match std::env::args().nth(1) {
        Some(list) => list
            .split(',')
            .map(|v| v.trim().parse().expect("vnode counts are integers"))
            .collect(),
        None => DEFAULT_VNODE_COUNTS.to_vec(),
    };
    let hosts: Vec<String> = (0..HOSTS).map(|h| format!("host-{h}")).collect();
    let keys = u64::from(HOSTS) * POINTS_PER_HOST as u64;

    for alg in HashAlgorithm::ALL {
        println!("\n{alg}: max/mean key load, {keys} keys, nodes broker-1..=broker-N");
        print!("{:>6}", "vnodes");
        for n in NODE_COUNTS {
            print!(" {:>6}", format!("N={n}"));
        }
        println!(" {:>6} {:>11}", "worst", "build N=10");
        for &vnodes in &vnode_counts {
            print!("{vnodes:>6}");
            let mut worst = 0f64;
            for n in NODE_COUNTS {
                let ring = ring(vnodes, alg, n, NAMINGS[0].1);
                let mut load = vec![0u64; n];
                for host in &hosts {
                    for k in 0..POINTS_PER_HOST {
                        let ts = START_TS + k * STEP_S;
                        load[ring.owner_index_of_point(host, ts).expect("non-empty")] += 1;
                    }
                }
                let mean = load.iter().sum::<u64>() as f64 / n as f64;
                let ratio = *load.iter().max().expect("n > 0") as f64 / mean;
                worst = worst.max(ratio);
                print!(" {ratio:>6.3}");
            }
            let t = Instant::now();
            for _ in 0..BUILD_REPS {
                std::hint::black_box(ring(vnodes, alg, 10, NAMINGS[0].1));
            }
            let build = t.elapsed().as_secs_f64() / f64::from(BUILD_REPS);
            println!(" {worst:>6.3} {:>9.0}µs", build * 1e6);
        }
    }

    println!("\nworst max/mean hash-space share over N=3..=10, by node naming");
    print!("{:>6} {:>14}", "hash", "naming");
    for v in &vnode_counts {
        print!(" {:>6}", format!("v={v}"));
    }
    println!();
    for alg in HashAlgorithm::ALL {
        for (name, naming) in NAMINGS {
            print!("{alg:>6} {name:>14}");
            for &vnodes in &vnode_counts {
                let worst = NODE_COUNTS
                    .map(|n| max_share_ratio(&ring(vnodes, alg, n, naming)))
                    .fold(0f64, f64::max);
                print!(" {worst:>6.3}");
            }
            println!();
        }
    }
}
