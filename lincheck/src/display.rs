//! Human-readable rendering of operations, for reports and error messages.

use std::fmt;

use crate::{Op, Operation, Outcome};

/// Renders bytes as a quoted string if they are printable UTF-8, else as hex.
pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self.0) {
            Ok(s) if !s.chars().any(char::is_control) => write!(f, "{s:?}"),
            _ => {
                f.write_str("0x")?;
                self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

/// Renders an optional value, None as `absent`.
pub(crate) struct MaybeBytes<'a>(pub(crate) Option<&'a [u8]>);

impl fmt::Display for MaybeBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(bytes) => Bytes(bytes).fmt(f),
            None => f.write_str("absent"),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Put { key, value } => write!(f, "Put({} = {})", Bytes(key), Bytes(value)),
            Op::Get { key } => write!(f, "Get({})", Bytes(key)),
            Op::Cas { key, expected, new } => write!(
                f,
                "Cas({}: {} -> {})",
                Bytes(key),
                MaybeBytes(expected.as_deref()),
                Bytes(new)
            ),
            Op::Delete { key } => write!(f, "Delete({})", Bytes(key)),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Done => f.write_str("done"),
            Outcome::Read(value) => write!(f, "read {}", MaybeBytes(value.as_deref())),
            Outcome::Swapped(true) => f.write_str("swapped"),
            Outcome::Swapped(false) => f.write_str("not swapped"),
            Outcome::Failed => f.write_str("failed"),
            Outcome::Unknown => f.write_str("unknown"),
        }
    }
}

/// `client 3 [120, 180]: Put("k" = "v") -> done`; Unknown operations show
/// their interval as `[invoke, ∞)`.
impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} ", self.client)?;
        if self.outcome == Outcome::Unknown {
            write!(f, "[{}, ∞)", self.invoke)?;
        } else {
            write!(f, "[{}, {}]", self.invoke, self.complete)?;
        }
        write!(f, ": {} -> {}", self.op, self.outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_operations() {
        let operation = Operation {
            client: 3,
            invoke: 120,
            complete: 180,
            op: Op::Cas {
                key: b"k".to_vec(),
                expected: None,
                new: vec![0, 255],
            },
            outcome: Outcome::Swapped(false),
        };
        assert_eq!(
            operation.to_string(),
            "client 3 [120, 180]: Cas(\"k\": absent -> 0x00ff) -> not swapped"
        );
        let operation = Operation {
            outcome: Outcome::Unknown,
            op: Op::Put {
                key: b"k".to_vec(),
                value: b"v\"".to_vec(),
            },
            ..operation
        };
        assert_eq!(
            operation.to_string(),
            "client 3 [120, ∞): Put(\"k\" = \"v\\\"\") -> unknown"
        );
    }
}
