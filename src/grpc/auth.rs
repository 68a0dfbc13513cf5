//! Who is calling, and may they: a tower layer in front of the enrollment service that names
//! the caller (client certificate, or a trusted mesh header) and checks the RPC against the
//! policy before any handler runs, so a refused call costs no upstream call and no store write.
//! The program check of `EnrollCard` needs the decoded request and happens in its handler.

use super::policy::{AuthSettings, IdentitySource, Rpc};
use crate::app::ErrorParts;
use crate::domain::{EnrollmentRecord, EnrollmentState};
use crate::proto::v1::ErrorReason;
use crate::transport::Peer;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The caller of a request, put in its extensions by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// The identity (SPIFFE id, DNS name, mesh header value, or `anonymous`).
    pub identity: Arc<str>,
    /// The programs it may enroll under; `None` = any.
    programs: Option<Arc<BTreeSet<String>>>,
}

/// The identity of every caller when nobody is identified (`auth.identity = none`).
pub const ANONYMOUS: &str = "anonymous";

impl Caller {
    /// Whether this caller may enroll under `program`, or see a record enrolled under it (the
    /// configured name; empty = default).
    pub fn may_use(&self, program: &str) -> bool {
        let program = if program.is_empty() {
            crate::domain::DEFAULT_PROGRAM
        } else {
            program
        };
        self.programs.as_ref().is_none_or(|p| p.contains(program))
    }

    /// `Ok` when this caller may see a record of `program`; otherwise the refusal, logged and
    /// counted.
    pub fn may_see(&self, program: &str, rpc: Rpc) -> Result<(), tonic::Status> {
        if self.may_use(program) {
            return Ok(());
        }
        Denied::ProgramNotAllowed.record(rpc, Some(&self.identity));
        Err(Denied::ProgramNotAllowed.status(rpc))
    }

    /// `Ok` when this caller may read `record`. A card enrolled through this service (being,
    /// once, or now) belongs to its record's program; a card nobody enrolled here (NOT_ENROLLED,
    /// TOKENIZED_ELSEWHERE, with no program: what the token list and notifications make of a
    /// card without a record) belongs to none, and every caller granted the read sees it: a
    /// backend of any program checks a card before it enrolls it.
    pub fn may_read(&self, record: &EnrollmentRecord, rpc: Rpc) -> Result<(), tonic::Status> {
        if record.program.is_empty()
            && matches!(
                record.state,
                EnrollmentState::NotEnrolled | EnrollmentState::TokenizedElsewhere
            )
        {
            return Ok(());
        }
        self.may_see(&record.program, rpc)
    }

    /// An error's parts without the enrollment it carries (CARD_ALREADY_ENROLLED) when that
    /// enrollment's program is not this caller's.
    pub fn redact(&self, mut parts: ErrorParts) -> ErrorParts {
        if parts
            .enrollment
            .as_ref()
            .is_some_and(|r| !self.may_use(&r.program))
        {
            parts.enrollment = None;
        }
        parts
    }
}

/// Why a call is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No identity, or one the policy does not know.
    Unauthenticated,
    /// A known identity that may not call this RPC.
    RpcNotAllowed,
    /// A known identity that may not enroll under this program.
    ProgramNotAllowed,
}

impl Denied {
    /// The metric label and log word.
    pub fn name(self) -> &'static str {
        match self {
            Denied::Unauthenticated => "unauthenticated",
            Denied::RpcNotAllowed => "rpc_not_allowed",
            Denied::ProgramNotAllowed => "program_not_allowed",
        }
    }

    /// The status: `UNAUTHENTICATED` or `PERMISSION_DENIED`, with an `ErrorInfo`.
    pub fn status(self, rpc: Rpc) -> tonic::Status {
        let (code, reason, message) = match self {
            Denied::Unauthenticated => (
                tonic::Code::Unauthenticated,
                ErrorReason::CallerUnknown,
                "the caller's identity is missing or not in the access policy",
            ),
            Denied::RpcNotAllowed => (
                tonic::Code::PermissionDenied,
                ErrorReason::RpcNotAllowed,
                "the access policy does not allow this caller this RPC",
            ),
            Denied::ProgramNotAllowed => (
                tonic::Code::PermissionDenied,
                ErrorReason::ProgramNotAllowed,
                "the access policy does not allow this caller this card's program",
            ),
        };
        super::status::build(super::status::Problem {
            metadata: BTreeMap::from([("rpc".to_owned(), rpc.name().to_owned())]),
            ..super::status::Problem::new(code, reason, message)
        })
    }

    /// Logs and counts the refusal; the identity is quoted bounded and escaped.
    pub fn record(self, rpc: Rpc, identity: Option<&str>) {
        crate::metrics::auth_denied(rpc.name(), self.name());
        tracing::warn!(
            identity = identity
                .map(crate::text::excerpt)
                .as_deref()
                .unwrap_or("(none)"),
            rpc = rpc.name(),
            reason = self.name(),
            "call refused by the access policy"
        );
    }
}

