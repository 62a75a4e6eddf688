//! `nod lease grant|revoke|keep-alive|timetolive|list`: etcd's Lease service.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use nod_client::ClientError;
use serde_json::json;

use super::client::{
    connect, header_json, parse_hex, print_json, text, ClientFlags, Failure, Output,
};
use super::signal::stop_signal;

#[derive(Subcommand)]
pub enum LeaseCommand {
    /// Grants a lease with a TTL in seconds.
    Grant { ttl: i64 },
    /// Revokes a lease, deleting its keys.
    Revoke { id: String },
    /// Keeps a lease alive until interrupted (or once).
    KeepAlive {
        id: String,
        #[arg(long)]
        once: bool,
    },
    /// Shows a lease's remaining time (and keys with --keys).
    Timetolive {
        id: String,
        #[arg(long)]
        keys: bool,
    },
    /// Lists leases.
    List,
}

pub async fn lease(command: LeaseCommand, client: ClientFlags) -> Result<ExitCode, Failure> {
    let mut c = connect(&client)?;
    match command {
        LeaseCommand::Grant { ttl } => {
            let r = c.lease_grant(ttl, 0).await?;
            match client.output {
                Output::Json => print_json(
                    json!({"header": header_json(&r.header), "id": format!("{:x}", r.id), "ttl": r.ttl}),
                ),
                Output::Simple | Output::Table | Output::Fields => {
                    println!("lease {:x} granted with TTL({}s)", r.id, r.ttl)
                }
            }
        }
        LeaseCommand::Revoke { id } => {
            let id = parse_hex(&id, "lease")?;
            let r = c.lease_revoke(id as i64).await?;
            match client.output {
                Output::Json => print_json(json!({"header": header_json(&r.header)})),
                Output::Simple | Output::Table | Output::Fields => println!("lease {id:x} revoked"),
            }
        }
        LeaseCommand::KeepAlive { id, once } => {
            let id = parse_hex(&id, "lease")? as i64;
            let (tx, mut stream) = c.lease_keep_alive(id).await?;
            loop {
                let Some(r) = stream.message().await.map_err(ClientError::from)? else {
                    eprintln!("Error: keep-alive stream closed");
                    return Ok(ExitCode::from(3));
                };
                if r.ttl <= 0 {
                    eprintln!("lease {id:x} expired or revoked.");
                    return Ok(ExitCode::FAILURE);
                }
                match client.output {
                    Output::Json => print_json(json!({"id": format!("{:x}", r.id), "ttl": r.ttl})),
                    Output::Simple | Output::Table | Output::Fields => {
                        println!("lease {:x} keepalived with TTL({})", r.id, r.ttl)
                    }
                }
                if once {
                    return Ok(ExitCode::SUCCESS);
                }
                let wait = Duration::from_millis((r.ttl as u64 * 1000 / 3).max(500));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop_signal() => return Ok(ExitCode::SUCCESS),
                }
                if tx
                    .send(nod_proto::etcd::etcdserverpb::LeaseKeepAliveRequest { id })
                    .await
                    .is_err()
                {
                    return Ok(ExitCode::from(3));
                }
            }
        }
        LeaseCommand::Timetolive { id, keys } => {
            let id = parse_hex(&id, "lease")? as i64;
            let r = c.lease_time_to_live(id, keys).await?;
            match client.output {
                Output::Json => print_json(json!({
                    "id": format!("{:x}", r.id), "ttl": r.ttl, "granted_ttl": r.granted_ttl,
                    "keys": r.keys.iter().map(|k| text(k)).collect::<Vec<_>>(),
                })),
                Output::Simple | Output::Table | Output::Fields if r.ttl == -1 => {
                    println!("lease {id:x} already expired")
                }
                Output::Simple | Output::Table | Output::Fields => {
                    print!(
                        "lease {id:x} granted with TTL({}s), remaining({}s)",
                        r.granted_ttl, r.ttl
                    );
                    if keys {
                        print!(
                            ", attached keys({:?})",
                            r.keys.iter().map(|k| text(k)).collect::<Vec<_>>()
                        );
                    }
                    println!();
                }
            }
        }
        LeaseCommand::List => {
            let r = c.lease_list().await?;
            match client.output {
                Output::Json => print_json(
                    json!({"leases": r.leases.iter().map(|l| format!("{:x}", l.id)).collect::<Vec<_>>()}),
                ),
                Output::Simple | Output::Table | Output::Fields => {
                    println!("found {} leases", r.leases.len());
                    for l in r.leases {
                        println!("{:x}", l.id);
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
