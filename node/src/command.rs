//! The commands a log entry carries (`nodserverpb::Command`) and the context
//! of membership changes, encoded and decoded with validation: an entry that
//! does not decode is applied as a no-op with an error, never a panic, so
//! every replica does the same thing with it.

use prost::Message as _;

pub use nod_proto::nodquerypb::{index_command::Op as IndexOp, IndexCommand};
pub use nod_proto::nodserverpb::{command::Op, Caller, Command, MemberAttributes, SnapshotData};

/// The largest command a proposal may carry. Client requests are limited
/// before this (`--max-request-bytes`); this bounds what a peer can make us decode.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024 * 1024;
/// Most URLs a member may list.
pub const MAX_URLS: usize = 16;
/// Most features a member may publish, and the longest name of one.
pub const MAX_FEATURES: usize = 32;
pub const MAX_FEATURE_BYTES: usize = 64;

/// Secondary indexes and queries: `Command.index` applies.
pub const FEATURE_INDEXES: &str = "indexes";
/// Unique indexes (a put or txn refused for a duplicate, a build that
/// fails on one) and `IndexCommand.rebuild`: a member without them would
/// apply such an entry differently.
pub const FEATURE_UNIQUE_INDEXES: &str = "unique-indexes";
/// What this binary can apply, as it publishes itself
/// (`MemberAttributes.features`).
pub const FEATURES: &[&str] = &[FEATURE_INDEXES, FEATURE_UNIQUE_INDEXES];

/// [`FEATURES`], as a member publishes them.
pub fn features() -> Vec<String> {
    FEATURES.iter().map(|f| f.to_string()).collect()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("command of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("undecodable command: {0}")]
    Decode(String),
    #[error("command has no operation")]
    Empty,
    #[error("member attributes: {0}")]
    Member(String),
    #[error("caller name of {0} bytes")]
    Caller(usize),
    #[error("index command: {0}")]
    Index(&'static str),
    #[error("a feature name of {0} bytes")]
    Feature(usize),
}

/// A decoded command.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The proposer's id for it (0: nobody waits).
    pub id: u64,
    /// The member that proposed it (0: the leader).
    pub origin: u64,
    pub op: Op,
    /// Who asked (checked at apply); `None` for a member's own proposal.
    pub caller: Option<Caller>,
}

pub fn encode(cmd: &Command) -> Vec<u8> {
    cmd.encode_to_vec()
}

/// A member's own proposal of `op` (lease expiry, attributes, features,
/// backfill steps): nobody waits for it, nobody to check, no trace.
pub fn own(op: Op) -> Vec<u8> {
    encode(&Command {
        op: Some(op),
        ..Default::default()
    })
}

/// Decodes a command and checks its shape.
pub fn decode(bytes: &[u8]) -> Result<Decoded, CommandError> {
    if bytes.len() > MAX_COMMAND_BYTES {
        return Err(CommandError::TooLarge(bytes.len()));
    }
    let cmd = Command::decode(bytes).map_err(|e| CommandError::Decode(e.to_string()))?;
    let op = cmd.op.ok_or(CommandError::Empty)?;
    if let Op::MemberAttributes(m) | Op::MemberPeerUrls(m) = &op {
        check_member(m)?;
    }
    if let Op::Index(c) = &op {
        check_index(c)?;
    }
    if let Op::EnableFeature(f) = &op {
        if f.len() > MAX_FEATURE_BYTES {
            return Err(CommandError::Feature(f.len()));
        }
    }
    if let Some(c) = &cmd.caller {
        if c.user.len() > crate::auth::MAX_NAME_BYTES {
            return Err(CommandError::Caller(c.user.len()));
        }
    }
    Ok(Decoded {
        id: cmd.id,
        origin: cmd.origin,
        op,
        caller: cmd.caller,
    })
}

/// The `traceparent` an encoded command carries (`Command.trace`), read
/// without decoding the rest: the driver asks it of every entry it appends
/// and applies while tracing is on. None when absent, not of a version-00
/// traceparent's length, not UTF-8, or the bytes are not a command.
pub fn trace_of(mut buf: &[u8]) -> Option<&str> {
    use prost::encoding::{decode_key, decode_varint, WireType};
    if buf.len() > MAX_COMMAND_BYTES {
        return None;
    }
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).ok()?;
        let skip = match wire {
            WireType::Varint => {
                decode_varint(&mut buf).ok()?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                if len > buf.len() {
                    return None;
                }
                if tag == TRACE_FIELD {
                    let t = std::str::from_utf8(&buf[..len]).ok()?;
                    return (t.len() == crate::telemetry::TRACEPARENT_LEN).then_some(t);
                }
                len
            }
            WireType::StartGroup | WireType::EndGroup => return None,
        };
        if skip > buf.len() {
            return None;
        }
        buf = &buf[skip..];
    }
    None
}