/// What one identity may do: its RPCs and its programs (`None` = any).
type Grant = (BTreeSet<Rpc>, Option<Arc<BTreeSet<String>>>);

/// The access policy, from `auth.*`.
#[derive(Debug)]
pub struct Policy {
    source: IdentitySource,
    mesh_header: String,
    /// The connections whose mesh header is believed (their certificate identities); empty =
    /// any connection's (a plaintext port only the mesh reaches).
    mesh_peers: BTreeSet<String>,
    callers: HashMap<String, Grant>,
}

impl Policy {
    /// The policy of the settings.
    pub fn from_settings(auth: &AuthSettings) -> Self {
        Self {
            source: auth.identity,
            mesh_header: auth.mesh_header.clone(),
            mesh_peers: auth.mesh_peers.clone(),
            callers: auth
                .callers
                .values()
                .map(|c| {
                    (
                        c.identity.clone(),
                        (c.rpcs.clone(), c.programs.clone().map(Arc::new)),
                    )
                })
                .collect(),
        }
    }

    /// Decides a call of `rpc` from `peer` with `headers`.
    pub fn decide(
        &self,
        rpc: Rpc,
        peer: Option<&Peer>,
        headers: &http::HeaderMap,
    ) -> Result<Caller, (Denied, Option<String>)> {
        let identity: Option<String> = match self.source {
            IdentitySource::None => {
                return Ok(Caller {
                    identity: Arc::from(ANONYMOUS),
                    programs: None,
                });
            }
            IdentitySource::Certificate => {
                peer.and_then(|p| p.identity.as_deref().map(str::to_owned))
            }
            // Only a mesh that strips the header from what callers send may be trusted with it;
            // two values mean a mesh appended its own to a forged one: trust neither. Over
            // mutual TLS, only the mesh's proxies may set it: another client the CA signed is
            // refused whatever it claims.
            IdentitySource::MeshHeader => {
                if !self.mesh_peers.is_empty() {
                    let connected = peer.and_then(|p| p.identity.as_deref());
                    if !connected.is_some_and(|id| self.mesh_peers.contains(id)) {
                        return Err((
                            Denied::Unauthenticated,
                            connected.map(|id| format!("{id} (not an auth.mesh_peers identity)")),
                        ));
                    }
                }
                let mut values = headers.get_all(self.mesh_header.as_str()).iter();
                match (values.next(), values.next()) {
                    (Some(v), None) => v.to_str().ok().filter(|v| !v.is_empty()).map(str::to_owned),
                    _ => None,
                }
            }
        };
        let Some(identity) = identity else {
            return Err((Denied::Unauthenticated, None));
        };
        match self.callers.get(&identity) {
            None => Err((Denied::Unauthenticated, Some(identity))),
            Some((rpcs, _)) if !rpcs.contains(&rpc) => Err((Denied::RpcNotAllowed, Some(identity))),
            Some((_, programs)) => Ok(Caller {
                identity: Arc::from(identity),
                programs: programs.clone(),
            }),
        }
    }
}

/// Applies a [`Policy`] to the enrollment service's calls; health and reflection pass.
#[derive(Clone)]
pub struct AuthLayer(Arc<Policy>);

