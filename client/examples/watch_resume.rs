//! Watch a prefix and keep watching across member failures: kill the
//! member the watch is on (`kill -9`) and the stream continues on another,
//! with no event repeated or lost.
//!
//! `cargo run --release -p nod-client --example watch_resume -- 127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379 app/`

use std::time::Duration;

use nod_client::{Client, ClientError, KeySpan, WatchOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoints: Vec<String> = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:2379".into())
        .split(',')
        .map(String::from)
        .collect();
    let prefix = args.next().unwrap_or_else(|| "app/".into());
    let client = Client::connect(&endpoints, Duration::from_secs(5))?;
    let mut watch = client
        .watcher(
            prefix.as_bytes(),
            WatchOptions {
                span: KeySpan::Prefix,
                ..Default::default()
            },
        )
        .await?;
    println!("watching {prefix} on {:?}", watch.endpoint());
    while let Some(batch) = watch.next().await {
        let batch = match batch {
            Ok(b) => b,
            Err(ClientError::Compacted { compact_revision }) => {
                eprintln!("history compacted at {compact_revision}: start again from there");
                break;
            }
            Err(e) => return Err(e.into()),
        };
        for e in batch.events {
            let kv = e.kv.unwrap_or_default();
            println!(
                "{} {} = {} (revision {}, via {:?}, {} reconnects)",
                if e.r#type == 0 { "PUT" } else { "DELETE" },
                String::from_utf8_lossy(&kv.key),
                String::from_utf8_lossy(&kv.value),
                kv.mod_revision,
                watch.endpoint(),
                watch.reconnects()
            );
        }
    }
    Ok(())
}