/// `Command.trace`'s field number.
const TRACE_FIELD: u32 = 15;

pub fn encode_member(m: &MemberAttributes) -> Vec<u8> {
    m.encode_to_vec()
}

pub fn decode_member(bytes: &[u8]) -> Result<MemberAttributes, CommandError> {
    let m = MemberAttributes::decode(bytes).map_err(|e| CommandError::Member(e.to_string()))?;
    check_member(&m)?;
    Ok(m)
}

fn check_member(m: &MemberAttributes) -> Result<(), CommandError> {
    if m.id == 0 {
        return Err(CommandError::Member("member id 0".into()));
    }
    if m.peer_urls.len() > MAX_URLS || m.client_urls.len() > MAX_URLS {
        return Err(CommandError::Member("too many URLs".into()));
    }
    if m.name.len() > 256
        || m.peer_urls
            .iter()
            .chain(&m.client_urls)
            .any(|u| u.len() > 1024)
    {
        return Err(CommandError::Member("name or URL too long".into()));
    }
    if m.features.len() > MAX_FEATURES || m.features.iter().any(|f| f.len() > MAX_FEATURE_BYTES) {
        return Err(CommandError::Member(
            "too many features or one too long".into(),
        ));
    }
    Ok(())
}

/// Bounds what an index command may carry; what it means (a good name,
/// paths, types) is the store's to check when it applies, so a refusal
/// reaches the client as the request's own error.
fn check_index(c: &IndexCommand) -> Result<(), CommandError> {
    use nod_query::path::MAX_PATH_BYTES;
    use nod_query::spec::{MAX_FIELDS, MAX_NAME_BYTES, MAX_PREFIX_BYTES};
    match &c.op {
        None => Err(CommandError::Index("no operation")),
        Some(IndexOp::Create(spec)) => {
            if spec.name.len() > MAX_NAME_BYTES || spec.prefix.len() > MAX_PREFIX_BYTES {
                return Err(CommandError::Index("name or prefix too long"));
            }
            if spec.fields.len() > MAX_FIELDS
                || spec.fields.iter().any(|f| f.path.len() > MAX_PATH_BYTES)
            {
                return Err(CommandError::Index("too many fields or a path too long"));
            }
            Ok(())
        }
        Some(IndexOp::Drop(name) | IndexOp::Rebuild(name)) if name.len() > MAX_NAME_BYTES => {
            Err(CommandError::Index("name too long"))
        }
        Some(IndexOp::Drop(_) | IndexOp::Rebuild(_) | IndexOp::Backfill(_)) => Ok(()),
    }
}

