//! How every Redis client of the store is built (the standalone connection manager, the Cluster
//! client, the change feed's client): the ACL user (`redis.username`), the password
//! (`redis.password_file`, read once at startup) and, for `rediss://`, the CA the server
//! certificate is checked against (`redis.ca_file`, instead of the system's roots).

use super::RedisSettings;
use super::StoreError;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::io::tcp::TcpSettings;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, TlsCertificates};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use secrecy::{ExposeSecret as _, SecretString};
use std::path::Path;

/// The credentials and trust every client applies. Its `Debug` never shows the password.
pub(super) struct Access {
    username: Option<String>,
    password: Option<SecretString>,
    /// PEM bytes of `redis.ca_file`.
    root_cert: Option<Vec<u8>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("root_cert", &self.root_cert.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// A URL problem, by kind only: the URL may hold a password.
pub(super) fn bad_url(e: redis::RedisError) -> StoreError {
    StoreError::Settings(format!("bad redis.url ({:?})", e.kind()))
}

/// Every client's sockets: `TCP_NODELAY`, which redis-rs leaves off. With Nagle on, a command
/// written while an earlier one is unacknowledged waits for that ACK, and a command split over
/// two writes waits for Redis' delayed ACK (40 ms or more on Linux) before its tail is sent.
fn tcp() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

fn is_tls(info: &ConnectionInfo) -> bool {
    matches!(info.addr(), ConnectionAddr::TcpTls { .. })
}

impl Access {
    /// Reads `redis.password_file` and `redis.ca_file`. A failure names the setting and the
    /// file, never what the file holds.
    pub(super) fn from_settings(settings: &RedisSettings) -> Result<Self, StoreError> {
        // redis' rustls connector needs a process-wide provider; the binary installs it at
        // start, and so does the library for callers that use it directly.
        crate::install_crypto_provider();
        Ok(Self {
            username: settings.username.clone(),
            password: settings
                .password_file
                .as_deref()
                .map(read_password)
                .transpose()?,
            root_cert: settings.ca_file.as_deref().map(read_ca).transpose()?,
        })
    }

    /// The connection info of one node's URL, with the user and password applied (they
    /// override any in the URL).
    fn info(&self, url: &str) -> Result<ConnectionInfo, StoreError> {
        let info = url.into_connection_info().map_err(bad_url)?;
        let mut redis = info.redis_settings().clone();
        if let Some(username) = &self.username {
            redis = redis.set_username(username);
        }
        if let Some(password) = &self.password {
            redis = redis.set_password(password.expose_secret());
        }
        Ok(info.set_redis_settings(redis).set_tcp_settings(tcp()))
    }

    fn certificates(&self) -> Option<TlsCertificates> {
        self.root_cert.as_ref().map(|pem| TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        })
    }

    /// A client of the standalone server (or one node) at `url`.
    pub(super) fn client(&self, url: &str) -> Result<redis::Client, StoreError> {
        let info = self.info(url)?;
        match self.certificates() {
            Some(certs) if is_tls(&info) => redis::Client::build_with_tls(info, certs),
            _ => redis::Client::open(info),
        }
        .map_err(bad_url)
    }

    /// A Cluster client builder on the seed `nodes`, with the user, password and CA applied;
    /// the caller adds its timeouts.
    pub(super) fn cluster(&self, nodes: &[&str]) -> Result<ClusterClientBuilder, StoreError> {
        let infos = nodes
            .iter()
            .map(|node| self.info(node))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = infos.first().is_some_and(is_tls);
        let mut builder = ClusterClient::builder(infos).tcp_settings(tcp());
        if let Some(username) = &self.username {
            builder = builder.username(username);
        }
        if let Some(password) = &self.password {
            builder = builder.password(password.expose_secret());
        }
        if let Some(certs) = self.certificates().filter(|_| tls) {
            builder = builder.certs(certs);
        }
        Ok(builder)
    }
}

/// The password in `path`, less one trailing newline.
fn read_password(path: &Path) -> Result<SecretString, StoreError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        StoreError::Settings(format!(
            "cannot read redis.password_file {}: {e}",
            path.display()
        ))
    })?;
    let password = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err(StoreError::Settings(format!(
            "redis.password_file {} is empty",
            path.display()
        )));
    }
    Ok(SecretString::from(password.to_owned()))
}

