//! Put a key, read it back, delete it.
//!
//! `cargo run --release -p nod-client --example put_get -- 127.0.0.1:2379,127.0.0.1:22379`
//! (start a cluster with `nod dev` first).

use std::time::Duration;

use nod_client::Client;
use nod_proto::etcd::etcdserverpb::{DeleteRangeRequest, PutRequest};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoints: Vec<String> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:2379".into())
        .split(',')
        .map(String::from)
        .collect();
    let mut client = Client::connect(&endpoints, Duration::from_secs(5))?;
    let put = client
        .put(PutRequest {
            key: b"example/greeting".to_vec(),
            value: b"hello".to_vec(),
            ..Default::default()
        })
        .await?;
    println!(
        "put at revision {}",
        put.header.unwrap_or_default().revision
    );
    if let Some(kv) = client.get("example/greeting").await? {
        println!(
            "{} = {}",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value)
        );
    }
    client.refresh_leader().await;
    for e in client.endpoints() {
        println!(
            "{} member {:x?} healthy {} leader {}",
            e.url, e.member_id, e.healthy, e.is_leader
        );
    }
    client
        .delete(DeleteRangeRequest {
            key: b"example/greeting".to_vec(),
            ..Default::default()
        })
        .await?;
    Ok(())
}
