//! `nod member list|health|add|remove|promote|update`: etcd's Cluster
//! service, and Nod's member health (the Admin service).

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use super::client::{connect, header_json, parse_hex, print_json, ClientFlags, Failure, Output};

#[derive(Subcommand)]
pub enum MemberCommand {
    List,
    /// Role, health and replication lag of every member (the leader's view).
    Health,
    /// Adds a member; start it with `nod server --initial-cluster-state existing`.
    Add {
        name: String,
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
        /// Add as a non-voting learner (promote it once it caught up).
        #[arg(long)]
        learner: bool,
    },
    Remove {
        id: String,
    },
    Promote {
        id: String,
    },
    Update {
        id: String,
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
    },
}

pub async fn member(command: MemberCommand, client: ClientFlags) -> Result<ExitCode, Failure> {
    let mut c = connect(&client)?;
    let member_json = |m: &nod_proto::etcd::etcdserverpb::Member| json!({"id": format!("{:x}", m.id), "name": m.name, "peer_urls": m.peer_ur_ls, "client_urls": m.client_ur_ls, "is_learner": m.is_learner});
    match command {
        MemberCommand::List => {
            let r = c.member_list().await?;
            match client.output {
                Output::Json => print_json(
                    json!({"header": header_json(&r.header), "members": r.members.iter().map(member_json).collect::<Vec<_>>()}),
                ),
                Output::Simple | Output::Table | Output::Fields => {
                    for m in r.members {
                        println!(
                            "{:x}, started, {}, {}, {}, {}",
                            m.id,
                            m.name,
                            m.peer_ur_ls.join(","),
                            m.client_ur_ls.join(","),
                            m.is_learner
                        );
                    }
                }
            }
        }
        MemberCommand::Health => {
            let r = c.member_health().await?;
            match client.output {
                Output::Json => print_json(json!({
                    "header": header_json(&r.header),
                    "leader": format!("{:x}", r.leader),
                    "target_voters": r.target_voters,
                    "members": r.members.iter().map(|m| json!({
                        "id": format!("{:x}", m.id), "name": m.name,
                        "role": if m.is_leader { "leader" } else if m.is_learner { "learner" } else { "voter" },
                        "healthy": m.healthy, "raft_active": m.raft_active,
                        "gossip_alive": m.gossip_alive, "matched": m.matched, "lag": m.lag,
                        "unhealthy_ms": m.unhealthy_ms, "peer_urls": m.peer_urls,
                        "client_urls": m.client_urls,
                    })).collect::<Vec<_>>(),
                })),
                Output::Simple | Output::Table | Output::Fields => {
                    println!(
                        "{:<16} {:<12} {:<8} {:<9} {:>10} {:>8}  GOSSIP",
                        "ID", "NAME", "ROLE", "HEALTHY", "MATCHED", "LAG"
                    );
                    for m in r.members {
                        let role = if m.is_leader {
                            "leader"
                        } else if m.is_learner {
                            "learner"
                        } else {
                            "voter"
                        };
                        let healthy = if m.healthy {
                            "yes".to_string()
                        } else {
                            format!("no {}s", m.unhealthy_ms / 1000)
                        };
                        println!(
                            "{:<16x} {:<12} {:<8} {:<9} {:>10} {:>8}  {}",
                            m.id,
                            m.name,
                            role,
                            healthy,
                            m.matched,
                            m.lag,
                            if m.gossip_alive { "alive" } else { "-" }
                        );
                    }
                }
            }
        }
        MemberCommand::Add {
            name,
            peer_urls,
            learner,
        } => {
            let r = c.member_add(peer_urls.clone(), learner).await?;
            let m = r.member.clone().unwrap_or_default();
            match client.output {
                Output::Json => {
                    print_json(json!({"header": header_json(&r.header), "member": member_json(&m)}))
                }
                Output::Simple | Output::Table | Output::Fields => {
                    println!(
                        "Member {:x} added to cluster {:x}",
                        m.id,
                        r.header.unwrap_or_default().cluster_id
                    );
                    let mut initial: Vec<String> = r
                        .members
                        .iter()
                        .filter(|x| x.id != m.id && !x.name.is_empty())
                        .filter_map(|x| x.peer_ur_ls.first().map(|u| format!("{}={u}", x.name)))
                        .collect();
                    initial.push(format!("{name}={}", peer_urls[0]));
                    println!("\nNOD_NAME=\"{name}\"");
                    println!("NOD_INITIAL_CLUSTER=\"{}\"", initial.join(","));
                    println!(
                        "NOD_INITIAL_ADVERTISE_PEER_URLS=\"{}\"",
                        peer_urls.join(",")
                    );
                    println!("NOD_INITIAL_CLUSTER_STATE=\"existing\"");
                }
            }
        }
        MemberCommand::Remove { id } => {
            let id = parse_hex(&id, "member")?;
            let r = c.member_remove(id).await?;
            match client.output {
                Output::Json => print_json(json!({"header": header_json(&r.header)})),
                Output::Simple | Output::Table | Output::Fields => println!(
                    "Member {id:x} removed from cluster {:x}",
                    r.header.unwrap_or_default().cluster_id
                ),
            }
        }
        MemberCommand::Promote { id } => {
            let id = parse_hex(&id, "member")?;
            let r = c.member_promote(id).await?;
            match client.output {
                Output::Json => print_json(json!({"header": header_json(&r.header)})),
                Output::Simple | Output::Table | Output::Fields => println!(
                    "Member {id:x} promoted in cluster {:x}",
                    r.header.unwrap_or_default().cluster_id
                ),
            }
        }
        MemberCommand::Update { id, peer_urls } => {
            let id = parse_hex(&id, "member")?;
            let r = c.member_update(id, peer_urls).await?;
            match client.output {
                Output::Json => print_json(json!({"header": header_json(&r.header)})),
                Output::Simple | Output::Table | Output::Fields => println!(
                    "Member {id:x} updated in cluster {:x}",
                    r.header.unwrap_or_default().cluster_id
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
