//! `c2p-enroll dev-certs --dir D`: a throw-away CA, a server certificate for localhost and two
//! client certificates with different SPIFFE identities, plus a settings file that turns on
//! mutual TLS with a policy for them. For development and tests only.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

/// The trust domain of the dev identities.
pub const TRUST_DOMAIN: &str = "c2p.local";

/// The client identities written, by file stem: (stem, SPIFFE id).
pub fn clients() -> [(&'static str, String); 2] {
    [
        (
            "app-backend",
            format!("spiffe://{TRUST_DOMAIN}/ns/payments/sa/app-backend"),
        ),
        (
            "notification-gateway",
            format!("spiffe://{TRUST_DOMAIN}/ns/payments/sa/notification-gateway"),
        ),
    ]
}

/// `c2p-enroll dev-certs` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DevCertsArgs {
    /// Where to write the files (created if missing; existing files are replaced).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

/// A certificate authority that can issue more certificates (tests use it for extra cases).
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

/// A certificate and its key, PEM.
pub struct Issued {
    /// Certificate.
    pub cert_pem: String,
    /// PKCS#8 private key.
    pub key_pem: String,
}

impl DevCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Result<Issued, rcgen::Error> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "c2p-enroll");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate whose SAN is the URI `identity` (or a DNS name when it has no
    /// scheme), valid from `not_before` to `not_after`.
    pub fn client(
        &self,
        identity: &str,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![if identity.contains("://") {
            SanType::URI(identity.try_into()?)
        } else {
            SanType::DnsName(identity.try_into()?)
        }];
        params.distinguished_name.push(DnType::CommonName, identity);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = not_before;
        params.not_after = not_after;
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> Result<Issued, rcgen::Error> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A year from now, the validity of what `dev-certs` writes.
fn valid_for_a_year() -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::hours(1),
        now + time::Duration::days(365),
    )
}

/// Writes the CA, the server and the two clients' files and `mtls.toml` into `dir`.
pub fn write(dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let fail = |e: rcgen::Error| e.to_string();
    let ca = DevCa::new("c2p-enroll dev CA").map_err(fail)?;
    let server = ca
        .server(&["localhost", "127.0.0.1", "::1"])
        .map_err(fail)?;
    let (from, until) = valid_for_a_year();
    let mut files = vec![
        ("ca.pem".to_owned(), ca.cert_pem.clone()),
        ("server.pem".to_owned(), server.cert_pem),
        ("server.key".to_owned(), server.key_pem),
    ];
    for (stem, identity) in clients() {
        let client = ca.client(&identity, from, until).map_err(fail)?;
        files.push((format!("{stem}.pem"), client.cert_pem));
        files.push((format!("{stem}.key"), client.key_pem));
    }
    files.push(("mtls.toml".to_owned(), settings_toml(dir)));
    let mut written = Vec::new();
    for (name, content) in files {
        let path = dir.join(&name);
        let result = if name.ends_with(".key") {
            crate::secret_file::write_private(&path, content.as_bytes())
        } else {
            std::fs::write(&path, content)
        };
        result.map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Settings for mutual TLS with the dev files, and a policy: the app backend enrolls, reads and
/// watches; the notification gateway only ingests.
fn settings_toml(dir: &Path) -> String {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let path = |name: &str| abs.join(name).display().to_string();
    let [(_, app), (_, gateway)] = clients();
    format!(
        r#"# Written by `c2p-enroll dev-certs`: mutual TLS on the gRPC port with the dev CA.
[grpc.tls]
cert_file = {server_pem:?}
key_file = {server_key:?}
client_ca_file = {ca:?}

[health]
# Plaintext, health only (what kubelet probes use).
listen = "127.0.0.1:50052"

[auth]
identity = "certificate"

[auth.callers.app_backend]
identity = {app:?}
rpcs = ["EnrollCard", "GetEnrollmentStatus", "WatchEnrollment", "RemoveCard",
  "GetClickToPayProfile", "UpdateConsumer", "UpdateBillingAddress", "OptOut", "WithdrawOptOut"]
programs = ["default", "directory"]

[auth.callers.notification_gateway]
identity = {gateway:?}
rpcs = ["NotificationIngest"]
"#,
        server_pem = path("server.pem"),
        server_key = path("server.key"),
        ca = path("ca.pem"),
    )
}

/// `c2p-enroll dev-certs`.
pub fn run(args: &DevCertsArgs) -> std::process::ExitCode {
    match write(&args.dir) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("c2p-enroll dev-certs: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
