//! The simulation's state machine: a tiny key-value map with put and
//! compare-and-swap, its command encoding, and its snapshot image. Decoding
//! checks lengths; a malformed command is a simulation bug, reported as such.

use std::collections::BTreeMap;

pub type Key = u8;
pub type Value = u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Put {
        request: u64,
        key: Key,
        value: Value,
    },
    Cas {
        request: u64,
        key: Key,
        expected: Option<Value>,
        new: Value,
    },
}

/// What applying a command returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Put,
    Cas { swapped: bool },
}

const PUT: u8 = 1;
const CAS: u8 = 2;
const COMMAND_LEN: usize = 1 + 8 + 1 + 1 + 8 + 8;

impl Command {
    pub fn request(&self) -> u64 {
        match self {
            Command::Put { request, .. } | Command::Cas { request, .. } => *request,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(COMMAND_LEN);
        let (kind, request, key, expected, value) = match *self {
            Command::Put {
                request,
                key,
                value,
            } => (PUT, request, key, None, value),
            Command::Cas {
                request,
                key,
                expected,
                new,
            } => (CAS, request, key, expected, new),
        };
        out.push(kind);
        out.extend_from_slice(&request.to_le_bytes());
        out.push(key);
        out.push(u8::from(expected.is_some()));
        out.extend_from_slice(&expected.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, String> {
        if bytes.len() != COMMAND_LEN {
            return Err(format!(
                "command has {} bytes, want {COMMAND_LEN}",
                bytes.len()
            ));
        }
        let u64_at =
            |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("length checked"));
        let (request, key) = (u64_at(1), bytes[9]);
        let expected = match bytes[10] {
            0 => None,
            1 => Some(u64_at(11)),
            other => return Err(format!("bad expected flag {other}")),
        };
        let value = u64_at(19);
        match bytes[0] {
            PUT => Ok(Command::Put {
                request,
                key,
                value,
            }),
            CAS => Ok(Command::Cas {
                request,
                key,
                expected,
                new: value,
            }),
            other => Err(format!("unknown command kind {other}")),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvState {
    map: BTreeMap<Key, Value>,
}

impl KvState {
    pub fn get(&self, key: Key) -> Option<Value> {
        self.map.get(&key).copied()
    }

    pub fn apply(&mut self, command: &Command) -> Applied {
        match *command {
            Command::Put { key, value, .. } => {
                self.map.insert(key, value);
                Applied::Put
            }
            Command::Cas {
                key, expected, new, ..
            } => {
                let swapped = self.get(key) == expected;
                if swapped {
                    self.map.insert(key, new);
                }
                Applied::Cas { swapped }
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.map.len() * 9);
        out.extend_from_slice(&(self.map.len() as u32).to_le_bytes());
        for (k, v) in &self.map {
            out.push(*k);
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<KvState, String> {
        if bytes.is_empty() {
            return Ok(KvState::default());
        }
        if bytes.len() < 4 {
            return Err("snapshot shorter than its header".into());
        }
        let n = u32::from_le_bytes(bytes[..4].try_into().expect("length checked")) as usize;
        if bytes.len() != 4 + n * 9 {
            return Err(format!(
                "snapshot of {} bytes cannot hold {n} keys",
                bytes.len()
            ));
        }
        let map = bytes[4..]
            .chunks_exact(9)
            .map(|c| {
                (
                    c[0],
                    u64::from_le_bytes(c[1..].try_into().expect("chunk is 9 bytes")),
                )
            })
            .collect();
        Ok(KvState { map })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_snapshots_round_trip_and_reject_garbage() {
        for c in [
            Command::Put {
                request: 7,
                key: 3,
                value: 99,
            },
            Command::Cas {
                request: 8,
                key: 1,
                expected: None,
                new: 5,
            },
            Command::Cas {
                request: 9,
                key: 1,
                expected: Some(5),
                new: 6,
            },
        ] {
            assert_eq!(Command::decode(&c.encode()).unwrap(), c);
        }
        assert!(Command::decode(&[1, 2, 3]).is_err());
        let mut bad = Command::Put {
            request: 1,
            key: 1,
            value: 1,
        }
        .encode();
        bad[0] = 9;
        assert!(Command::decode(&bad).is_err());

        let mut kv = KvState::default();
        kv.apply(&Command::Put {
            request: 1,
            key: 2,
            value: 3,
        });
        assert_eq!(
            kv.apply(&Command::Cas {
                request: 2,
                key: 2,
                expected: Some(4),
                new: 5
            }),
            Applied::Cas { swapped: false }
        );
        assert_eq!(
            kv.apply(&Command::Cas {
                request: 3,
                key: 2,
                expected: Some(3),
                new: 5
            }),
            Applied::Cas { swapped: true }
        );
        assert_eq!(KvState::decode(&kv.encode()).unwrap(), kv);
        assert!(KvState::decode(&[1, 0, 0, 0]).is_err());
    }
}