/// The PEM bytes of `path`, checked to hold at least one certificate.
fn read_ca(path: &Path) -> Result<Vec<u8>, StoreError> {
    let bad =
        |why: String| StoreError::Settings(format!("bad redis.ca_file {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| bad(format!("unreadable PEM ({e})")))?;
        count += 1;
    }
    if count == 0 {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::io::Write as _;
    use std::time::Duration;

    fn settings(
        password_file: Option<&Path>,
        ca_file: Option<&Path>,
        username: Option<&str>,
    ) -> RedisSettings {
        RedisSettings {
            url: None,
            username: username.map(str::to_owned),
            password_file: password_file.map(Path::to_path_buf),
            ca_file: ca_file.map(Path::to_path_buf),
            key_prefix: "c2p:".into(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            cluster: false,
        }
    }

    fn file(contents: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(contents).unwrap();
        f
    }

    #[test]
    fn one_trailing_newline_is_stripped_from_the_password() {
        for (contents, want) in [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret", "s3cret"),
            ("s3cret\n\n", "s3cret\n"),
        ] {
            let f = file(contents.as_bytes());
            assert_eq!(read_password(f.path()).unwrap().expose_secret(), want);
        }
    }

    #[test]
    fn the_password_file_overrides_the_url_and_the_username_applies() {
        let f = file(b"from-file\n");
        let access = Access::from_settings(&settings(Some(f.path()), None, Some("app"))).unwrap();
        let info = access
            .info("rediss://old:from-url@127.0.0.1:6380/")
            .unwrap();
        assert_eq!(info.redis_settings().password(), Some("from-file"));
        assert_eq!(info.redis_settings().username(), Some("app"));
        assert!(is_tls(&info));
        // No file: the URL's own credentials stay.
        let access = Access::from_settings(&settings(None, None, None)).unwrap();
        let info = access.info("redis://u:p@127.0.0.1:6379/").unwrap();
        assert_eq!(info.redis_settings().password(), Some("p"));
        assert_eq!(info.redis_settings().username(), Some("u"));
    }

    /// redis-rs leaves Nagle on: over a network a command written while another is in flight
    /// then waits for that one's ACK (`docs/performance-history.md`, "After the eighth round",
    /// has the A/B through a delaying proxy).
    #[test]
    fn every_connection_turns_nagle_off() {
        let access = Access::from_settings(&settings(None, None, None)).unwrap();
        for url in ["redis://127.0.0.1:6379/", "rediss://127.0.0.1:6380/"] {
            assert!(access.info(url).unwrap().tcp_settings().nodelay(), "{url}");
        }
    }

    #[test]
    fn an_unreadable_password_file_names_the_setting_and_never_the_password() {
        let err = Access::from_settings(&settings(
            Some(Path::new("/nonexistent/redis.password")),
            None,
            None,
        ))
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("redis.password_file"), "{text}");
        assert!(text.contains("/nonexistent/redis.password"), "{text}");

        let empty = file(b"\n");
        let err = Access::from_settings(&settings(Some(empty.path()), None, None)).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
    }

    #[test]
    fn debug_hides_the_password() {
        let f = file(b"hunter2-secret\n");
        let access = Access::from_settings(&settings(Some(f.path()), None, Some("app"))).unwrap();
        let text = format!("{access:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let f = file(b"not a certificate\n");
        let err = Access::from_settings(&settings(None, Some(f.path()), None)).unwrap_err();
        assert!(err.to_string().contains("redis.ca_file"), "{err}");
    }

    #[test]
    fn rediss_urls_build_standalone_and_cluster_clients() {
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let pem = file(ca.cert.pem().as_bytes());
        let password = file(b"pw\n");
        let access = Access::from_settings(&settings(
            Some(password.path()),
            Some(pem.path()),
            Some("app"),
        ))
        .unwrap();
        access.client("rediss://127.0.0.1:6380/").unwrap();
        access
            .cluster(&["rediss://127.0.0.1:7000", "rediss://127.0.0.1:7001"])
            .unwrap()
            .build()
            .unwrap();
        // Without a CA file the system roots are used.
        let access = Access::from_settings(&settings(None, None, None)).unwrap();
        access.client("rediss://127.0.0.1:6380/").unwrap();
    }
}