impl AuthLayer {
    /// The layer of `policy`.
    pub fn new(policy: Policy) -> Self {
        Self(Arc::new(policy))
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            policy: self.0.clone(),
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    policy: Arc<Policy>,
}

/// The path prefix of the enrollment service's methods.
const PREFIX: &str = "/c2p.enrollment.v1.EnrollmentService/";

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Auth<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The clone that was made ready is the one that serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let rpc = request
            .uri()
            .path()
            .strip_prefix(PREFIX)
            .and_then(Rpc::from_name);
        let Some(rpc) = rpc else {
            // Health, reflection, and unknown methods (tonic answers UNIMPLEMENTED).
            return Box::pin(inner.call(request));
        };
        let decision =
            self.policy
                .decide(rpc, request.extensions().get::<Peer>(), request.headers());
        match decision {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(inner.call(request))
            }
            Err((denied, identity)) => {
                denied.record(rpc, identity.as_deref());
                let response = denied.status(rpc).into_http::<ResBody>();
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::policy::CallerPolicy;

    fn settings(source: IdentitySource) -> AuthSettings {
        let caller = |identity: &str, rpcs: &[Rpc], programs: Option<&[&str]>| CallerPolicy {
            identity: identity.into(),
            rpcs: rpcs.iter().copied().collect(),
            programs: programs.map(|p| p.iter().map(|s| s.to_string()).collect()),
        };
        AuthSettings {
            identity: source,
            mesh_header: "x-c2p-caller".into(),
            mesh_peers: BTreeSet::new(),
            callers: BTreeMap::from([
                (
                    "app".to_owned(),
                    caller("spiffe://bank/app", &[Rpc::EnrollCard], Some(&["default"])),
                ),
                (
                    "gw".to_owned(),
                    caller("spiffe://bank/gw", &[Rpc::NotificationIngest], None),
                ),
            ]),
        }
    }

    fn peer(identity: Option<&str>) -> Peer {
        Peer {
            remote: "127.0.0.1:1".parse().unwrap(),
            identity: identity.map(Arc::from),
        }
    }

    #[test]
    fn certificate_identities_are_checked_against_the_policy() {
        let policy = Policy::from_settings(&settings(IdentitySource::Certificate));
        let none = http::HeaderMap::new();
        let app = policy
            .decide(
                Rpc::EnrollCard,
                Some(&peer(Some("spiffe://bank/app"))),
                &none,
            )
            .unwrap();
        assert!(app.may_use("") && app.may_use("default") && !app.may_use("other"));
        let denied =
            |rpc, p: Option<&str>| policy.decide(rpc, Some(&peer(p)), &none).unwrap_err().0;
        assert_eq!(
            denied(Rpc::NotificationIngest, Some("spiffe://bank/app")),
            Denied::RpcNotAllowed
        );
        assert_eq!(
            denied(Rpc::EnrollCard, Some("spiffe://bank/other")),
            Denied::Unauthenticated
        );
        assert_eq!(denied(Rpc::EnrollCard, None), Denied::Unauthenticated);
        // The mesh header is not a source of identity in certificate mode.
        let mut forged = http::HeaderMap::new();
        forged.insert("x-c2p-caller", "spiffe://bank/app".parse().unwrap());
        assert_eq!(
            policy
                .decide(Rpc::EnrollCard, Some(&peer(None)), &forged)
                .unwrap_err()
                .0,
            Denied::Unauthenticated
        );
    }

    #[test]
    fn mesh_header_mode_reads_only_the_header() {
        let policy = Policy::from_settings(&settings(IdentitySource::MeshHeader));
        let mut headers = http::HeaderMap::new();
        headers.insert("x-c2p-caller", "spiffe://bank/gw".parse().unwrap());
        let gw = policy
            .decide(
                Rpc::NotificationIngest,
                Some(&peer(Some("spiffe://bank/app"))),
                &headers,
            )
            .unwrap();
        assert_eq!(&*gw.identity, "spiffe://bank/gw");
        assert!(gw.may_use("anything"));
        // A forged value beside the mesh's: neither is trusted.
        headers.append("x-c2p-caller", "spiffe://bank/app".parse().unwrap());
        assert_eq!(
            policy
                .decide(Rpc::NotificationIngest, None, &headers)
                .unwrap_err()
                .0,
            Denied::Unauthenticated
        );
        assert_eq!(
            policy
                .decide(
                    Rpc::EnrollCard,
                    Some(&peer(Some("spiffe://bank/app"))),
                    &http::HeaderMap::new()
                )
                .unwrap_err()
                .0,
            Denied::Unauthenticated
        );
    }

    #[test]
    fn over_mutual_tls_only_the_mesh_peers_header_is_believed() {
        let policy = Policy::from_settings(&AuthSettings {
            mesh_peers: BTreeSet::from(["spiffe://bank/mesh-proxy".to_owned()]),
            ..settings(IdentitySource::MeshHeader)
        });
        let mut headers = http::HeaderMap::new();
        headers.insert("x-c2p-caller", "spiffe://bank/app".parse().unwrap());
        let app = policy
            .decide(
                Rpc::EnrollCard,
                Some(&peer(Some("spiffe://bank/mesh-proxy"))),
                &headers,
            )
            .unwrap();
        assert_eq!(&*app.identity, "spiffe://bank/app");
        // Another workload the CA signed, claiming the app's identity; no certificate; no peer.
        for connected in [Some(peer(Some("spiffe://bank/gw"))), Some(peer(None)), None] {
            let (denied, logged) = policy
                .decide(Rpc::EnrollCard, connected.as_ref(), &headers)
                .unwrap_err();
            assert_eq!(denied, Denied::Unauthenticated);
            assert!(
                logged
                    .as_deref()
                    .is_none_or(|l| l.starts_with("spiffe://bank/gw ")),
                "{logged:?}"
            );
        }
    }

    #[test]
    fn records_of_other_programs_are_neither_shown_nor_carried_in_errors() {
        let policy = Policy::from_settings(&settings(IdentitySource::Certificate));
        let app = policy
            .decide(
                Rpc::EnrollCard,
                Some(&peer(Some("spiffe://bank/app"))),
                &http::HeaderMap::new(),
            )
            .unwrap();
        assert!(app.may_see("", Rpc::GetEnrollmentStatus).is_ok());
        let refused = app.may_see("premium", Rpc::WatchEnrollment).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        let card = crate::domain::CardContractId::new(70001).unwrap();
        let record = |program: &str| {
            crate::domain::EnrollmentRecord::new(
                card,
                program.into(),
                crate::domain::EnrollmentState::Enrolled,
                0,
            )
        };
        let already = |program: &str| {
            crate::app::AppError::CardAlreadyEnrolled(Box::new(record(program))).parts()
        };
        // A card nobody enrolled here is no program's; one being, once or now enrolled is.
        for (state, program, visible) in [
            (crate::domain::EnrollmentState::NotEnrolled, "", true),
            (crate::domain::EnrollmentState::TokenizedElsewhere, "", true),
            (
                crate::domain::EnrollmentState::TokenizedElsewhere,
                "premium",
                false,
            ),
            (
                crate::domain::EnrollmentState::NotEnrolled,
                "premium",
                false,
            ),
            (crate::domain::EnrollmentState::InProgress, "premium", false),
            (crate::domain::EnrollmentState::Failed, "premium", false),
            (crate::domain::EnrollmentState::Removed, "premium", false),
            (crate::domain::EnrollmentState::Enrolled, "premium", false),
            (crate::domain::EnrollmentState::Enrolled, "", true),
        ] {
            let mut r = record(program);
            r.state = state;
            let read = app.may_read(&r, Rpc::GetEnrollmentStatus);
            assert_eq!(read.is_ok(), visible, "{state:?} {program:?}");
        }
        assert!(app.redact(already("default")).enrollment.is_some());
        let redacted = app.redact(already("premium"));
        assert!(redacted.enrollment.is_none());
        assert_eq!(redacted.reason, crate::app::Reason::CardAlreadyEnrolled);
    }

    #[test]
    fn no_identity_source_makes_everyone_anonymous() {
        let policy = Policy::from_settings(&AuthSettings {
            callers: BTreeMap::new(),
            ..settings(IdentitySource::None)
        });
        let c = policy
            .decide(Rpc::NotificationIngest, None, &http::HeaderMap::new())
            .unwrap();
        assert_eq!(&*c.identity, ANONYMOUS);
    }
}
