//! The cluster's alarms (etcd's alarm store): which member raised which
//! alarm. They are replicated like any other state, so every member
//! refuses the same writes while one is active: NOSPACE (a member's store
//! outgrew `--quota-backend-bytes`) refuses what adds data, CORRUPT (the
//! members' hashes disagree) refuses every write. Stored in `meta` under
//! `alarms` as an `AlarmResponse` holding the list; changed in the batch
//! of the entry that changed it. No I/O but the backend's.

use std::collections::BTreeSet;

use prost::Message as _;

use super::super::codec;
use super::encoding::{KEY_ALARMS, TAG_ALARMS};
use super::{backend, Backend, KvError, KvStore, RecordError, StoreError};
use crate::storage::backend::Keyspace;
use nod_proto::etcd::etcdserverpb::{
    alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, AlarmType,
};

/// Alarm records a store holds at most: one per member and kind; more
/// than this in a record means it is not ours.
const MAX_ALARMS: usize = 4096;

fn corrupt(cause: impl Into<RecordError>) -> StoreError {
    StoreError::Corrupt {
        what: "alarm record",
        cause: cause.into(),
    }
}

/// The alarms as stored: (member, alarm type).
pub(super) type Alarms = BTreeSet<(u64, i32)>;

pub(super) fn decode_alarms(v: &[u8]) -> Result<Alarms, StoreError> {
    let (tag, body) = codec::decode_tagged(v).map_err(corrupt)?;
    if tag != TAG_ALARMS {
        return Err(corrupt(RecordError::Tag(tag)));
    }
    let list = AlarmResponse::decode(body).map_err(corrupt)?;
    if list.alarms.len() > MAX_ALARMS {
        return Err(corrupt(RecordError::Length(list.alarms.len())));
    }
    Ok(list.alarms.iter().map(|a| (a.member_id, a.alarm)).collect())
}

fn encode_alarms(alarms: &Alarms) -> Vec<u8> {
    let list = AlarmResponse {
        header: None,
        alarms: to_members(alarms.iter()),
    };
    codec::encode_tagged(TAG_ALARMS, &list.encode_to_vec())
}

fn to_members<'a>(it: impl Iterator<Item = &'a (u64, i32)>) -> Vec<AlarmMember> {
    it.map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
        .collect()
}

impl<B: Backend> KvStore<B> {
    pub(super) fn load_alarms(&self) -> Result<Alarms, StoreError> {
        match self
            .backend
            .get(Keyspace::Meta, KEY_ALARMS)
            .map_err(backend("reading alarms"))?
        {
            Some(v) => decode_alarms(&v),
            None => Ok(Alarms::new()),
        }
    }

