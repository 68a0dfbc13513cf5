//! What happens to an enrollment after it: a card leaving Click to Pay (why and when), the
//! state a record's token implies for an enrolled card, and a cardholder's opt-out.

use super::enrollment::{EnrollmentRecord, EnrollmentState, Token, TokenStatus};
use serde::{Deserialize, Serialize};

/// Why a card left Click to Pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RemovalReason {
    /// RemoveCard: the card was closed.
    CardClosed,
    /// RemoveCard: the card was replaced.
    CardReplaced,
    /// RemoveCard: the card was compromised.
    Fraud,
    /// RemoveCard: the cardholder asked.
    CardholderRequest,
    /// RemoveCard: another reason.
    Other,
    /// The card's Click to Pay token was deactivated (a notification or the token list).
    TokenDeactivated,
    /// OptOut deleted the cardholder's profile.
    ConsumerOptedOut,
    /// A check found that Click to Pay no longer holds the card.
    NotInClickToPay,
}

impl RemovalReason {
    /// Whether a caller gave it (RemoveCard), rather than the service's own finding.
    pub fn is_requested(self) -> bool {
        matches!(
            self,
            RemovalReason::CardClosed
                | RemovalReason::CardReplaced
                | RemovalReason::Fraud
                | RemovalReason::CardholderRequest
                | RemovalReason::Other
        )
    }
}

/// Why and when a card left Click to Pay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    /// Why.
    pub reason: RemovalReason,
    /// When, Unix milliseconds: the replica's clock for a request or a check, Mastercard's
    /// event time for a deactivated token.
    pub time_ms: i64,
}

/// Whether `record` is REMOVED because its token was deactivated, and for that alone: news of
/// the token that no longer shows DEACTIVATED makes it ENROLLED again ([`follow_token`]).
pub fn removed_by_token(record: &EnrollmentRecord) -> bool {
    record.state == EnrollmentState::Removed
        && record
            .removal
            .as_ref()
            .is_some_and(|r| r.reason == RemovalReason::TokenDeactivated)
}

/// Makes an enrolled record follow its token: ENROLLED with a DEACTIVATED token is REMOVED
/// (reason `TOKEN_DEACTIVATED`, at the deactivation's event time), and a record REMOVED for that
/// reason alone is ENROLLED again when its token no longer shows DEACTIVATED. What counts is the
/// card's latest status write, whichever token it is about: the token shown, or the one kept
/// aside (`superseded`) when a later decision about another token is shown (a TAR for a new
/// token, declined or not, says nothing of the deactivated one); with no status write at all
/// the state is left as it is. A function of the merged token only, so that the merge stays a
/// join (any order of notifications gives the same record). Records of other states, and
/// removals for other reasons, are left as they are. The Lua twin is in `store/scripts.rs`
/// (`follow_token`).
pub fn follow_token(record: &mut EnrollmentRecord) {
    if record.state != EnrollmentState::Enrolled && !removed_by_token(record) {
        return;
    }
    let Some(latest) = record.token.as_ref().and_then(latest_status) else {
        return;
    };
    if latest.status == Some(TokenStatus::Deactivated) {
        let time_ms = latest.status_version.as_ref().map_or(0, |v| v.at_ms);
        record.state = EnrollmentState::Removed;
        record.removal = Some(Removal {
            reason: RemovalReason::TokenDeactivated,
            time_ms,
        });
    } else {
        record.state = EnrollmentState::Enrolled;
        record.removal = None;
    }
}

/// The token that holds the card's latest status write in a merged `token`: the token shown,
/// or the one kept aside (`superseded`) when a later decision about another token is shown;
/// `None` when no status was ever written.
pub fn latest_status(token: &Token) -> Option<&Token> {
    if token.status_version.is_some() {
        Some(token)
    } else {
        token
            .superseded
            .as_deref()
            .filter(|aside| aside.status_version.is_some())
    }
}

/// A cardholder's opt-out of Click to Pay: kept under each of its subjects (`card:<id>`,
/// `consumer:<ref>`), so that an enrollment of any of them is refused until it is withdrawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptOut {
    /// When it was first recorded, Unix milliseconds (the replica's clock).
    pub since_ms: i64,
    /// Every subject it is kept under.
    pub subjects: Vec<String>,
    /// The program of the card it was given through: who may withdraw it once that card's
    /// record has expired (an opt-out outlives it). `None` in one written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// Subjects of the cardholder's earlier opt-outs (given through another card) that this one
    /// replaced under a subject they share: not kept under them (each keeps its own, with its
    /// program), but a withdrawal through this one reaches them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub linked: Vec<String>,
    /// The id of the write that kept it (a new one each time): what tells an opt-out written
    /// again in the same words apart from the one read before (a withdrawal must not take the
    /// one for the other), and an OptOut's own write from another call's. `None` in one written
    /// before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<String>,
}

