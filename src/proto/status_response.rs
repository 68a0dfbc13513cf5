//! `GetEnrollmentStatusResponse`, written by hand (`build.rs` maps the message here with
//! `extern_path`): the struct prost would generate, `enrollment` (field 1) and nothing else, plus
//! a way to send an answer the server already encoded. A status hit is the service's hottest
//! call and most hits ask about a record that has not changed since the last one: the server
//! keeps the encoded answer with that version of the record and sends those bytes, instead of
//! copying the record's strings into an `Enrollment` and encoding it on every call. On the wire
//! both are the same message; clients decode it as the generated struct would.

use super::v1::Enrollment;
use bytes::{Buf, BufMut, Bytes};
use prost::DecodeError;
use prost::encoding::{DecodeContext, WireType};

/// GetEnrollmentStatusResponse is the answer to GetEnrollmentStatus.
/// Equality compares the two forms as they are: an answer built with [`Self::of`] and the same
/// answer pre-encoded are not equal (compare their encodings).
#[derive(Clone, PartialEq, Default)]
pub struct GetEnrollmentStatusResponse {
    /// Always set. The card's enrollment; `state` is ENROLLMENT_STATE_NOT_ENROLLED when
    /// Mastercard knows the card but no Click to Pay token or enrollment exists.
    pub enrollment: Option<Enrollment>,
    /// The whole message, already encoded: when set, these bytes are what is sent and
    /// `enrollment` is not looked at. Only [`Self::pre_encoded`] sets it (never decoding), so
    /// it is private: a struct literal cannot pair it with an enrollment it does not encode.
    encoded: Option<Bytes>,
}

impl GetEnrollmentStatusResponse {
    /// The answer carrying `enrollment`.
    pub fn of(enrollment: Enrollment) -> Self {
        Self {
            enrollment: Some(enrollment),
            encoded: None,
        }
    }

    /// The answer whose encoding `bytes` already is (made by [`prost::Message::encode_to_vec`]
    /// of an answer built with [`Self::of`]).
    pub fn pre_encoded(bytes: Bytes) -> Self {
        Self {
            enrollment: None,
            encoded: Some(bytes),
        }
    }
}

impl prost::Message for GetEnrollmentStatusResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match (&self.encoded, &self.enrollment) {
            (Some(bytes), _) => buf.put_slice(bytes),
            (None, Some(enrollment)) => prost::encoding::message::encode(1, enrollment, buf),
            (None, None) => {}
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == 1 {
            let enrollment = self.enrollment.get_or_insert_with(Enrollment::default);
            prost::encoding::message::merge(wire_type, enrollment, buf, ctx).map_err(|mut e| {
                e.push("GetEnrollmentStatusResponse", "enrollment");
                e
            })
        } else {
            prost::encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        match (&self.encoded, &self.enrollment) {
            (Some(bytes), _) => bytes.len(),
            (None, Some(enrollment)) => prost::encoding::message::encoded_len(1, enrollment),
            (None, None) => 0,
        }
    }

    fn clear(&mut self) {
        self.enrollment = None;
        self.encoded = None;
    }
}

