//! Campaign for leadership under a name, proclaim a value while leading,
//! resign on Ctrl-C. Others observing see each leader in turn.
//!
//! `cargo run --release -p nod-client --example election -- 127.0.0.1:2379 my-service candidate-1`

use std::time::Duration;

use nod_client::concurrency::{Election, Session};
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
    let name = args.next().unwrap_or_else(|| "my-service".into());
    let me = args
        .next()
        .unwrap_or_else(|| format!("candidate-{}", std::process::id()));
    let client = Client::connect(&endpoints, Duration::from_secs(5))?;
    let session = Session::new(&client, 5).await?;
    let mut election = Election::new(&session, name.as_bytes());

    let mut observed = election.observe().await?;
    tokio::spawn(async move {
        while let Some(leader) = observed.recv().await {
            match leader {
                Some(kv) => println!("leader: {}", String::from_utf8_lossy(&kv.value)),
                None => println!("no leader"),
            }
        }
    });

    election.campaign(me.as_bytes()).await?;
    println!("{me} leads {name}");
    let mut beat = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = session.done() => {
                eprintln!("session lost: no longer leading");
                return Ok(());
            }
            _ = tokio::time::sleep(Duration::from_secs(2)) => {
                beat += 1;
                election.proclaim(format!("{me} (beat {beat})")).await?;
            }
        }
    }
    election.resign().await?;
    session.close().await?;
    Ok(())
}