    /// Every active alarm, by member then type.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        to_members(self.alarms.iter())
    }

    /// Whether `member` has raised `kind`.
    pub fn has_alarm_of(&self, member: u64, kind: AlarmType) -> bool {
        self.alarms.contains(&(member, kind as i32))
    }

    /// Whether any member has raised `kind`.
    pub fn has_alarm(&self, kind: AlarmType) -> bool {
        self.alarms.iter().any(|&(_, a)| a == kind as i32)
    }

    /// The error a write gets while an alarm is active (etcd's capped and
    /// corrupt appliers): CORRUPT refuses every write, NOSPACE those that
    /// add data (`adds` false: a delete, a compaction, a lease revoke).
    pub fn alarm_refusal(&self, adds: bool) -> Option<KvError> {
        if self.has_alarm(AlarmType::Corrupt) {
            Some(KvError::Corrupt)
        } else if adds && self.has_alarm(AlarmType::Nospace) {
            Some(KvError::NoSpace)
        } else {
            None
        }
    }

    /// Applies an alarm request committed at `applied` and answers as etcd
    /// does: GET lists every alarm (or those of one type); ACTIVATE adds
    /// the alarm for the member named (any id; an alarm of type NONE is
    /// ignored) and answers it; DEACTIVATE removes it and answers it if it
    /// was there.
    pub fn apply_alarm(
        &mut self,
        req: &AlarmRequest,
        applied: (u64, u64),
    ) -> Result<Vec<AlarmMember>, StoreError> {
        let one = (req.member_id, req.alarm);
        let action = AlarmAction::try_from(req.action).unwrap_or(AlarmAction::Get);
        let kind = AlarmType::try_from(req.alarm).unwrap_or(AlarmType::None);
        let mut next = self.alarms.clone();
        let answer = match action {
            AlarmAction::Get => {
                let all = kind == AlarmType::None;
                to_members(self.alarms.iter().filter(|(_, a)| all || *a == req.alarm))
            }
            // Any member id, as etcd 3.4 takes it (clients raise alarms
            // for member 0 in tests).
            AlarmAction::Activate => {
                if kind == AlarmType::None {
                    Vec::new()
                } else {
                    next.insert(one);
                    to_members([one].iter())
                }
            }
            AlarmAction::Deactivate => {
                if next.remove(&one) {
                    to_members([one].iter())
                } else {
                    Vec::new()
                }
            }
        };
        let st = self.stage();
        if next == self.alarms {
            self.commit(st, applied, |_| {})?;
        } else {
            let record = encode_alarms(&next);
            self.commit(st, applied, |b| b.put(Keyspace::Meta, KEY_ALARMS, record))?;
            self.alarms = next;
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::KvStore;
    use nod_proto::etcd::etcdserverpb::Member;

    fn req(action: AlarmAction, member_id: u64, alarm: AlarmType) -> AlarmRequest {
        AlarmRequest {
            action: action as i32,
            member_id,
            alarm: alarm as i32,
        }
    }

    #[test]
    fn alarms_are_raised_for_members_cleared_and_survive_a_reopen() {
        let mut s = KvStore::in_memory();
        let m = Member {
            id: 7,
            name: "a".into(),
            ..Default::default()
        };
        s.apply_member(7, Some(m), (1, 1)).unwrap();
        let nospace = req(AlarmAction::Activate, 7, AlarmType::Nospace);
        assert_eq!(s.apply_alarm(&nospace, (2, 1)).unwrap().len(), 1);
        // An alarm of no type raises nothing.
        let nothing = req(AlarmAction::Activate, 9, AlarmType::None);
        assert!(s.apply_alarm(&nothing, (3, 1)).unwrap().is_empty());
        assert_eq!(s.alarm_refusal(true), Some(KvError::NoSpace));
        assert_eq!(s.alarm_refusal(false), None, "deletes pass under NOSPACE");
        let corrupt = req(AlarmAction::Activate, 7, AlarmType::Corrupt);
        s.apply_alarm(&corrupt, (4, 1)).unwrap();
        assert_eq!(s.alarm_refusal(false), Some(KvError::Corrupt));
        let only_corrupt = req(AlarmAction::Get, 0, AlarmType::Corrupt);
        assert_eq!(
            s.apply_alarm(&only_corrupt, (5, 1)).unwrap(),
            vec![AlarmMember {
                member_id: 7,
                alarm: AlarmType::Corrupt as i32
            }]
        );

        let reopened = KvStore::restore_from(&s.snapshot_bytes()).unwrap();
        assert_eq!(reopened.alarms(), s.alarms());
        assert_eq!(reopened.alarms().len(), 2);
        assert_eq!(reopened.applied(), (5, 1));

        let clear = req(AlarmAction::Deactivate, 7, AlarmType::Corrupt);
        assert_eq!(s.apply_alarm(&clear, (6, 1)).unwrap().len(), 1);
        assert!(
            s.apply_alarm(&clear, (7, 1)).unwrap().is_empty(),
            "clearing twice answers nothing"
        );
        assert_eq!(s.alarm_refusal(false), None);
        assert_eq!(s.alarm_refusal(true), Some(KvError::NoSpace));
    }

    #[test]
    fn alarm_records_that_do_not_decode_are_errors() {
        assert!(decode_alarms(b"junk").is_err());
        let wrong_tag = codec::encode_tagged(1, &[]);
        assert!(decode_alarms(&wrong_tag).is_err());
        let ok = encode_alarms(&[(1, 1)].into_iter().collect());
        assert_eq!(decode_alarms(&ok).unwrap().len(), 1);
    }
}
