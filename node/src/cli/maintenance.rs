//! `nod status` and `move-leader`: etcd's Maintenance service (`snapshot.rs`
//! has the snapshot commands).

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use super::client::{connect, parse_hex, print_json, usage, ClientFlags, Failure, Output};

/// Each endpoint's status, asked one by one.
pub async fn status(client: ClientFlags) -> Result<ExitCode, Failure> {
    let mut failed = false;
    for ep in &client.endpoints {
        let mut c = client.client_for(
            std::slice::from_ref(ep),
            Duration::from_secs(client.command_timeout),
        )?;
        match c.status().await {
            Ok(s) => {
                let h = s.header.unwrap_or_default();
                match client.output {
                    Output::Json => print_json(json!({
                        "endpoint": ep, "id": format!("{:x}", h.member_id), "version": s.version,
                        "db_size": s.db_size, "leader": format!("{:x}", s.leader), "is_leader": s.leader == h.member_id,
                        "is_learner": s.is_learner, "raft_term": s.raft_term, "raft_index": s.raft_index,
                        "raft_applied_index": s.raft_applied_index, "errors": s.errors,
                    })),
                    Output::Simple | Output::Table | Output::Fields => println!(
                        "{ep}, {:x}, {}, {} B, {}, {}, {}, {}, {}",
                        h.member_id,
                        s.version,
                        s.db_size,
                        s.leader == h.member_id,
                        s.is_learner,
                        s.raft_term,
                        s.raft_index,
                        s.raft_applied_index
                    ),
                }
            }
            Err(e) => {
                eprintln!("{ep}: Error: {e}");
                failed = true;
            }
        }
    }
    if failed {
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn move_leader(target: String, client: ClientFlags) -> Result<ExitCode, Failure> {
    let target = parse_hex(&target, "member")?;
    // Only the leader can move leadership: find it first.
    let mut c = connect(&client)?;
    let leader = c.status().await?.leader;
    let members = c.member_list().await?.members;
    let url = members
        .iter()
        .find(|m| m.id == leader)
        .and_then(|m| m.client_ur_ls.first().cloned())
        .ok_or_else(|| usage("no leader with a known client URL"))?;
    let mut lc = client.client_for(&[url], Duration::from_secs(client.command_timeout))?;
    lc.move_leader(target).await?;
    println!("Leadership transferred from {leader:x} to {target:x}");
    Ok(ExitCode::SUCCESS)
}
