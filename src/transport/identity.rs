//! The caller identity in a client certificate: its SPIFFE URI SAN (what Istio, Linkerd and SPIRE
//! issue), else its first DNS SAN.

use x509_parser::extensions::GeneralName;

/// When the client certificate `chain` (leaf first) stops being valid: the first instant past
/// the leaf's validity, or an intermediate's that expires first (RFC 5280's notAfter is part of
/// the validity, in whole seconds, as webpki checks it). Intermediates that do not parse or
/// had expired by `now` cannot be on the path the handshake verified, and are left out (a
/// client could otherwise send a junk one to have no expiry at all). `None` when the leaf
/// cannot be read: the caller refuses such a connection.
pub fn expiry_of(chain: &[&[u8]], now: std::time::SystemTime) -> Option<std::time::SystemTime> {
    let end = |der: &[u8]| {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let seconds = cert.validity().not_after.timestamp().checked_add(1)?;
        let since_epoch = std::time::Duration::from_secs(u64::try_from(seconds).ok()?);
        std::time::UNIX_EPOCH.checked_add(since_epoch)
    };
    let (leaf, intermediates) = chain.split_first()?;
    let leaf = end(leaf)?;
    Some(
        intermediates
            .iter()
            .filter_map(|der| end(der))
            .filter(|at| *at > now)
            .fold(leaf, std::cmp::min),
    )
}

/// The identity named by a DER certificate, if it names one.
pub fn identity_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let names = &san.value.general_names;
    names
        .iter()
        .find_map(|n| match n {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some((*uri).to_owned()),
            _ => None,
        })
        .or_else(|| {
            names.iter().find_map(|n| match n {
                GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                _ => None,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn cert_with(sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn spiffe_uri_wins_over_dns_names() {
        let der = cert_with(vec![
            SanType::DnsName("app.example".try_into().unwrap()),
            SanType::URI("https://not-spiffe.example/x".try_into().unwrap()),
            SanType::URI(
                "spiffe://bank.example/ns/payments/sa/app"
                    .try_into()
                    .unwrap(),
            ),
        ]);
        assert_eq!(
            identity_of(&der).as_deref(),
            Some("spiffe://bank.example/ns/payments/sa/app")
        );
    }

    #[test]
    fn a_chain_expires_with_its_first_certificate_to_expire() {
        let cert = |until: i64| {
            let mut params = CertificateParams::default();
            params.not_after = time::OffsetDateTime::from_unix_timestamp(until).unwrap();
            let key = KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        let at = |s: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
        let now = at(1_800_000_000);
        let (leaf, intermediate) = (cert(2_000_000_000), cert(1_900_000_000));
        let expired = cert(1_700_000_000);
        assert_eq!(expiry_of(&[&leaf], now), Some(at(2_000_000_001)));
        assert_eq!(
            expiry_of(&[&leaf, &intermediate], now),
            Some(at(1_900_000_001))
        );
        // Junk, or an intermediate expired already: on no verified path, left out.
        assert_eq!(
            expiry_of(&[&leaf, b"not a certificate", &expired], now),
            Some(at(2_000_000_001))
        );
        // A leaf that cannot be read has no expiry to keep: refused by the caller.
        assert_eq!(expiry_of(&[b"not a certificate", &leaf], now), None);
        assert_eq!(expiry_of(&[], now), None);
    }

    #[test]
    fn first_dns_name_without_spiffe_and_none_without_sans() {
        let der = cert_with(vec![
            SanType::DnsName("first.example".try_into().unwrap()),
            SanType::DnsName("second.example".try_into().unwrap()),
        ]);
        assert_eq!(identity_of(&der).as_deref(), Some("first.example"));
        assert_eq!(identity_of(&cert_with(vec![])), None);
        assert_eq!(identity_of(b"not a certificate"), None);
    }
}