// The encoded bytes by their length only: they hold the masked card, which stays out of
// anything printed (the enrollment's own Debug is what the generated struct would print).
impl std::fmt::Debug for GetEnrollmentStatusResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetEnrollmentStatusResponse")
            .field("enrollment", &self.enrollment)
            .field("encoded_bytes", &self.encoded.as_ref().map(Bytes::len))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::proto::v1::{EnrollmentSource, EnrollmentState, MaskedCard, Token};
    use prost::Message as _;

    /// What prost generates for the message (its derive, not this file's code): the oracle.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Generated {
        #[prost(message, optional, tag = "1")]
        enrollment: Option<Enrollment>,
    }

    fn enrollment() -> Enrollment {
        Enrollment {
            card_contract_id: 70_001,
            program: "bank-a".into(),
            state: EnrollmentState::Enrolled as i32,
            src_digital_card_id: "a1b2c3".into(),
            masked_card: Some(MaskedCard {
                pan_last_four: "0011".into(),
                pan_expiration_month: "12".into(),
                pan_expiration_year: "2035".into(),
                ..Default::default()
            }),
            token: Some(Token {
                token_unique_reference: "DWSPMC000000000132d72d4fcb2f4136a0532d3093ff1a45".into(),
                ..Default::default()
            }),
            revision: 1_764_000_000_123,
            source: EnrollmentSource::Store as i32,
            ..Default::default()
        }
    }

    #[test]
    fn both_forms_encode_as_prost_generated_code_does() {
        let want = Generated {
            enrollment: Some(enrollment()),
        }
        .encode_to_vec();
        let built = GetEnrollmentStatusResponse::of(enrollment());
        assert_eq!(built.encode_to_vec(), want);
        assert_eq!(built.encoded_len(), want.len());
        let sent = GetEnrollmentStatusResponse::pre_encoded(Bytes::from(built.encode_to_vec()));
        assert_eq!(sent.encode_to_vec(), want);
        assert_eq!(sent.encoded_len(), want.len());
        // Empty like the generated one.
        assert!(
            GetEnrollmentStatusResponse::default()
                .encode_to_vec()
                .is_empty()
        );
    }

    #[test]
    fn decodes_what_generated_code_encodes_and_refuses_what_it_refuses() {
        let wire = Generated {
            enrollment: Some(enrollment()),
        }
        .encode_to_vec();
        let decoded = GetEnrollmentStatusResponse::decode(&wire[..]).unwrap();
        assert_eq!(decoded, GetEnrollmentStatusResponse::of(enrollment()));
        // An unknown field is skipped, as by generated code.
        let mut longer = wire.clone();
        longer.extend_from_slice(&[0x10, 0x01]);
        assert_eq!(
            GetEnrollmentStatusResponse::decode(&longer[..]).unwrap(),
            decoded
        );
        assert!(GetEnrollmentStatusResponse::decode(&wire[..wire.len() - 3]).is_err());
        assert!(Generated::decode(&wire[..wire.len() - 3]).is_err());
    }

    /// An independent reader of the contract: prost-reflect, from the descriptor set that
    /// reflection serves (what grpcurl decodes with).
    #[test]
    fn a_descriptor_driven_decoder_reads_the_pre_encoded_answer() {
        let pool =
            prost_reflect::DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let desc = pool
            .get_message_by_name("c2p.enrollment.v1.GetEnrollmentStatusResponse")
            .unwrap();
        let bytes = GetEnrollmentStatusResponse::of(enrollment()).encode_to_vec();
        let sent = GetEnrollmentStatusResponse::pre_encoded(Bytes::from(bytes)).encode_to_vec();
        let dynamic = prost_reflect::DynamicMessage::decode(desc, &sent[..]).unwrap();
        let e = dynamic.get_field_by_name("enrollment").unwrap();
        let e = e.as_message().unwrap();
        assert_eq!(
            e.get_field_by_name("card_contract_id").unwrap().as_i64(),
            Some(70_001)
        );
        assert_eq!(
            e.get_field_by_name("revision").unwrap().as_i64(),
            Some(1_764_000_000_123)
        );
        assert_eq!(
            e.get_field_by_name("source").unwrap().as_enum_number(),
            Some(EnrollmentSource::Store as i32)
        );
    }

    #[test]
    fn debug_shows_no_encoded_bytes() {
        let bytes = GetEnrollmentStatusResponse::of(enrollment()).encode_to_vec();
        let sent = GetEnrollmentStatusResponse::pre_encoded(Bytes::from(bytes.clone()));
        let shown = format!("{sent:?}");
        assert!(!shown.contains("0011"), "{shown}");
        assert!(shown.contains(&format!("Some({})", bytes.len())), "{shown}");
    }
}
