//! The access policy's types, in the gRPC layer's words: the config layer fills them in from
//! `auth.*`, and `auth` enforces them.

/// Where a caller's identity comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    /// Nobody is identified: every caller is `anonymous` and may do everything (sandbox mode only).
    None,
    /// The client certificate (mutual TLS): its SPIFFE URI SAN, else its first DNS SAN.
    Certificate,
    /// A header set by a service mesh that terminated mutual TLS in front of the listener.
    MeshHeader,
}

/// An RPC that the policy can allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rpc {
    /// `EnrollCard`.
    EnrollCard,
    /// `GetEnrollmentStatus`.
    GetEnrollmentStatus,
    /// `WatchEnrollment`.
    WatchEnrollment,
    /// `NotificationIngest`.
    NotificationIngest,
    /// `RemoveCard`.
    RemoveCard,
    /// `GetClickToPayProfile`.
    GetClickToPayProfile,
    /// `UpdateConsumer`.
    UpdateConsumer,
    /// `UpdateBillingAddress`.
    UpdateBillingAddress,
    /// `OptOut`.
    OptOut,
    /// `WithdrawOptOut`.
    WithdrawOptOut,
}

impl Rpc {
    /// Every RPC, in the order of the contract.
    pub const ALL: [Rpc; 10] = [
        Rpc::EnrollCard,
        Rpc::GetEnrollmentStatus,
        Rpc::WatchEnrollment,
        Rpc::NotificationIngest,
        Rpc::RemoveCard,
        Rpc::GetClickToPayProfile,
        Rpc::UpdateConsumer,
        Rpc::UpdateBillingAddress,
        Rpc::OptOut,
        Rpc::WithdrawOptOut,
    ];

    /// The method name, as in the proto.
    pub fn name(self) -> &'static str {
        match self {
            Rpc::EnrollCard => "EnrollCard",
            Rpc::GetEnrollmentStatus => "GetEnrollmentStatus",
            Rpc::WatchEnrollment => "WatchEnrollment",
            Rpc::NotificationIngest => "NotificationIngest",
            Rpc::RemoveCard => "RemoveCard",
            Rpc::GetClickToPayProfile => "GetClickToPayProfile",
            Rpc::UpdateConsumer => "UpdateConsumer",
            Rpc::UpdateBillingAddress => "UpdateBillingAddress",
            Rpc::OptOut => "OptOut",
            Rpc::WithdrawOptOut => "WithdrawOptOut",
        }
    }

    /// Whether the RPC acts on a card of a program, so that the caller's `programs` apply.
    pub fn uses_programs(self) -> bool {
        !matches!(self, Rpc::NotificationIngest)
    }

    /// The RPC of a method name.
    pub fn from_name(name: &str) -> Option<Rpc> {
        Rpc::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// `auth.callers.<name>`: what one identity may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerPolicy {
    /// `identity`: the SPIFFE id, DNS name or mesh header value.
    pub identity: String,
    /// `rpcs`: the RPCs it may call.
    pub rpcs: std::collections::BTreeSet<Rpc>,
    /// `programs`: the programs whose cards it may enroll, see and change; `None` = any (`"*"`).
    pub programs: Option<std::collections::BTreeSet<String>>,
}

/// `auth.*`.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `auth.identity`.
    pub identity: IdentitySource,
    /// `auth.mesh_header`: the metadata a mesh sets to the caller's identity.
    pub mesh_header: String,
    /// `auth.mesh_peers`: with mutual TLS, the certificate identities of the mesh's proxies,
    /// the only connections whose header is believed; empty = any connection's.
    pub mesh_peers: std::collections::BTreeSet<String>,
    /// `auth.callers.<name>`, keyed by name.
    pub callers: std::collections::BTreeMap<String, CallerPolicy>,
}
