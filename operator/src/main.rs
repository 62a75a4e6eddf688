//! The Nod operator. Only its version exists so far; the reconciler lands with
//! the Kubernetes issue. Running it prints the version and exits 0.

fn main() {
    println!("nod-operator {}", env!("CARGO_PKG_VERSION"));
}
