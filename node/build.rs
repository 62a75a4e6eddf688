//! Generates, with tonic/prost, the etcd v3 API (types, clients, servers)
//! from `proto/etcd` and Nod's peer protocol from `proto/nod`. Needs
//! `protoc` (scripts/setup installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "proto/etcd";
    let files = [
        "etcdserverpb/rpc.proto",
        "mvccpb/kv.proto",
        "authpb/auth.proto",
    ]
    .map(|f| format!("{root}/{f}"));
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&files, &[root.to_string()])?;
    let peer = "proto/nod/raft.proto";
    println!("cargo:rerun-if-changed={peer}");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&[peer.to_string()], &["proto/nod".to_string()])?;
    Ok(())
}