pub fn decode_snapshot_data(bytes: &[u8]) -> Result<SnapshotData, CommandError> {
    if bytes.len() > MAX_COMMAND_BYTES {
        return Err(CommandError::TooLarge(bytes.len()));
    }
    let d = SnapshotData::decode(bytes).map_err(|e| CommandError::Decode(e.to_string()))?;
    if d.members.len() > crate::transport::codec::MAX_MEMBERS {
        return Err(CommandError::Member("too many members".into()));
    }
    for m in &d.members {
        check_member(m)?;
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nod_proto::etcd::etcdserverpb::PutRequest;

    #[test]
    fn the_trace_is_read_without_decoding() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cmd = |trace: &str| Command {
            id: 7,
            origin: 3,
            op: Some(Op::Put(PutRequest {
                key: b"k".to_vec(),
                // A value holding what looks like field 15, to be skipped.
                value: [0x7a, 0x03, b'a', b'b', b'c'].repeat(20),
                lease: 12,
                ..Default::default()
            })),
            caller: Some(Caller {
                user: "alice".into(),
                auth_revision: 4,
            }),
            trace: trace.to_string(),
        };
        let bytes = encode(&cmd(tp));
        assert_eq!(trace_of(&bytes), Some(tp));
        assert_eq!(decode(&bytes).unwrap().op, cmd("").op.unwrap());
        assert_eq!(trace_of(&encode(&cmd(""))), None);
        let long = "x".repeat(crate::telemetry::TRACEPARENT_LEN + 1);
        assert_eq!(trace_of(&encode(&cmd(&long))), None);
        // Cut anywhere before the trace's last byte, the bytes give none
        // and never panic; garbage gives none.
        for cut in 0..bytes.len() {
            assert_eq!(trace_of(&bytes[..cut]), None, "cut at {cut}");
        }
        assert_eq!(trace_of(&[0xff; 16]), None);
        assert_eq!(trace_of(&[0x7a, 0xff, 0xff, 0xff, 0xff, 0x0f]), None);
    }

    #[test]
    fn commands_round_trip_and_bad_bytes_are_errors() {
        let cmd = Command {
            caller: None,
            trace: String::new(),
            id: 42,
            origin: 7,
            op: Some(Op::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        };
        let d = decode(&encode(&cmd)).unwrap();
        assert_eq!((d.id, d.origin, d.caller), (42, 7, None));
        assert_eq!(Some(d.op), cmd.op);
        assert_eq!(
            decode(
                &Command {
                    id: 1,
                    origin: 0,
                    op: None,
                    caller: None,
                    trace: String::new(),
                }
                .encode_to_vec()
            ),
            Err(CommandError::Empty)
        );
        assert!(matches!(
            decode(&[0xff, 0xff, 0xff]),
            Err(CommandError::Decode(_))
        ));
        let bad_member = Command {
            id: 1,
            origin: 0,
            op: Some(Op::MemberAttributes(MemberAttributes::default())),
            caller: None,
            trace: String::new(),
        };
        assert!(matches!(
            decode(&encode(&bad_member)),
            Err(CommandError::Member(_))
        ));
        let featured = |features: Vec<String>| Command {
            id: 1,
            origin: 0,
            op: Some(Op::MemberAttributes(MemberAttributes {
                id: 3,
                features,
                ..Default::default()
            })),
            caller: None,
            trace: String::new(),
        };
        assert!(decode(&encode(&featured(features()))).is_ok());
        for bad in [
            vec!["x".repeat(MAX_FEATURE_BYTES + 1)],
            vec!["f".to_string(); MAX_FEATURES + 1],
        ] {
            assert!(matches!(
                decode(&encode(&featured(bad))),
                Err(CommandError::Member(_))
            ));
        }
    }

    #[test]
    fn index_commands_are_bounded_on_decode() {
        use nod_proto::nodquerypb::{BackfillStep, IndexField, IndexSpec};
        let cmd = |op: Option<IndexOp>| Command {
            id: 1,
            origin: 0,
            op: Some(Op::Index(IndexCommand { op })),
            caller: None,
            trace: String::new(),
        };
        let spec = IndexSpec {
            name: "users_age".into(),
            prefix: b"/users/".to_vec(),
            fields: vec![IndexField {
                path: "age".into(),
                r#type: 2,
            }],
            unique: false,
        };
        let good = [
            IndexOp::Create(spec.clone()),
            IndexOp::Drop("users_age".into()),
            IndexOp::Rebuild("users_age".into()),
            IndexOp::Backfill(BackfillStep {
                index_id: 1,
                max_keys: 100,
            }),
        ];
        for op in good {
            let d = decode(&encode(&cmd(Some(op.clone())))).unwrap();
            assert_eq!(d.op, Op::Index(IndexCommand { op: Some(op) }));
        }
        let bad = [
            None,
            Some(IndexOp::Create(IndexSpec {
                name: "n".repeat(65),
                ..spec.clone()
            })),
            Some(IndexOp::Create(IndexSpec {
                prefix: vec![b'p'; 4097],
                ..spec.clone()
            })),
            Some(IndexOp::Create(IndexSpec {
                fields: vec![spec.fields[0].clone(); 5],
                ..spec.clone()
            })),
            Some(IndexOp::Drop("n".repeat(65))),
            Some(IndexOp::Rebuild("n".repeat(65))),
        ];
        for op in bad {
            assert!(
                matches!(
                    decode(&encode(&cmd(op.clone()))),
                    Err(CommandError::Index(_))
                ),
                "{op:?}"
            );
        }
        let enable = |name: String| Command {
            id: 0,
            origin: 0,
            op: Some(Op::EnableFeature(name)),
            caller: None,
            trace: String::new(),
        };
        assert!(decode(&encode(&enable(FEATURE_INDEXES.into()))).is_ok());
        assert_eq!(
            decode(&encode(&enable("f".repeat(MAX_FEATURE_BYTES + 1)))),
            Err(CommandError::Feature(MAX_FEATURE_BYTES + 1))
        );
    }
}
