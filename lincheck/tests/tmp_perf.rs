mod common;
use common::{generate, plant_stale_read, Workload};
use std::time::Instant;
#[test]
fn perf() {
    for (unknown, failed) in [(0.0, 0.0), (0.02, 0.0), (0.05, 0.0), (0.2, 0.0)] {
        for clients in [5, 10] {
            for seed in [7, 8] {
                for keys in [1, 10] {
                let mut history = generate(&Workload { seed, ops: 3000, keys, clients, unknown, failed });
                plant_stale_read(&mut history);
                let start = Instant::now();
                let v = nod_lincheck::check(&history);
                eprintln!("u={unknown} f={failed} keys={keys} clients={clients} seed={seed}: {:?} {}", start.elapsed(), if let nod_lincheck::Verdict::Violation{message,..} = &v { message.chars().take(200).collect() } else { format!("{v:?}") });
                }
            }
        }
    }
}
