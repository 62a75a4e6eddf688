//! Take a distributed lock, hold it a while, release it. Run two at once:
//! the second waits. Kill the holder with `kill -9` and the waiter gets
//! the lock once the holder's lease (5 s) expires.
//!
//! `cargo run --release -p nod-client --example mutex -- 127.0.0.1:2379 my-lock`

use std::time::Duration;

use nod_client::concurrency::{Mutex, Session};
use nod_client::Client;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoints: Vec<String> = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:2379".into())
        .split(',')
        .map(String::from)
        .collect();
    let name = args.next().unwrap_or_else(|| "my-lock".into());
    let client = Client::connect(&endpoints, Duration::from_secs(5))?;
    let session = Session::new(&client, 5).await?;
    let mut lock = Mutex::new(&session, name.as_bytes());
    println!("waiting for {name} (lease {:x})", session.lease());
    lock.lock().await?;
    println!("locked {name} at revision {}", lock.revision());
    tokio::time::sleep(Duration::from_secs(10)).await;
    lock.unlock().await?;
    println!("unlocked");
    session.close().await?;
    Ok(())
}
