//! What the load generator reads of a `GetEnrollmentStatus` answer: the enrollment's `source`,
//! which it reports, and nothing else. The load generator shares the cores with the server it
//! measures; decoding every string of the enrollment (and freeing them) cost it ~2.5 µs a call
//! that Health/Check's two-byte answer does not, which the status/Health ratio charged to the
//! server. prost still walks the whole message (a malformed answer fails) but skips the fields
//! these types do not name without copying them.

use c2p_enroll::proto::v1::GetEnrollmentStatusRequest;
use http::uri::PathAndQuery;
use tonic::client::Grpc;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

const PATH: &str = "/c2p.enrollment.v1.EnrollmentService/GetEnrollmentStatus";

/// `GetEnrollmentStatusResponse` with only `enrollment` (field 1).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusAnswer {
    #[prost(message, optional, tag = "1")]
    pub enrollment: Option<EnrollmentSourceOnly>,
}

/// `Enrollment` with only `source` (field 12).
#[derive(Clone, PartialEq, prost::Message)]
pub struct EnrollmentSourceOnly {
    #[prost(int32, tag = "12")]
    pub source: i32,
}

/// Calls `GetEnrollmentStatus`; the answer's `enrollment.source` (0 when there is none).
pub async fn status_source(
    channel: &Channel,
    request: tonic::Request<GetEnrollmentStatusRequest>,
) -> Result<i32, tonic::Status> {
    let mut grpc = Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let answer = grpc
        .unary(
            request,
            PathAndQuery::from_static(PATH),
            ProstCodec::<GetEnrollmentStatusRequest, StatusAnswer>::default(),
        )
        .await?;
    Ok(answer.into_inner().enrollment.map_or(0, |e| e.source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use c2p_enroll::proto::v1::{
        Enrollment, EnrollmentSource, EnrollmentState, GetEnrollmentStatusResponse, MaskedCard,
        Token,
    };
    use prost::Message as _;

    #[test]
    fn reads_the_source_of_a_whole_answer_as_the_generated_code_does() {
        let whole = GetEnrollmentStatusResponse::of(Enrollment {
            card_contract_id: 2_000_123,
            program: "default".into(),
            state: EnrollmentState::Enrolled as i32,
            src_digital_card_id: "a".repeat(36),
            src_consumer_id: "b".repeat(36),
            masked_card: Some(MaskedCard {
                pan_last_four: "0004".into(),
                ..Default::default()
            }),
            token: Some(Token {
                token_unique_reference: "DM4MMC".into(),
                ..Default::default()
            }),
            revision: 7,
            source: EnrollmentSource::Store as i32,
            ..Default::default()
        });
        let bytes = whole.encode_to_vec();
        let probe = StatusAnswer::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            probe.enrollment.map(|e| e.source),
            Some(EnrollmentSource::Store as i32)
        );
        // A truncated answer is refused, as the full decoder refuses it.
        assert!(StatusAnswer::decode(&bytes[..bytes.len() - 3]).is_err());
        assert!(GetEnrollmentStatusResponse::decode(&bytes[..bytes.len() - 3]).is_err());
    }
}
