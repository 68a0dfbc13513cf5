//! The caller identity in a client certificate: its SPIFFE URI SAN (what Istio, Linkerd and SPIRE
//! issue), else its first DNS SAN.

use x509_parser::extensions::GeneralName;

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
