//! Nod's wire types, generated with tonic/prost and nothing else: the etcd
//! v3 API (`etcd`, from `etcd/`, wire-compatible with etcd 3.5; with the
//! server-side Lock and Election services) and Nod's
//! peer protocol and backup segments (`nodraftpb`, `nodserverpb`,
//! `nodbackuppb`, from `nod/`). No I/O of its
//! own beyond the generated tonic clients and servers. Every other crate
//! (server, client, operator, bench) imports these types from here, so the
//! wire format has one home and a client never depends on the server.

pub mod codec;
pub mod range;

/// etcd's KV service, server side, with Range answering a
/// `range::RangeAnswer` (build.rs, `kv_server`). Its clients are the
/// generated `etcd::etcdserverpb::kv_client`.
pub mod kv {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.KV.rs"));
}

/// Code generated from etcd's v3 API protos (see `etcd/README.md`).
pub mod etcd {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]

    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    pub mod v3lockpb {
        tonic::include_proto!("v3lockpb");
    }
    pub mod v3electionpb {
        tonic::include_proto!("v3electionpb");
    }

    /// The etcd protos' descriptors (a serialized `FileDescriptorSet`),
    /// for mapping these messages to and from etcd's JSON.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/etcd.bin"));
}

/// Code generated from `nod/raft.proto`: Raft messages between peers.
pub mod nodraftpb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/nod/nodraftpb.rs"));
}

/// Code generated from `nod/server.proto`: the peer, bootstrap and admin
/// services and the commands a log entry carries.
pub mod nodserverpb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/nod/nodserverpb.rs"));
}

/// Code generated from `nod/backup.proto`: the segments of a backup chain
/// (crate nod-backup).
pub mod nodbackuppb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/nod/nodbackuppb.rs"));
}

/// Code generated from `nod/query.proto`: secondary index declarations as
/// the log carries them and the store keeps them.
pub mod nodquerypb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/nod/nodquerypb.rs"));
}

/// The descriptors of Nod's protos and of the etcd protos they import (a
/// serialized `FileDescriptorSet`), for the JSON gateway's Nod calls.
pub const NOD_FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/nod/nod.bin"));

#[cfg(test)]
mod tests {
    use crate::etcd::etcdserverpb::{compare, Compare, PutRequest, RangeRequest, ResponseHeader};
    use prost::Message;

    /// Field numbers are the wire contract with etcd clients: check a few
    /// messages against their encoding written out by hand (tag = number << 3 | wire type).
    #[test]
    fn encodings_match_etcd_field_numbers() {
        let range = RangeRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            limit: 5,
            revision: 7,
            ..Default::default()
        };
        assert_eq!(
            range.encode_to_vec(),
            vec![0x0a, 1, b'a', 0x12, 1, b'b', 0x18, 5, 0x20, 7]
        );

        let put = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: 3,
            prev_kv: true,
            ..Default::default()
        };
        assert_eq!(
            put.encode_to_vec(),
            vec![0x0a, 1, b'k', 0x12, 1, b'v', 0x18, 3, 0x20, 1]
        );

        let header = ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: 3,
            raft_term: 4,
        };
        assert_eq!(
            header.encode_to_vec(),
            vec![0x08, 1, 0x10, 2, 0x18, 3, 0x20, 4]
        );

        // Compare: result=1 (GREATER) as field 1, target=1 (CREATE) as 2, key as 3, create_revision as 5.
        let cmp = Compare {
            result: compare::CompareResult::Greater as i32,
            target: compare::CompareTarget::Create as i32,
            key: b"x".to_vec(),
            target_union: Some(compare::TargetUnion::CreateRevision(9)),
            ..Default::default()
        };
        assert_eq!(
            cmp.encode_to_vec(),
            vec![0x08, 1, 0x10, 1, 0x1a, 1, b'x', 0x28, 9]
        );
    }

    #[test]
    fn service_paths_are_etcds() {
        use crate::etcd::etcdserverpb::{
            cluster_server, kv_server, lease_server, maintenance_server, watch_server,
        };
        assert_eq!(
            <kv_server::KvServer<()> as tonic::server::NamedService>::NAME,
            "etcdserverpb.KV"
        );
        assert_eq!(
            <crate::kv::k_v_server::KVServer<()> as tonic::server::NamedService>::NAME,
            "etcdserverpb.KV"
        );
        assert_eq!(
            <watch_server::WatchServer<()> as tonic::server::NamedService>::NAME,
            "etcdserverpb.Watch"
        );
        assert_eq!(
            <lease_server::LeaseServer<()> as tonic::server::NamedService>::NAME,
            "etcdserverpb.Lease"
        );
        assert_eq!(
            <cluster_server::ClusterServer<()> as tonic::server::NamedService>::NAME,
            "etcdserverpb.Cluster"
        );
        assert_eq!(
            <maintenance_server::MaintenanceServer<()> as tonic::server::NamedService>::NAME,
            "etcdserverpb.Maintenance"
        );
        use crate::etcd::{v3electionpb::election_server, v3lockpb::lock_server};
        assert_eq!(
            <lock_server::LockServer<()> as tonic::server::NamedService>::NAME,
            "v3lockpb.Lock"
        );
        assert_eq!(
            <election_server::ElectionServer<()> as tonic::server::NamedService>::NAME,
            "v3electionpb.Election"
        );
    }

    /// The lock and election messages' field numbers (etcd's `v3lock.proto`
    /// and `v3election.proto`), written out by hand as above.
    #[test]
    fn lock_and_election_encodings_match_etcd_field_numbers() {
        use crate::etcd::v3electionpb::{LeaderKey, ProclaimRequest};
        use crate::etcd::v3lockpb::LockRequest;
        let leader = LeaderKey {
            name: b"n".to_vec(),
            key: b"k".to_vec(),
            rev: 3,
            lease: 4,
        };
        assert_eq!(
            leader.encode_to_vec(),
            vec![0x0a, 1, b'n', 0x12, 1, b'k', 0x18, 3, 0x20, 4]
        );
        let proclaim = ProclaimRequest {
            leader: Some(leader),
            value: b"v".to_vec(),
        };
        let mut expected = vec![0x0a, 10, 0x0a, 1, b'n', 0x12, 1, b'k', 0x18, 3, 0x20, 4];
        expected.extend([0x12, 1, b'v']);
        assert_eq!(proclaim.encode_to_vec(), expected);
        let lock = LockRequest {
            name: b"m".to_vec(),
            lease: 5,
        };
        assert_eq!(lock.encode_to_vec(), vec![0x0a, 1, b'm', 0x10, 5]);
    }
}
