mod common;
use common::{generate, plant_stale_read, Workload};
#[test]
fn perf2() {
    let mut history = generate(&Workload { seed: 8, ops: 3000, keys: 1, clients: 10, unknown: 0.05, failed: 0.0 });
    plant_stale_read(&mut history);
    let v = nod_lincheck::check(&history);
    eprintln!("{}", if let nod_lincheck::Verdict::Violation{message,..} = &v { message.chars().take(3000).collect() } else { format!("{v:?}") });
}