/// The opt-out subject of a card.
pub fn card_subject(card: super::CardContractId) -> String {
    format!("card:{card}")
}

/// The opt-out subject of a consumer reference (see `app::fingerprint::consumer_ref`).
pub fn consumer_subject(consumer_ref: &str) -> String {
    format!("consumer:{consumer_ref}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CardContractId, Token, Version};

    fn enrolled(status: Option<TokenStatus>, at_ms: i64) -> EnrollmentRecord {
        let mut r = EnrollmentRecord::new(
            CardContractId::new(70001).unwrap(),
            String::new(),
            EnrollmentState::Enrolled,
            1,
        );
        r.token = Some(Token {
            token_unique_reference: "DM1".into(),
            token_requestor_id: "50123197928".into(),
            status,
            status_version: status.map(|_| Version {
                at_ms,
                by: "n".into(),
            }),
            decision: None,
            decision_version: None,
            superseded: None,
        });
        r
    }

    #[test]
    fn an_enrolled_record_follows_its_token_both_ways() {
        let mut r = enrolled(Some(TokenStatus::Deactivated), 42);
        follow_token(&mut r);
        assert_eq!(r.state, EnrollmentState::Removed);
        assert_eq!(
            r.removal,
            Some(Removal {
                reason: RemovalReason::TokenDeactivated,
                time_ms: 42
            })
        );
        // The token shows ACTIVE again (a later write won): ENROLLED again, no removal.
        r.token.as_mut().unwrap().status = Some(TokenStatus::Active);
        follow_token(&mut r);
        assert_eq!((r.state, r.removal), (EnrollmentState::Enrolled, None));
    }

    #[test]
    fn a_later_decision_about_another_token_does_not_hide_a_deactivation() {
        // DM1 deactivated at 10, then a TAR about DM2 at 20: DM2 shows, DM1 is kept aside.
        let deactivated = enrolled(Some(TokenStatus::Deactivated), 10).token.unwrap();
        let tar = Token {
            token_unique_reference: "DM2".into(),
            token_requestor_id: "50123197928".into(),
            status: None,
            status_version: None,
            decision: Some(crate::domain::TokenizationDecision::Declined),
            decision_version: Some(Version {
                at_ms: 20,
                by: "n-tar".into(),
            }),
            superseded: None,
        };
        for (first, second) in [(&deactivated, &tar), (&tar, &deactivated)] {
            let mut r = enrolled(None, 0);
            r.token = Some(crate::domain::merge_tokens(first.clone(), second));
            assert_eq!(
                r.token.as_ref().map(|t| t.token_unique_reference.as_str()),
                Some("DM2")
            );
            follow_token(&mut r);
            assert_eq!(r.state, EnrollmentState::Removed);
            assert_eq!(r.removal.map(|x| x.time_ms), Some(10));
        }
        // No status write at all: the state is left as it is (a REMOVED one too).
        let mut r = enrolled(None, 0);
        r.state = EnrollmentState::Removed;
        r.removal = Some(Removal {
            reason: RemovalReason::TokenDeactivated,
            time_ms: 5,
        });
        r.token = Some(tar);
        let before = r.clone();
        follow_token(&mut r);
        assert_eq!(r, before);
    }

    #[test]
    fn other_states_and_requested_removals_do_not_follow() {
        let mut closed = enrolled(Some(TokenStatus::Active), 1);
        closed.state = EnrollmentState::Removed;
        closed.removal = Some(Removal {
            reason: RemovalReason::CardClosed,
            time_ms: 7,
        });
        let before = closed.clone();
        follow_token(&mut closed);
        assert_eq!(closed, before);
        for state in [
            EnrollmentState::InProgress,
            EnrollmentState::Failed,
            EnrollmentState::NotEnrolled,
            EnrollmentState::TokenizedElsewhere,
        ] {
            let mut r = enrolled(Some(TokenStatus::Deactivated), 1);
            r.state = state;
            follow_token(&mut r);
            assert_eq!((r.state, r.removal), (state, None));
        }
    }
}
