//! The Redis settings of the store, in its own words: the config layer fills them in.

use std::path::PathBuf;
use std::time::Duration;

/// `redis.*`: the shared store. No URL means the embedded in-memory store.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis.url`: `redis://` or `rediss://`; `None` selects the in-memory store. It may hold
    /// a password, so its `Debug` is redacted.
    pub url: Option<secrecy::SecretString>,
    /// `redis.username`: the ACL user (the `default` user when unset).
    pub username: Option<String>,
    /// `redis.password_file`: a file holding the password (overrides one in the URL).
    pub password_file: Option<PathBuf>,
    /// `redis.ca_file`: CA certificates (PEM) that `rediss://` servers are checked against,
    /// instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// `redis.key_prefix`: prepended to every key, so that several deployments can share a Redis.
    pub key_prefix: String,
    /// `redis.connect_timeout`: the bound on establishing a connection.
    pub connect_timeout: Duration,
    /// `redis.response_timeout`: the bound on one command's answer.
    pub response_timeout: Duration,
    /// `redis.cluster`: `redis.url` names the seed nodes (comma-separated) of a Redis Cluster.
    pub cluster: bool,
}
