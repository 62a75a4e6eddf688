//! Generates, with tonic/prost, the etcd v3 API (types, clients, servers)
//! from `etcd/` and Nod's peer protocol from `nod/` (paths relative to this
//! crate, `proto/` in the repository). Needs `protoc` (scripts/setup
//! installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "etcd";
    let files = [
        "etcdserverpb/rpc.proto",
        "mvccpb/kv.proto",
        "authpb/auth.proto",
        "v3lockpb/v3lock.proto",
        "v3electionpb/v3election.proto",
    ]
    .map(|f| format!("{root}/{f}"));
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    // The descriptors too: the server's JSON gateway maps etcd's JSON to
    // these messages by reflection (field names, types, enums).
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("etcd.bin");
    // Prost's codec with an exact buffer and Range answers encoded a
    // key-value at a time (src/codec.rs).
    let codec = "crate::codec::ExactCodec";
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path(codec)
        .file_descriptor_set_path(descriptors)
        .compile_protos(&files, &[root.to_string()])?;
    kv_server();
    let peer = [
        "nod/raft.proto",
        "nod/server.proto",
        "nod/backup.proto",
        "nod/query.proto",
    ];
    for f in &peer {
        println!("cargo:rerun-if-changed={f}");
    }
    // Its own output folder: protoc hands the imported etcd files along too,
    // and their (extern) output must not overwrite the etcd code above.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("nod");
    std::fs::create_dir_all(&out)?;
    // Their descriptors as well (with the etcd files they import): the
    // gateway serves Nod's Query, Index and Admin calls too.
    let nod_descriptors = out.join("nod.bin");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path(codec)
        .file_descriptor_set_path(nod_descriptors)
        .out_dir(out)
        .extern_path(".etcdserverpb", "crate::etcd::etcdserverpb")
        .extern_path(".mvccpb", "crate::etcd::mvccpb")
        .extern_path(".authpb", "crate::etcd::authpb")
        .compile_protos(&peer, &["nod", root])?;
    Ok(())
}

/// etcd's KV service once more, server side only, with Range answering a
/// `crate::range::RangeAnswer`: key-values the server copies from its
/// stored records, encoded once (src/range.rs). The service's path and
/// messages are etcd's; clients use the generated `kv_client`.
fn kv_server() {
    use tonic_prost_build::manual::{Builder, Method, Service};
    let pb = "crate::etcd::etcdserverpb";
    let method = |name: &str, route: &str, input: &str, output: &str, codec: &str| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("{pb}::{input}"))
            .output_type(output)
            .codec_path(codec)
            .build()
    };
    let exact = "crate::codec::ExactCodec";
    let service = Service::builder()
        .name("KV")
        .package("etcdserverpb")
        .method(method(
            "range",
            "Range",
            "RangeRequest",
            "crate::range::RangeAnswer",
            "crate::range::RangeCodec",
        ))
        .method(method(
            "put",
            "Put",
            "PutRequest",
            &format!("{pb}::PutResponse"),
            exact,
        ))
        .method(method(
            "delete_range",
            "DeleteRange",
            "DeleteRangeRequest",
            &format!("{pb}::DeleteRangeResponse"),
            exact,
        ))
        .method(method(
            "txn",
            "Txn",
            "TxnRequest",
            &format!("{pb}::TxnResponse"),
            exact,
        ))
        .method(method(
            "compact",
            "Compact",
            "CompactionRequest",
            &format!("{pb}::CompactionResponse"),
            exact,
        ))
        .build();
    Builder::new().build_client(false).compile(&[service]);
}
